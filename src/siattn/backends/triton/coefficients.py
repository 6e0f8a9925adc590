"""The launch arguments of the logit transform: log2-domain constants, ALiBi slopes, and the least-squares
polynomial tables of the scale-invariant slope a_t with the distances from which each order is accurate enough."""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from siattn.backends.transforms import LogitTransform
from siattn.backends.triton.autotune import _bucket
from siattn.backends.triton.configs import LN2, LOG2E, NEVER, POLY_LOGIT_TOL, POLY_SCORE_MAX, POLY_SEARCH_MAX
from siattn.positional.alibi import alibi_slopes


@functools.lru_cache(maxsize=64)
def _si_constants(transform: LogitTransform, scale: float) -> dict[str, float]:
    """Constants of the log2-domain logits (see the kernels module): b² = A2·log2(1 + t/τ) + K2, v = b·qk − γ·b²."""
    qk_scale = scale * LOG2E
    if transform.kind != "scale-invariant":
        return dict(qk_scale=qk_scale, inv_tau=0.0, A2=0.0, K2=0.0, NEG_GAMMA=0.0)
    tau, alpha, beta = transform.parameters
    kc = 2.0 * (beta / alpha - math.log(alpha))
    return dict(qk_scale=qk_scale, inv_tau=1.0 / tau, A2=qk_scale**2 * 2.0 * LN2, K2=qk_scale**2 * kc,
                NEG_GAMMA=-LOG2E / qk_scale**2)


def _a_of_t(t: np.ndarray, tau: float, alpha: float, beta: float) -> np.ndarray:
    return np.sqrt(2.0 * (np.log1p(t / tau) - math.log(alpha) + beta / alpha))


def _fit_matrix(window: int, order: int) -> np.ndarray:
    """Least-squares projector P ((order+1) × window): coefficients c = P·f for f at k = 0 .. window−1, in z."""
    half = (window - 1) / 2.0
    z = (np.arange(window) - half) / half
    return np.linalg.pinv(np.vander(z, order + 1, increasing=True))


@functools.lru_cache(maxsize=64)
def poly_thresholds(tau: float, alpha: float, beta: float, window: int) -> tuple[int, int, int]:
    """Smallest nearest-key distance (T1, T2, T3) from which the order-1/2/3 polynomial of a_t over ``window``
    consecutive distances keeps |Δa|·(POLY_SCORE_MAX + 2a) <= POLY_LOGIT_TOL (the logit error); NEVER if not
    reached below POLY_SEARCH_MAX."""
    n = POLY_SEARCH_MAX
    a = _a_of_t(np.arange(n + window, dtype=np.float64), tau, alpha, beta)
    windows = np.lib.stride_tricks.sliding_window_view(a, window)[:n]  # [i, k] = a(i + k)
    half = (window - 1) / 2.0
    z = (np.arange(window) - half) / half
    out = []
    for order in (1, 2, 3):
        fitted = windows @ _fit_matrix(window, order).T @ np.vander(z, order + 1, increasing=True).T
        err = (np.abs(fitted - windows) * (POLY_SCORE_MAX + 2.0 * windows)).max(axis=1)
        bad = np.nonzero(err > POLY_LOGIT_TOL)[0]
        first_ok = 0 if bad.size == 0 else int(bad[-1]) + 1
        out.append(first_ok if first_ok < n else NEVER)
    t1, t2, t3 = out
    # the kernels assume T1 >= T2 >= T3 (a higher order is accurate wherever a lower one is)
    t2 = min(t2, t1)
    t3 = min(t3, t2)
    return t1, t2, t3


_TABLES: dict[tuple, torch.Tensor] = {}


def coefficient_table(transform: LogitTransform, scale: float, window: int, length: int,
                      device: torch.device) -> torch.Tensor:
    """(9, L) float32, L >= length: rows [0:2], [2:5], [5:9] hold the order-1, 2, 3 least-squares
    coefficients (in z) of b(i + k) = scale·log2(e)·a_{i+k}, k = 0 .. window−1, for every nearest distance i."""
    tau, alpha, beta = transform.parameters
    key = (tau, alpha, beta, float(scale), window, str(device))
    table = _TABLES.get(key)
    if table is not None and table.shape[1] >= length:
        return table
    size = max(4096, _bucket(length))
    t = torch.arange(size + window, dtype=torch.float64)
    b = torch.from_numpy(_a_of_t(t.numpy(), tau, alpha, beta)) * (scale * LOG2E)
    windows = b.unfold(0, window, 1)[:size]  # [i, k]
    rows = [windows @ torch.from_numpy(_fit_matrix(window, order)).T for order in (1, 2, 3)]
    table = torch.cat(rows, dim=1).T.contiguous().to(device=device, dtype=torch.float32)
    _TABLES[key] = table
    return table


@functools.lru_cache(maxsize=32)
def _slopes(num_heads: int, device: str) -> torch.Tensor:
    return (alibi_slopes(num_heads) * LOG2E).to(device=device, dtype=torch.float32)


_MODES = {"none": 0, "scale-invariant": 1, "alibi": 2}


def _transform_args(transform, scale, window, length, num_heads, device, causal, poly: bool = True):
    """(COEF, SLOPES, constants, (T1, T2, T3)) for one launch. ``poly`` False (``KernelOptions``'
    ``far_tile_polynomials``): no polynomial tiles, the exact per-element transform everywhere."""
    consts = _si_constants(transform, scale)
    if transform.kind == "scale-invariant" and causal and poly:
        coef = coefficient_table(transform, scale, window, length, device)
        thresholds = poly_thresholds(*transform.parameters, window)
    else:
        coef = torch.zeros(9, 1, device=device, dtype=torch.float32)
        thresholds = (NEVER, NEVER, NEVER)
    return coef, _head_slopes(transform, num_heads, device), consts, thresholds


def _head_slopes(transform: LogitTransform, num_heads: int, device) -> torch.Tensor:
    """ALiBi slopes·log2(e) per head (a dummy for the other transforms)."""
    return _slopes(num_heads if transform.kind == "alibi" else 1, str(device))
