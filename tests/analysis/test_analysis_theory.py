"""Specification of siattn.analysis.theory: the paper's claims on IID N(0,1) logits, by Monte-Carlo."""

from __future__ import annotations

import math

import pytest
import torch

from siattn.analysis import metrics, theory
from siattn.schedule import expected_range_mass

ALPHA = math.exp(0.5)
TAU = 10.0


@pytest.mark.parametrize("t", [0, 10, 100])
def test_plain_monte_carlo_mean_of_exp_logit_is_alpha_over_t_by_tau_plus_one(t):
    # relative variance of exp(L_t) is e^{a_t²} − 1 ≈ 330 at t = 100: 2e7 draws give a ~0.4 % standard error
    gen = torch.Generator().manual_seed(10 + t)
    mean, se = theory.monte_carlo_exp_logit(t, 20_000_000, tau=TAU, generator=gen)
    target = ALPHA / (t / TAU + 1)
    assert mean == pytest.approx(target, rel=0.02)
    assert se / target < 0.005


@pytest.mark.parametrize("t", [0, 10, 100, 1000])
def test_importance_sampled_mean_of_exp_logit_is_alpha_over_t_by_tau_plus_one(t):
    # at t = 1000 plain sampling would need ~1e9 draws for 2 % (relative variance ≈ 2.8e4), hence importance
    # sampling (an unbiased estimator whose proposal is deliberately not the zero-variance one)
    gen = torch.Generator().manual_seed(20 + t)
    mean, se = theory.importance_sampled_exp_logit(t, 1_000_000, tau=TAU, generator=gen)
    target = ALPHA / (t / TAU + 1)
    assert mean == pytest.approx(target, rel=0.02)
    assert se / target < 0.005


@pytest.mark.parametrize("delta", [2, 10])
def test_expected_total_attention_on_t_to_t_delta_tends_to_alpha_tau_log_delta(delta):
    limit = ALPHA * TAU * math.log(delta)
    assert expected_range_mass(1000, delta, tau=TAU) == pytest.approx(limit, rel=0.02)
    gen = torch.Generator().manual_seed(delta)
    estimate, se = theory.importance_sampled_range_mass(1000, delta, 400_000, tau=TAU, generator=gen)
    assert estimate == pytest.approx(limit, rel=0.03)
    assert se / limit < 0.01


def test_plain_monte_carlo_total_attention_matches_its_expectation():
    # plain sampling of Σ exp(L) over [100, 200) through the metric function (heavy-tailed but feasible here)
    gen = torch.Generator().manual_seed(7)
    logits = torch.cat([theory.scheme_logits(torch.randn(10_000, 200, dtype=torch.float64, generator=gen),
                                             "scale_invariant", tau=TAU) for _ in range(5)])
    totals = metrics.unnormalised_range_mass(logits, 100, 2)
    assert totals.mean().item() == pytest.approx(expected_range_mass(100, 2, tau=TAU), rel=0.05)


def test_scale_invariant_logits_leave_the_most_recent_key_unchanged():
    scores = torch.randn(4, 50, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    L = theory.scheme_logits(scores, "scale_invariant", tau=TAU)
    torch.testing.assert_close(L[:, 0], scores[:, 0])
    assert torch.all(L[:, 1:] != scores[:, 1:])


def test_logn_logits_scale_scores_by_s_log_n():
    scores = torch.randn(2, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(theory.scheme_logits(scores, "logn", logn_s=0.4), 0.4 * math.log(64) * scores)
    torch.testing.assert_close(theory.scheme_logits(scores, "logn", logn_s=0.4, n_keys=1000),
                               0.4 * math.log(1000) * scores)


def test_unknown_scheme_is_refused():
    with pytest.raises(ValueError, match="expected one of"):
        theory.scheme_logits(torch.zeros(3), "alibi")


def test_fast_global_statistics_equal_the_metric_functions():
    scores = torch.randn(3, 5000, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ns = [10, 99, 100, 101, 777, 5000]
    for scheme in theory.SCHEMES:
        L = theory.scheme_logits(scores, scheme)
        ent, last = theory._prefix_stats(L, ns, 100)
        for i, n in enumerate(ns):
            torch.testing.assert_close(ent[:, i], metrics.global_entropy(L[:, :n]))
            torch.testing.assert_close(last[:, i], metrics.last_k_mass(L[:, :n], 100))
            e, m = theory._entropy_and_last_k(L[:, :n], 100)
            torch.testing.assert_close(e, metrics.global_entropy(L[:, :n]))
            torch.testing.assert_close(m, metrics.last_k_mass(L[:, :n], 100))


def test_fit_line_recovers_slope_and_perfect_r2():
    import numpy as np

    x = np.linspace(0, 5, 20)
    fit = theory.fit_line(x, 3.0 - 0.5 * x)
    assert fit["slope"] == pytest.approx(-0.5)
    assert fit["intercept"] == pytest.approx(3.0)
    assert fit["r2"] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def small_run():
    cfg = theory.TheoryConfig(samples=32, max_n=20_000, seed=0, check_samples=20_000, range_check_draws=5_000)
    return theory.run_theory(cfg)


@pytest.mark.parametrize("delta", ["2", "5", "10"])
def test_no_scaling_range_entropy_grows_like_log_t(small_run, delta):
    fit = small_run["fits"]["range_entropy"]["none"][delta]
    assert fit["tail_vs_log_t"]["slope"] == pytest.approx(1.0, abs=0.05)
    assert fit["vs_log_t"]["r2"] > 0.999


@pytest.mark.parametrize("delta", ["2", "5", "10"])
def test_scale_invariant_range_entropy_grows_far_slower_than_no_scaling(small_run, delta):
    fits = small_run["fits"]["range_entropy"]
    si, none = fits["scale_invariant"][delta]["vs_log_t"]["slope"], fits["none"][delta]["vs_log_t"]["slope"]
    assert 0 < si < 0.4 * none


def test_logn_reduces_global_entropy_growth_relative_to_no_scaling(small_run):
    n, g = small_run["n"], small_run["global"]
    i = min(range(len(n)), key=lambda j: abs(math.log(n[j] / 100)))
    growth = {s: g[s]["entropy_mean"][-1] - g[s]["entropy_mean"][i] for s in ("none", "logn")}
    assert growth["none"] == pytest.approx(math.log(n[-1] / n[i]), rel=0.05)
    assert growth["logn"] < 0.3 * growth["none"]


def test_no_scaling_puts_k_over_n_on_the_last_k_keys_and_scale_invariant_far_more(small_run):
    n, g = small_run["n"], small_run["global"]
    assert g["none"]["last_k_mass_mean"][-1] == pytest.approx(100 / n[-1], rel=0.1)
    assert g["scale_invariant"]["last_k_mass_mean"][-1] > 20 * g["none"]["last_k_mass_mean"][-1]


def test_run_reports_every_table_and_the_total_attention_check(small_run):
    assert set(small_run["global"]) == set(theory.SCHEMES)
    assert set(small_run["range"]) == {"2", "5", "10"}
    rows = small_run["total_attention_check"]
    assert rows and all(abs(r["is_mean"] - r["expected_exact"]) < 5 * r["is_se"] + 1e-9 for r in rows)
    assert "| scale_invariant | 10 |" in theory.to_markdown({**small_run, "runtime_s": 0.0})
