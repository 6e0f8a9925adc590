import math

import pytest
import torch

from siattn import expected_exp_logit, expected_logit_exp_logit, schedule
from siattn.schedule import expected_range_mass, schedule_table

E_HALF = math.exp(0.5)


def test_defaults_leave_local_tokens_unchanged():
    a, m = schedule(0)
    assert a.item() == pytest.approx(1.0, abs=1e-7)
    assert m.item() == pytest.approx(0.0, abs=1e-7)


def test_default_closed_form():
    t = torch.tensor([0.0, 1.0, 10.0, 100.0, 65536.0], dtype=torch.float64)
    a, m = schedule(t, tau=10.0)
    log_term = torch.log1p(t / 10.0)
    torch.testing.assert_close(a, torch.sqrt(2 * log_term + 1), rtol=1e-12, atol=0)
    torch.testing.assert_close(m, -2 * log_term, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(a**2, 1 - m)  # a_t^2 = 1 - m_t for the defaults


def test_general_parameters_follow_the_paper_formula():
    alpha, beta, tau = 2.0, 3.0, 4.0
    t = torch.tensor([0.0, 3.0, 50.0], dtype=torch.float64)
    a, m = schedule(t, tau=tau, alpha=alpha, beta=beta)
    a_sq = 2 * (torch.log(t / tau + 1) - math.log(alpha) + beta / alpha)
    torch.testing.assert_close(a, a_sq.sqrt())
    torch.testing.assert_close(m, -a_sq + beta / alpha)


def test_dtypes():
    assert schedule(torch.arange(4))[0].dtype == torch.float32
    assert schedule(torch.arange(4, dtype=torch.float64))[0].dtype == torch.float64
    assert schedule(3.0)[1].dtype == torch.float32


def test_a_grows_and_m_falls_like_log_t():
    a, m = schedule(torch.logspace(0, 6, 50))
    assert torch.all(a[1:] > a[:-1]) and torch.all(m[1:] < m[:-1])


def test_table_matches_pointwise():
    a, m = schedule_table(1000, tau=3.0)
    a2, m2 = schedule(torch.arange(1000), tau=3.0)
    torch.testing.assert_close(a, a2)
    torch.testing.assert_close(m, m2)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"tau": 0.0}, "tau"), ({"tau": -1.0}, "tau"), ({"alpha": 0.0}, "alpha"), ({"alpha": -2.0}, "alpha"),
     ({"alpha": 4.0, "beta": 1.0}, "beta")],
)
def test_invalid_parameters_name_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        schedule(1.0, **kwargs)


def test_boundary_beta_equal_alpha_log_alpha_is_valid():
    alpha = 3.0
    a, _ = schedule(0.0, alpha=alpha, beta=alpha * math.log(alpha))
    assert a.item() == pytest.approx(0.0, abs=1e-3)


def test_negative_t_raises():
    with pytest.raises(ValueError, match="t must be >= 0"):
        schedule(torch.tensor([1.0, -1.0]))


def _monte_carlo(t: float, n: int, generator: torch.Generator) -> tuple[float, float]:
    """E[exp L] and E[L exp L] for L = a S + m, S ~ N(0, 1) IID, by importance sampling from N(a/2, 1).

    Plain sampling needs ~1e8 draws at t = 1000 (relative variance e^{a^2} - 1); tilting half way keeps the
    estimator random but its relative variance at e^{a^2/4} - 1.
    """
    a, m = (x.double().item() for x in schedule(t))
    shift = a / 2
    s = torch.randn(n, generator=generator, dtype=torch.float64) + shift
    weight = torch.exp(-shift * s + shift**2 / 2)  # N(0,1) density / N(shift,1) density
    logit = a * s + m
    return float((torch.exp(logit) * weight).mean()), float((logit * torch.exp(logit) * weight).mean())


@pytest.mark.parametrize("t", [0, 10, 100, 1000])
def test_monte_carlo_confirms_expectations(t):
    gen = torch.Generator().manual_seed(1234 + t)
    mean_exp, mean_l_exp = _monte_carlo(float(t), 2_000_000, gen)
    assert mean_exp == pytest.approx(expected_exp_logit(t).item(), rel=0.02)
    assert mean_l_exp == pytest.approx(expected_logit_exp_logit(t).item(), rel=0.02)
    assert expected_exp_logit(t).item() == pytest.approx(E_HALF / (t / 10 + 1))


@pytest.mark.parametrize("t", [0, 10, 100])
def test_plain_monte_carlo_for_short_distances(t):
    gen = torch.Generator().manual_seed(99 + t)
    a, m = schedule(float(t))
    s = torch.randn(10_000_000, generator=gen)
    assert torch.exp(a * s + m).double().mean().item() == pytest.approx(expected_exp_logit(t).item(), rel=0.02)


@pytest.mark.parametrize("delta", [2, 10])
def test_range_mass_tends_to_alpha_tau_log_delta(delta):
    assert expected_range_mass(100_000, delta) == pytest.approx(E_HALF * 10 * math.log(delta), rel=1e-3)
