"""ALiBi (Press et al., 2022): a linear distance bias −slope_h·t on the logits, with geometric head slopes.

The bias itself is a logit transform that every backend applies (``LogitTransform("alibi")`` in
:mod:`siattn.backends.transforms`); this module holds the slopes it uses.
"""

from __future__ import annotations

import math

import torch


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
