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
