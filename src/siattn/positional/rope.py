"""Rotary position embeddings and their length-extension variants, as small named frequency functions.

All return ``inv_freq`` of shape (head_dim/2,): pair i rotates dims (i, i + head_dim/2) by angle position·inv_freq[i]
(the "rotate half" layout of transformers). Definitions:
- RoPE:   inv_freq_i = θ^(−2i/d), θ = 10,000.
- p-RoPE: the first n = fraction·d/2 pairs use (1/base)^(k/(n−1)), k = 0..n−1; the others have frequency 0.
- dynamic NTK: for L > L_train, θ' = θ·(factor·L/L_train − (factor − 1))^(d/(d−2)).
- YaRN:   factor s = L/L_train; inv_freq_i = θ^(−2i/d)·[ramp_i/s + (1 − ramp_i)] with a linear ramp between the
          dims whose wavelength makes beta_fast and beta_slow rotations over L_train; cos and sin are multiplied by
          the attention factor 0.1·ln(s) + 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

RotaryKind = Literal["rope", "p-rope", "ntk", "yarn"]
ROTARY_KINDS: tuple[str, ...] = ("rope", "p-rope", "ntk", "yarn")
PAPER_P_ROPE_BASE = 1024.0  # the paper's p-RoPE base ...
PAPER_TRAIN_LENGTH = 4096  # ... at this training length


def _check_head_dim(head_dim: int) -> None:
    if head_dim < 4 or head_dim % 2:
        raise ValueError(f"head_dim must be an even number >= 4 for rotary embeddings, got {head_dim}")


def rope_inv_freq(head_dim: int, theta: float = 10_000.0) -> torch.Tensor:
    """inv_freq_i = θ^(−2i/d), i = 0..d/2−1 (float32)."""
    _check_head_dim(head_dim)
    if theta <= 1:
        raise ValueError(f"theta must be > 1, got {theta}")
    exponent = torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim
    return (1.0 / theta**exponent).float()


def p_rope_inv_freq(head_dim: int, base: float = 1024.0, fraction: float = 0.5) -> torch.Tensor:
    """p-RoPE: the first n = round(fraction·d/2) pairs rotate with (1/base)^(k/(n−1)), the rest not at all."""
    _check_head_dim(head_dim)
    pairs = head_dim // 2
    rotating = round(fraction * pairs)
    if not 0.0 < fraction <= 1.0 or rotating < 2:
        raise ValueError(f"p_rope_fraction must be in (0, 1] and leave >= 2 rotating pairs, got {fraction}")
    if base <= 1:
        raise ValueError(f"p_rope_base must be > 1, got {base}")
    k = torch.arange(rotating, dtype=torch.float64)
    inv = torch.zeros(pairs, dtype=torch.float64)
    inv[:rotating] = base ** (-k / (rotating - 1))
    return inv.float()


def scaled_p_rope_base(train_length: int) -> float:
    """The p-RoPE base for a training length: the paper's 1024 at 4096, scaled linearly, base = 1024 · L / 4096.

    It keeps the longest rotary wavelength, 2π·base, about 1.6 × the training length (ARCHITECTURE.md gives the
    reasoning and the measurement behind the rule)."""
    return PAPER_P_ROPE_BASE * train_length / PAPER_TRAIN_LENGTH


def ntk_theta(theta: float, head_dim: int, train_length: int, context_length: int, factor: float = 1.0) -> float:
    """Dynamic-NTK base: θ·(factor·L/L_train − (factor − 1))^(d/(d−2)) when L > L_train, else θ."""
    if context_length <= train_length:
        return theta
    return theta * (factor * context_length / train_length - (factor - 1)) ** (head_dim / (head_dim - 2))


def yarn_inv_freq(
    head_dim: int, theta: float, train_length: int, context_length: int, *, beta_fast: float = 32.0,
    beta_slow: float = 1.0,
) -> tuple[torch.Tensor, float]:
    """YaRN frequencies and attention factor for factor s = max(1, L / L_train) (transformers' "yarn")."""
    base = rope_inv_freq(head_dim, theta)
    factor = context_length / train_length
    if factor <= 1.0:
        return base, 1.0

    def correction_dim(rotations: float) -> float:
        return head_dim * math.log(train_length / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), head_dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    extrapolation = 1 - ramp
    inv_freq = (base / factor) * (1 - extrapolation) + base * extrapolation
    return inv_freq, 0.1 * math.log(factor) + 1.0


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (−x2, x1) over the two halves of the last dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x·cos + rotate_half(x)·sin in float32. x: (B, H, T, D); cos, sin: (T, D). Returns x's dtype."""
    xf = x.float()
    return (xf * cos + rotate_half(xf) * sin).to(x.dtype)


@dataclass(frozen=True)
class RotaryConfig:
    """Which rotary variant and its constants. ``train_length`` is where NTK and YaRN start scaling."""

    kind: RotaryKind = "rope"
    head_dim: int = 128
    theta: float = 10_000.0
    p_rope_base: float = 1024.0
    p_rope_fraction: float = 0.5
    train_length: int = 4096

    def __post_init__(self) -> None:
        if self.kind not in ROTARY_KINDS:
            raise ValueError(f"rotary kind must be one of {ROTARY_KINDS}, got {self.kind!r}")
        if self.train_length < 1:
            raise ValueError(f"train_length must be >= 1, got {self.train_length}")
        self.inv_freq(self.train_length)  # validates the constants

    def inv_freq(self, context_length: int) -> tuple[torch.Tensor, float]:
        """(inv_freq (d/2,), attention_factor) for a forward pass over ``context_length`` positions."""
        if self.kind == "rope":
            return rope_inv_freq(self.head_dim, self.theta), 1.0
        if self.kind == "p-rope":
            return p_rope_inv_freq(self.head_dim, self.p_rope_base, self.p_rope_fraction), 1.0
        if self.kind == "ntk":
            theta = ntk_theta(self.theta, self.head_dim, self.train_length, context_length)
            return rope_inv_freq(self.head_dim, theta), 1.0
        return yarn_inv_freq(self.head_dim, self.theta, self.train_length, context_length)

    def cos_sin(
        self, start: int, length: int, context_length: int | None = None, device: torch.device | str | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape (length, head_dim) for positions start .. start+length−1 (float32).

        ``context_length`` (default start + length) is the sequence length NTK/YaRN adapt to.
        """
        context_length = start + length if context_length is None else context_length
        inv_freq, attention_factor = self.inv_freq(context_length)
        positions = torch.arange(start, start + length, dtype=torch.float64, device=device)
        angles = positions[:, None] * inv_freq.to(device=device, dtype=torch.float64)[None, :]
        angles = torch.cat((angles, angles), dim=-1)
        return (angles.cos() * attention_factor).float(), (angles.sin() * attention_factor).float()
