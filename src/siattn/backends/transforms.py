"""Logit transforms applied inside attention: L = f(S; t) for a score S = scale·q·k and distance t = |i − j|.

One definition serves every backend:
- ``none``:            L = S
- ``scale-invariant``: L = a_t·S + m_t  (see :mod:`siattn.schedule`)
- ``alibi``:           L = S − slope_h·t  (geometric head slopes: :func:`siattn.positional.alibi_slopes`)
LogN/SSMax (L = s_h·log(n)·S) multiplies whole query rows, so it is applied to q before any backend runs
(:func:`siattn.attention`), and the YaRN temperature lives in the rotary cos/sin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from siattn.positional.alibi import alibi_slopes
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


def logit_terms(
    distance: torch.Tensor, transform: LogitTransform, num_heads: int, num_kv_heads: int, dtype: torch.dtype
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(a, b) with L = a·S + b (None: a = 1, b = 0), in ``dtype`` on ``distance``'s device.

    distance: (Tq, Tk), t = |i − j| >= 0. ``scale-invariant``: a = a_t, b = m_t, both (Tq, Tk); ``alibi``: a = 1,
    b = −slope_h·t, (Hkv, G, Tq, Tk) with H = Hkv·G heads; ``none``: (None, None).
    """
    if transform.kind == "none":
        return None, None
    if transform.kind == "scale-invariant":
        return schedule_unchecked(distance.to(dtype), *transform.parameters)
    slopes = alibi_slopes(num_heads).to(device=distance.device, dtype=dtype)
    return None, -(slopes.view(num_kv_heads, num_heads // num_kv_heads, 1, 1) * distance.to(dtype))


def transform_logits(
    scores: torch.Tensor, distance: torch.Tensor, transform: LogitTransform, num_heads: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Apply ``transform`` to ``scores`` and return (logits, dlogits/dscores or None when it is 1).

    scores: (B, Hkv, G, Tq, Tk) with H = Hkv·G heads; distance: (Tq, Tk) float, t = |i − j| >= 0.
    """
    a, b = logit_terms(distance, transform, num_heads, scores.shape[1], scores.dtype)
    if b is None:
        return scores, None
    if a is None:
        return scores + b, None
    return torch.addcmul(b, scores, a), a
