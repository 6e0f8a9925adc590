"""Specification of siattn.analysis.metrics: statistics of one query's logits ordered by distance."""

from __future__ import annotations

import math

import pytest
import torch

from siattn.analysis import metrics

NEG_INF = float("-inf")


def test_uniform_logits_have_global_entropy_log_n():
    logits = torch.zeros(3, 4, 50)
    h = metrics.global_entropy(logits)
    assert h.shape == (3, 4)
    assert h.dtype == torch.float64
    torch.testing.assert_close(h, torch.full((3, 4), math.log(50), dtype=torch.float64))


def test_one_hot_attention_has_zero_entropy():
    masked = torch.full((10,), NEG_INF)
    masked[3] = 0.0
    assert metrics.global_entropy(masked).item() == pytest.approx(0.0, abs=1e-12)
    peaked = torch.zeros(10)
    peaked[7] = 1000.0
    assert metrics.global_entropy(peaked).item() == pytest.approx(0.0, abs=1e-12)


def test_entropy_matches_definition_on_random_logits():
    logits = torch.randn(5, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    p = torch.softmax(logits, -1)
    torch.testing.assert_close(metrics.global_entropy(logits), -(p * p.log()).sum(-1))


def test_range_entropy_of_uniform_logits_is_log_of_range_size():
    logits = torch.zeros(2, 100)
    for t, delta in [(1, 2), (5, 2), (10, 10), (3, 5)]:
        h = metrics.range_entropy(logits, t, delta)
        torch.testing.assert_close(h, torch.full((2,), math.log(t * (delta - 1)), dtype=torch.float64))


def test_range_entropy_ignores_logits_outside_the_range():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 64, generator=g)
    changed = logits.clone()
    changed[:, :8] += 50.0
    changed[:, 16:] -= 50.0
    torch.testing.assert_close(metrics.range_entropy(logits, 8, 2), metrics.range_entropy(changed, 8, 2))


def test_range_masses_over_a_partition_sum_to_one():
    logits = torch.randn(6, 64, generator=torch.Generator().manual_seed(2)) * 2
    # distances 0..63 = {0} ∪ [1,2) ∪ [2,4) ∪ ... ∪ [32,64)
    total = metrics.last_k_mass(logits, 1) + sum(metrics.range_mass(logits, 2**j, 2) for j in range(6))
    torch.testing.assert_close(total, torch.ones(6, dtype=torch.float64))


def test_last_k_mass_is_k_over_n_for_uniform_logits_and_one_when_k_covers_all_keys():
    logits = torch.zeros(1000)
    assert metrics.last_k_mass(logits, 100).item() == pytest.approx(0.1)
    assert metrics.last_k_mass(logits[:50], 100).item() == pytest.approx(1.0)


def test_last_k_mass_counts_the_most_recent_keys_not_the_oldest():
    logits = torch.full((200,), -30.0)
    logits[:100] = 0.0  # t < 100: most recent keys
    assert metrics.last_k_mass(logits, 100).item() == pytest.approx(1.0, abs=1e-10)


def test_unnormalised_range_mass_is_the_sum_of_exp_logits_in_the_range():
    logits = torch.randn(3, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    expected = logits[:, 4:20].exp().sum(-1)
    torch.testing.assert_close(metrics.unnormalised_range_mass(logits, 4, 5), expected)
    assert metrics.unnormalised_range_mass(torch.zeros(40), 10, 2).item() == pytest.approx(10.0)


def test_exclude_sink_drops_the_oldest_present_key_and_renormalises():
    logits = torch.zeros(20)
    logits[19] = 10.0  # a sink at the largest distance
    assert metrics.global_entropy(logits, exclude_sink=True).item() == pytest.approx(math.log(19))
    assert metrics.last_k_mass(logits, 10, exclude_sink=True).item() == pytest.approx(10 / 19)
    padded = torch.cat([torch.zeros(12), torch.full((8,), NEG_INF)])  # a short causal row: sink at t = 11
    padded[11] = 10.0
    assert metrics.global_entropy(padded, exclude_sink=True).item() == pytest.approx(math.log(11))


def test_float32_input_is_computed_in_float64():
    out = metrics.range_entropy(torch.zeros(2, 16, dtype=torch.float32), 2, 2)
    assert out.dtype == torch.float64


def test_range_past_the_keys_or_empty_range_is_refused_with_a_hint():
    with pytest.raises(ValueError, match="t <="):
        metrics.range_entropy(torch.zeros(50), 10, 10)
    with pytest.raises(ValueError, match="integer >= 1"):
        metrics.range_mass(torch.zeros(50), 0, 2)
    with pytest.raises(ValueError, match="delta must be > 1"):
        metrics.range_mass(torch.zeros(50), 3, 1)


def test_logits_by_distance_reorders_a_causal_score_matrix():
    T = 6
    scores = torch.randn(2, T, T, generator=torch.Generator().manual_seed(4))
    by_t = metrics.logits_by_distance(scores)
    for i in range(T):
        for t in range(T):
            if t <= i:
                assert by_t[1, i, t] == scores[1, i, i - t]
            else:
                assert by_t[1, i, t] == NEG_INF
    causal = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), NEG_INF)
    p = torch.softmax(causal.double(), -1)
    expected = -(torch.where(p > 0, p * p.log(), torch.zeros_like(p))).sum(-1)
    torch.testing.assert_close(metrics.global_entropy(by_t), expected)
    # the first key (j = 0) is row i's sink at distance i
    torch.testing.assert_close(metrics.global_entropy(by_t[..., 1:, :], exclude_sink=True),
                               metrics.global_entropy(causal[..., 1:, 1:]))


@pytest.mark.parametrize("exclude_sink", [False, True])
def test_range_statistics_equals_the_single_range_functions(exclude_sink):
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(3, 400, dtype=torch.float64, generator=g) * 4
    logits[1, 300:] = NEG_INF  # padded row
    logits[2, 0] = 2000.0  # one key dominating by far: far ranges underflow after the shift (exact fallback)
    ranges = [(1, 2), (3, 5), (10, 10), (37, 2), (39, 10), (130, 3)]
    stats = metrics.range_statistics(logits, ranges, exclude_sink=exclude_sink)
    for r, (t, delta) in enumerate(ranges):
        kw = {"exclude_sink": exclude_sink}
        torch.testing.assert_close(stats["entropy"][..., r], metrics.range_entropy(logits, t, delta, **kw),
                                   equal_nan=True)
        torch.testing.assert_close(stats["mass"][..., r], metrics.range_mass(logits, t, delta, **kw))
        torch.testing.assert_close(stats["unnormalised_mass"][..., r],
                                   metrics.unnormalised_range_mass(logits, t, delta, **kw))
