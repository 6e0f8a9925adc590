"""Loss at several lengths on the same scored tokens, per-position loss and its log bins."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from siattn.evaluation import (
    bin_by_position,
    log_bin_edges,
    loss_at_length,
    loss_at_lengths,
    per_token_losses,
    scored_tokens,
)


@pytest.mark.parametrize("length", [1, 7, 12, 100, 513, 65536])
def test_log_bins_partition_positions_one_to_length(length):
    edges = log_bin_edges(length)
    assert edges[0] == 1 and edges[-1] == length + 1
    assert np.all(np.diff(edges) > 0)


def test_log_bins_are_single_positions_first_then_widen_geometrically():
    # floor(10^(k/10)) = 1 1 1 1 2 3 3 5 6 7 10 12 15 ...: bins [1] [2] [3,4] [5] [6] [7,9] [10,11] [12]
    assert log_bin_edges(12).tolist() == [1, 2, 3, 5, 6, 7, 10, 12, 13]
    wide = log_bin_edges(10**6, bins_per_decade=4)
    ratios = wide[5:-1] / wide[4:-2]
    assert np.allclose(ratios, 10**0.25, rtol=0.05)


def test_log_bins_of_different_lengths_line_up():
    short, long = log_bin_edges(1000), log_bin_edges(16000)
    assert set(short[:-1]) <= set(long)


def test_binned_counts_cover_every_position_of_every_window_and_means_are_exact():
    length, windows = 300, 3
    loss_sum = np.arange(1, length + 1, dtype=float) * windows  # mean loss at position p is p
    b = bin_by_position(loss_sum, windows)
    assert sum(b["count"]) == length * windows
    for start, end, count, mean in zip(b["start"], b["end"], b["count"], b["loss"]):
        assert count == (end - start + 1) * windows
        assert mean == pytest.approx((start + end) / 2)
    assert b["center"][0] == 1.0 and b["end"][-1] == length


def test_sliced_output_head_gives_the_same_losses_as_the_full_forward(make_gpt):
    model = make_gpt()
    x = torch.randint(0, 257, (2, 97))
    y = torch.randint(0, 257, (2, 97))
    y[0, :10] = -1
    full = per_token_losses(model, x, y, head_chunk=0)
    sliced = per_token_losses(model, x, y, head_chunk=40)
    assert torch.allclose(full, sliced, atol=1e-5)
    assert (sliced[0, :10] == 0).all()
    assert isinstance(model.lm_head, torch.nn.Linear)  # the head is put back


def test_scored_tokens_is_the_largest_common_multiple_of_the_lengths():
    assert scored_tokens(10_000, [32, 128, 512]) == 9728
    assert scored_tokens(2048, [512, 2048]) == 2048
    with pytest.raises(ValueError, match="at least 512"):
        scored_tokens(500, [32, 512])


def test_loss_is_finite_at_16x_and_every_length_scores_the_same_tokens(haystack, make_gpt):
    model = make_gpt(train_length=16)
    res = loss_at_lengths(model, haystack, [16, 64, 256], n_tokens=600, batch_tokens=256, progress=False)
    assert [r.tokens for r in res.values()] == [512, 512, 512]
    assert [r.windows for r in res.values()] == [32, 8, 2]
    for r in res.values():
        assert math.isfinite(r.loss) and 0 < r.loss < 10
        assert r.position_loss().shape == (r.length,)
        assert r.position_loss().mean() == pytest.approx(r.loss)
        assert sum(r.binned()["count"]) == r.tokens


def test_loss_at_length_matches_the_models_own_mean_loss(haystack, make_gpt):
    model = make_gpt()
    res = loss_at_length(model, haystack, 64, 128, progress=False)
    w = torch.from_numpy(haystack[:129].astype(np.int64)).view(1, -1)
    x = torch.stack([w[0, :64], w[0, 64:128]])
    y = torch.stack([w[0, 1:65], w[0, 65:129]])
    with torch.no_grad():
        _, loss = model(x, y)
    assert res.loss == pytest.approx(float(loss), rel=1e-5)


def test_shards_split_the_batches_and_sum_to_the_whole(haystack, make_gpt):
    """What the trainer's ranks each score (shard = (rank, world_size)) adds up to one process's result."""
    model = make_gpt()
    whole = loss_at_length(model, haystack, 32, 32 * 5, progress=False)
    parts = [loss_at_length(model, haystack, 32, 32 * 5, progress=False, shard=(r, 2)) for r in range(2)]
    assert [p.windows for p in parts] == [3, 2]
    assert sum(p.tokens for p in parts) == whole.tokens
    assert sum(p.loss_sum for p in parts) == pytest.approx(whole.loss_sum, rel=1e-6)
    with pytest.raises(ValueError, match="shard"):
        loss_at_length(model, haystack, 32, 32, progress=False, shard=(2, 2))
