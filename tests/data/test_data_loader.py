"""SequenceLoader, validation_windows, unigram_entropy and TokenArray on synthetic tokens."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from siattn.data import DataError, SequenceLoader, TokenArray, unigram_entropy, validation_windows


def tokens(n: int = 10_001, shards: int = 3) -> TokenArray:
    """0, 1, 2, ... (mod 60000) split across several shards, so windows cross shard boundaries."""
    arr = (np.arange(n) % 60000).astype(np.uint16)
    cuts = np.linspace(0, n, shards + 1).astype(int)
    return TokenArray([arr[a:b] for a, b in itertools.pairwise(cuts)])


def take(loader, n):
    return [(x.clone(), y.clone()) for x, y in itertools.islice(loader, n)]


def test_batches_are_int64_windows_with_targets_shifted_by_one():
    x, y = next(SequenceLoader(tokens(), seq_len=16, batch_size=4))
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(y - x, torch.ones_like(x))  # consecutive tokens, across shard boundaries too
    assert (x[:, 0] % 16 == 0).all()  # windows start at multiples of seq_len


def test_same_seed_gives_the_same_batches_and_another_seed_does_not():
    a = take(SequenceLoader(tokens(), 16, 4, seed=3), 5)
    b = take(SequenceLoader(tokens(), 16, 4, seed=3), 5)
    c = take(SequenceLoader(tokens(), 16, 4, seed=4), 5)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b))
    assert not all(torch.equal(p[0], q[0]) for p, q in zip(a, c))


def test_ranks_get_disjoint_slices_of_the_single_process_global_batch():
    single = take(SequenceLoader(tokens(), 16, 8, seed=1), 3)
    ranks = [take(SequenceLoader(tokens(), 16, 4, seed=1, rank=r, world_size=2), 3) for r in range(2)]
    for step in range(3):
        r0, r1 = ranks[0][step][0], ranks[1][step][0]
        assert not set(r0[:, 0].tolist()) & set(r1[:, 0].tolist())
        assert torch.equal(torch.cat([r0, r1]), single[step][0])


def test_an_epoch_visits_every_window_once_then_reshuffles():
    loader = SequenceLoader(tokens(1601), seq_len=16, batch_size=10)  # 100 windows -> 10 steps
    assert (loader.steps_per_epoch, loader.tokens_per_epoch) == (10, 1600)
    first = torch.cat([x[:, 0] for x, _ in take(loader, 10)])
    assert sorted(first.tolist()) == list(range(0, 1600, 16))
    second = torch.cat([x[:, 0] for x, _ in take(loader, 10)])
    assert loader.epoch == 1 and sorted(second.tolist()) == sorted(first.tolist())
    assert not torch.equal(first, second)


def test_resume_from_state_dict_continues_with_identical_batches():
    run = SequenceLoader(tokens(), 16, 8, seed=7)
    reference = take(run, 120)  # crosses an epoch boundary (78 steps per epoch)
    interrupted = SequenceLoader(tokens(), 16, 8, seed=7)
    take(interrupted, 70)
    state = interrupted.state_dict()
    resumed = SequenceLoader(tokens(), 16, 8, seed=7)
    resumed.load_state_dict(state)
    for (x, y), (rx, ry) in zip(take(resumed, 50), reference[70:]):
        assert torch.equal(x, rx) and torch.equal(y, ry)
    assert resumed.epoch == 1


def test_resume_with_other_windows_or_a_position_between_steps_is_refused():
    state = SequenceLoader(tokens(), 16, 8).state_dict()
    with pytest.raises(ValueError, match="seq_len"):
        SequenceLoader(tokens(), 32, 8).load_state_dict(state)
    loader = SequenceLoader(tokens(), 16, 4)
    take(loader, 3)  # 12 windows: not a whole number of steps of 8
    with pytest.raises(ValueError, match="not a whole number"):
        SequenceLoader(tokens(), 16, 8).load_state_dict(loader.state_dict())


def test_a_two_rank_position_resumes_in_one_process_on_the_same_windows():
    """Saved by 2 ranks of micro-batch 4 after 6 steps (48 windows); one process of micro-batch 8 goes on with
    exactly the windows the two ranks would have read next, rank 0's then rank 1's."""
    ranks = [SequenceLoader(tokens(), 16, 4, seed=5, rank=r, world_size=2) for r in range(2)]
    for loader in ranks:
        take(loader, 6)
    ahead = [take(loader, 4) for loader in ranks]
    saved = SequenceLoader(tokens(), 16, 4, seed=5, rank=0, world_size=2)
    take(saved, 6)
    one = SequenceLoader(tokens(), 16, 8, seed=5)
    one.load_state_dict(saved.state_dict())
    assert one.step == 6
    for step, (x, _) in enumerate(take(one, 4)):
        assert torch.equal(x, torch.cat([ahead[0][step][0], ahead[1][step][0]]))


def test_too_few_tokens_for_one_global_batch_is_a_clear_error():
    with pytest.raises(DataError, match="fewer than one global batch"):
        SequenceLoader(tokens(100), seq_len=16, batch_size=4, world_size=2)


def test_loader_reads_windows_from_memmap_without_loading_it(tmp_path):
    path = tmp_path / "t.npy"
    np.save(path, np.arange(5000, dtype=np.uint16))
    mm = np.load(path, mmap_mode="r")
    x, _ = next(SequenceLoader(mm, 32, 2))
    assert isinstance(mm, np.memmap) and x.shape == (2, 32)


def test_validation_windows_score_the_same_tokens_at_every_length():
    val = tokens(5000)
    for seq_len in (16, 64, 256):
        windows = list(validation_windows(val, seq_len, n_tokens=1024, batch_size=3))
        flat = torch.cat(windows)
        assert flat.shape == (1024 // seq_len, seq_len + 1)
        assert flat[:, 1:].numel() == 1024  # scored targets
        assert torch.equal(flat[:, 0], torch.arange(0, 1024, seq_len))
        assert torch.equal(flat[-1, -1], torch.tensor(1024))


def test_validation_windows_refuse_too_small_splits_and_uneven_lengths():
    with pytest.raises(DataError, match="validation split has 500 tokens"):
        validation_windows(tokens(500), 64, n_tokens=1024)
    with pytest.raises(ValueError, match="not a multiple"):
        validation_windows(tokens(5000), 100, n_tokens=1024)
    assert len(list(validation_windows(tokens(5000), 100, 1024, allow_remainder=True))) == 10


def test_unigram_entropy_in_nats():
    assert unigram_entropy(np.arange(256).repeat(4)) == pytest.approx(math.log(256))
    assert unigram_entropy(np.zeros(100, dtype=np.uint16)) == pytest.approx(0.0)
    assert unigram_entropy(TokenArray([np.array([0, 1]), np.array([1, 1])])) == pytest.approx(
        -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))


def test_token_array_get_spans_shards_and_checks_bounds():
    arr = tokens(100, shards=4)
    np.testing.assert_array_equal(arr.get(20, 40), np.arange(20, 60))
    np.testing.assert_array_equal(arr[95:], np.arange(95, 100))
    assert arr[-1] == 99 and len(arr) == 100
    with pytest.raises(IndexError):
        arr.get(90, 11)
