"""The scale-invariant logit schedule a_t, m_t and its closed-form expectations.

For a query and a key t positions back (t = i − j >= 0) the transformed logit is L_t = a_t · S_t + m_t with

    a_t = sqrt( 2 · [ log(t/τ + 1) − log α + β/α ] ),      m_t = −a_t² + β/α.

For S_t ~ N(0, 1) this gives E[exp L_t] = α / (t/τ + 1) and E[L_t exp L_t] = β / (t/τ + 1), so every range
[t, tΔ) of keys receives Θ(1) total attention and Θ(1) unnormalised sparsity (Anson et al., 2025). The defaults
α = β = e^0.5 make a_0 = 1 and m_0 = 0 (local tokens unchanged):
a_t = sqrt(2 log(1 + t/τ) + 1), m_t = −2 log(1 + t/τ).
"""

from __future__ import annotations

import math

import torch

DEFAULT_TAU = 10.0
DEFAULT_ALPHA = math.exp(0.5)
DEFAULT_BETA = math.exp(0.5)


def resolve_parameters(tau: float, alpha: float | None, beta: float | None) -> tuple[float, float, float]:
    """Fill in defaults and check (tau, alpha, beta); raises ValueError naming the bad parameter."""
    alpha = DEFAULT_ALPHA if alpha is None else float(alpha)
    beta = DEFAULT_BETA if beta is None else float(beta)
    tau = float(tau)
    if not (tau > 0 and math.isfinite(tau)):
        raise ValueError(f"tau must be a finite number > 0, got {tau}")
    if not (alpha > 0 and math.isfinite(alpha)):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha}")
    if not math.isfinite(beta) or beta < alpha * math.log(alpha):
        raise ValueError(
            f"beta must satisfy beta >= alpha * log(alpha) = {alpha * math.log(alpha):.6g} "
            f"(so that a_t is real), got beta={beta}"
        )
    return tau, alpha, beta


def _as_float_tensor(t: torch.Tensor | float | int) -> torch.Tensor:
    t = torch.as_tensor(t)
    if t.dtype == torch.float64:
        return t
    return t.to(torch.float32)


def schedule(
    t: torch.Tensor | float | int,
    *,
    tau: float = DEFAULT_TAU,
    alpha: float | None = None,
    beta: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (a_t, m_t) for distances ``t`` (any shape, >= 0); float64 if ``t`` is float64, else float32.

    a_t = sqrt(2·[log(t/τ + 1) − log α + β/α]),  m_t = −a_t² + β/α.
    """
    tau, alpha, beta = resolve_parameters(tau, alpha, beta)
    t = _as_float_tensor(t)
    if bool((t < 0).any()) or bool(torch.isnan(t).any()):
        raise ValueError("t must be >= 0 (distance from query to key, t = i - j); got negative or NaN values")
    return schedule_unchecked(t, tau, alpha, beta)


def schedule_unchecked(
    t: torch.Tensor, tau: float, alpha: float, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(a_t, m_t) without argument checks, for backends that already validated (t float tensor >= 0)."""
    a_sq = 2.0 * (torch.log1p(t / tau) - math.log(alpha) + beta / alpha)
    return a_sq.sqrt(), beta / alpha - a_sq


def schedule_table(
    length: int,
    *,
    tau: float = DEFAULT_TAU,
    alpha: float | None = None,
    beta: float | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(a_t, m_t) for t = 0 .. length−1 as two 1-D tensors: distances depend on i − j only, so one table serves
    every block of a sequence."""
    tau, alpha, beta = resolve_parameters(tau, alpha, beta)
    t = torch.arange(length, device=device, dtype=dtype)
    return schedule_unchecked(t, tau, alpha, beta)


def expected_exp_logit(
    t: torch.Tensor | float | int, *, tau: float = DEFAULT_TAU, alpha: float | None = None,
    beta: float | None = None,
) -> torch.Tensor:
    """E[exp L_t] = α / (t/τ + 1) for S_t ~ N(0, 1): the expected unnormalised attention on a key t back."""
    tau, alpha, beta = resolve_parameters(tau, alpha, beta)
    return alpha / (_as_float_tensor(t) / tau + 1.0)


def expected_logit_exp_logit(
    t: torch.Tensor | float | int, *, tau: float = DEFAULT_TAU, alpha: float | None = None,
    beta: float | None = None,
) -> torch.Tensor:
    """E[L_t exp L_t] = β / (t/τ + 1) for S_t ~ N(0, 1): the unnormalised sparsity term of a key t back."""
    tau, alpha, beta = resolve_parameters(tau, alpha, beta)
    return beta / (_as_float_tensor(t) / tau + 1.0)


def expected_range_mass(t: float, delta: float, *, tau: float = DEFAULT_TAU, alpha: float | None = None,
                        beta: float | None = None) -> float:
    """Σ_{t'=t}^{tΔ−1} E[exp L_t'] computed exactly; tends to ατ·ln Δ as t → ∞."""
    tau, alpha, beta = resolve_parameters(tau, alpha, beta)
    ts = torch.arange(int(t), int(t * delta), dtype=torch.float64)
    return float((alpha / (ts / tau + 1.0)).sum())
