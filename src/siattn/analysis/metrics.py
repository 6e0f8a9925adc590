"""Attention statistics of one query over its keys, as functions of the logits.

Every function takes ``logits`` of shape (..., N): the logits L_t of ONE query position over its N keys,
ordered by distance t = 0 .. N−1 along the last axis (t = 0 is the most recent key, t = N−1 the oldest, e.g. a
BOS/sink token).
Leading dimensions are batch dimensions (samples, heads, query positions) and are kept in the result.

Conventions shared by all functions:
- math in float64, results in nats, returned as float64 tensors of shape (...);
- a logit of −inf marks an absent key (e.g. padding of a short causal row, see :func:`logits_by_distance`);
  absent keys get zero attention;
- ``exclude_sink=True`` removes the key at the LARGEST distance present in each row (the first token of the
  sequence, which trained models use as an attention sink) before anything is computed; normalised
  quantities are then renormalised over the remaining keys;
- a range [t, tΔ) is the keys with distance t <= t' < ceil(t·Δ), for an integer t >= 1 and Δ > 1; it must lie
  inside the N keys.

Attention weights are A_t = exp(L_t) / Σ_{t'} exp(L_t') (softmax over the row).
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch

__all__ = [
    "global_entropy",
    "last_k_mass",
    "logits_by_distance",
    "range_bounds",
    "range_entropy",
    "range_mass",
    "range_statistics",
    "unnormalised_range_mass",
]


def logits_by_distance(scores: torch.Tensor) -> torch.Tensor:
    """Reorder a causal score matrix by distance: (..., T, T) indexed [query i, key j] → (..., T, T) [i, t].

    out[..., i, t] = scores[..., i, i − t] for t <= i and −inf for t > i (keys the query cannot see), so each
    row out[..., i, :] is a valid ``logits`` argument for the functions of this module (row i sees N = i + 1
    keys, its sink token at distance t = i). Entries of ``scores`` above the diagonal are ignored.
    """
    if scores.dim() < 2 or scores.shape[-1] != scores.shape[-2]:
        raise ValueError(f"scores must be (..., T, T) with query index on dim −2 and key index on dim −1; "
                         f"got shape {tuple(scores.shape)}")
    T = scores.shape[-1]
    i = torch.arange(T, device=scores.device).unsqueeze(-1)  # (T, 1)
    t = torch.arange(T, device=scores.device).unsqueeze(0)   # (1, T)
    j = (i - t).clamp(min=0)                                  # (T, T) key index for [i, t]
    out = torch.gather(scores, -1, j.expand(*scores.shape[:-2], T, T))
    return out.masked_fill(t > i, float("-inf"))


def range_bounds(t: int, delta: float) -> tuple[int, int]:
    """Index bounds (lo, hi) of the distance range [t, tΔ): lo = t, hi = ceil(t·Δ) (exact for integer Δ)."""
    if int(t) != t or t < 1:
        raise ValueError(f"range start t must be an integer >= 1 (the range [t, tΔ) is empty for t = 0); "
                         f"got {t}")
    if not delta > 1:
        raise ValueError(f"range factor delta must be > 1; got {delta}")
    return int(t), math.ceil(t * delta - 1e-9)


def _prepare(logits: torch.Tensor, exclude_sink: bool) -> torch.Tensor:
    """``logits`` as float64, with the sink (largest present distance) set to −inf when asked."""
    if logits.dim() < 1 or logits.shape[-1] == 0:
        raise ValueError(f"logits must be (..., N) with N >= 1 keys on the last axis; "
                         f"got {tuple(logits.shape)}")
    L = logits.to(torch.float64)
    if exclude_sink:
        N = L.shape[-1]
        idx = torch.arange(N, device=L.device)
        present = ~torch.isneginf(L)  # absent keys are −inf
        sink = torch.where(present, idx, -1).amax(dim=-1, keepdim=True)  # −1 where a row has no key
        L = L.masked_fill(idx == sink, float("-inf"))
    return L


def _slice_range(L: torch.Tensor, t: int, delta: float) -> torch.Tensor:
    lo, hi = range_bounds(t, delta)
    N = L.shape[-1]
    if hi > N:
        raise ValueError(f"range [{lo}, {hi}) runs past the N = {N} keys; use t <= N / delta "
                         f"(t <= {int(N // delta)} for delta = {delta})")
    return L[..., lo:hi]


def _entropy(L: torch.Tensor) -> torch.Tensor:
    """H = −Σ p log p = logsumexp(L) − Σ p L for p = softmax(L); NaN for a row with no present key."""
    lse = torch.logsumexp(L, dim=-1, keepdim=True)
    p = torch.exp(L - lse)
    pL = torch.where(p > 0, p * L, torch.zeros_like(L))  # 0 · (−inf) := 0 for absent keys
    return lse.squeeze(-1) - pL.sum(dim=-1)


def global_entropy(logits: torch.Tensor, *, exclude_sink: bool = False) -> torch.Tensor:
    """Entropy of the attention over all keys: H = −Σ_t A_t log A_t, A = softmax(L).

    logits: (..., N), distance on the last axis. Returns (...) float64 in nats; log N for uniform logits.
    """
    return _entropy(_prepare(logits, exclude_sink))


def range_entropy(logits: torch.Tensor, t: int, delta: float, *, exclude_sink: bool = False) -> torch.Tensor:
    """Entropy of the attention renormalised within the keys at distance [t, tΔ).

    H_[t,tΔ) = −Σ_{t'∈[t,tΔ)} B_t' log B_t',  B_t' = exp(L_t') / Σ_{t''∈[t,tΔ)} exp(L_t'').
    It depends only on the logits inside the range. logits: (..., N) with N >= ceil(tΔ). Returns (...) float64
    in nats; NaN for a row with no present key in the range.
    """
    return _entropy(_slice_range(_prepare(logits, exclude_sink), t, delta))


def range_mass(logits: torch.Tensor, t: int, delta: float, *, exclude_sink: bool = False) -> torch.Tensor:
    """Total normalised attention on the keys at distance [t, tΔ): Σ_{t'∈[t,tΔ)} A_t'.

    logits: (..., N) with N >= ceil(tΔ). Returns (...) float64 in [0, 1]; the masses of a partition of 0..N−1
    into ranges sum to 1.
    """
    L = _prepare(logits, exclude_sink)
    return torch.exp(torch.logsumexp(_slice_range(L, t, delta), dim=-1) - torch.logsumexp(L, dim=-1))


def last_k_mass(logits: torch.Tensor, k: int = 100, *, exclude_sink: bool = False) -> torch.Tensor:
    """Total normalised attention on the k most recent keys (distance t < k): Σ_{t<k} A_t.

    logits: (..., N); k >= 1 (k >= N gives 1). Returns (...) float64 in [0, 1].
    """
    if int(k) != k or k < 1:
        raise ValueError(f"k must be an integer >= 1; got {k}")
    L = _prepare(logits, exclude_sink)
    return torch.exp(torch.logsumexp(L[..., : int(k)], dim=-1) - torch.logsumexp(L, dim=-1))


def unnormalised_range_mass(
    logits: torch.Tensor, t: int, delta: float, *, exclude_sink: bool = False
) -> torch.Tensor:
    """Total unnormalised attention on the keys at distance [t, tΔ): Σ_{t'∈[t,tΔ)} exp(L_t').

    Its expectation is the quantity of the scale-invariant total-attention desideratum; for the
    scale-invariant schedule with S ~ N(0, 1) it tends to α·τ·ln Δ as t → ∞.
    logits: (..., N) with N >= ceil(tΔ). Returns (...) float64 (not in nats: a sum of weights).
    """
    return torch.exp(torch.logsumexp(_slice_range(_prepare(logits, exclude_sink), t, delta), dim=-1))


def range_statistics(
    logits: torch.Tensor,
    ranges: list[tuple[int, float]],
    *,
    exclude_sink: bool = False,
) -> dict[str, torch.Tensor]:
    """:func:`range_entropy`, :func:`range_mass`, :func:`unnormalised_range_mass` for many ranges at once.

    logits: (..., N); ranges: R pairs (t, Δ), each inside the N keys. Returns a dict of (..., R) float64
    tensors "entropy", "mass", "unnormalised_mass" (column r for range r). Equal to the single-range functions
    up to rounding; much faster for many overlapping ranges over long rows: the row is exponentiated once,
    shifted by its maximum c, and each range costs two sums:
    Z = Σ exp(L − c),  H = c + log Z − Σ exp(L − c)·L / Z.
    A range whose keys all lie > ~700 nats below the row maximum (float64 underflow) is recomputed exactly.
    """
    L = _prepare(logits, exclude_sink)
    bounds = [range_bounds(t, delta) for t, delta in ranges]
    for (t, delta), (_, hi) in zip(ranges, bounds):
        if hi > L.shape[-1]:
            _slice_range(L, t, delta)  # raises the helpful error
    c = L.amax(dim=-1, keepdim=True)
    c = torch.where(torch.isfinite(c), c, torch.zeros_like(c))
    E = (L - c).exp_()
    EL = (E * L).nan_to_num_(nan=0.0)  # 0 · (−inf) := 0 for absent keys
    # Sum E and E·L over the blocks between consecutive range ends (one pass over the row), then add blocks:
    # sums of positive block sums, no cancellation however the ranges overlap.
    edges = sorted({e for b in bounds for e in b})
    block_e = torch.stack([E[..., a:b].sum(dim=-1) for a, b in pairwise(edges)], dim=-1)
    block_el = torch.stack([EL[..., a:b].sum(dim=-1) for a, b in pairwise(edges)], dim=-1)
    pos = {e: i for i, e in enumerate(edges)}
    z_total = E.sum(dim=-1)
    c = c.squeeze(-1)
    entropy, mass, unnorm = [], [], []
    for lo, hi in bounds:
        z = block_e[..., pos[lo] : pos[hi]].sum(dim=-1)
        zl = block_el[..., pos[lo] : pos[hi]].sum(dim=-1)
        h = c + torch.log(z) - zl / z
        log_u = c + torch.log(z)
        if bool((z < 1e-280).any()):  # a range far below the row maximum underflowed: exact, slower path
            Lr = L[..., lo:hi]
            bad = (z < 1e-280) & (~torch.isneginf(Lr)).any(dim=-1)
            h = torch.where(bad, _entropy(Lr), h)
            log_u = torch.where(bad, torch.logsumexp(Lr, dim=-1), log_u)
        entropy.append(h)
        unnorm.append(torch.exp(log_u))
        mass.append(torch.exp(log_u - c - torch.log(z_total)))
    return {
        "entropy": torch.stack(entropy, dim=-1),
        "mass": torch.stack(mass, dim=-1),
        "unnormalised_mass": torch.stack(unnorm, dim=-1),
    }
