"""Logit transforms applied inside attention: L = f(S; t) for a score S = scale·q·k and distance t = |i − j|.

One definition serves every backend:
- ``none``:            L = S
- ``scale-invariant``: L = a_t·S + m_t  (see :mod:`siattn.schedule`)
- ``alibi``:           L = S − slope_h·t  (standard geometric head slopes)
LogN/SSMax (L = s_h·log(n)·S) multiplies whole query rows, so it is applied to q before any backend runs
(:func:`siattn.attention`), and the YaRN temperature lives in the rotary cos/sin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from siattn.schedule import DEFAULT_TAU, resolve_parameters, schedule_unchecked

TransformKind = Literal["none", "scale-invariant", "alibi"]
TRANSFORM_KINDS: tuple[str, ...] = ("none", "scale-invariant", "alibi")


@dataclass(frozen=True)
class LogitTransform:
    """What a backend does to scores before the softmax. ``tau``, ``alpha``, ``beta`` matter for
    ``scale-invariant`` only (alpha/beta None mean e^0.5)."""

    kind: TransformKind = "none"
    tau: float = DEFAULT_TAU
    alpha: float | None = None
    beta: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in TRANSFORM_KINDS:
            raise ValueError(f"transform kind must be one of {TRANSFORM_KINDS}, got {self.kind!r}")
        if self.kind == "scale-invariant":
            resolve_parameters(self.tau, self.alpha, self.beta)

    @property
    def parameters(self) -> tuple[float, float, float]:
        """(tau, alpha, beta) with defaults filled in."""
        return resolve_parameters(self.tau, self.alpha, self.beta)


NO_TRANSFORM = LogitTransform("none")


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """ALiBi head slopes (Press et al., 2022): 2^(−8i/n) for i = 1..n when n is a power of two; otherwise the
    slopes of the closest smaller power of two followed by every other slope of the next one. Shape (num_heads,)."""
    if num_heads < 1:
        raise ValueError(f"num_heads must be >= 1, got {num_heads}")

    def power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(num_heads).is_integer():
        slopes = power_of_two(num_heads)
    else:
        closest = 2 ** math.floor(math.log2(num_heads))
        slopes = power_of_two(closest) + power_of_two(2 * closest)[0::2][: num_heads - closest]
    return torch.tensor(slopes, dtype=torch.float64)


def transform_logits(
    scores: torch.Tensor, distance: torch.Tensor, transform: LogitTransform, num_heads: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Apply ``transform`` to ``scores`` and return (logits, dlogits/dscores or None when it is 1).

    scores: (B, Hkv, G, Tq, Tk) with H = Hkv·G heads; distance: (Tq, Tk) float, t = |i − j| >= 0.
    """
    if transform.kind == "none":
        return scores, None
    if transform.kind == "scale-invariant":
        a, m = schedule_unchecked(distance.to(scores.dtype), *transform.parameters)
        return torch.addcmul(m, scores, a), a
    hkv, groups = scores.shape[1], scores.shape[2]
    slopes = alibi_slopes(num_heads).to(device=scores.device, dtype=scores.dtype).view(hkv, groups, 1, 1)
    return scores - slopes * distance.to(scores.dtype), None
