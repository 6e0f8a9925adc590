"""transformers' packed inputs (position ids that restart, cu_seq_lens_q/k) mapped onto cu_seqlens; the mapped
boundaries make siattn.attention equal the sequences run separately."""

from __future__ import annotations

import itertools

import pytest
import torch

from siattn import attention
from siattn.hf.packing import cu_seqlens_from_position_ids, packed_cu_seqlens


def test_restarting_position_ids_give_the_cumulative_lengths():
    ids = torch.tensor([[0, 1, 2, 0, 0, 1, 2, 3]])
    cu = cu_seqlens_from_position_ids(ids)
    assert cu.dtype == torch.int32 and cu.tolist() == [0, 3, 4, 8]
    assert cu_seqlens_from_position_ids(ids[0]).tolist() == [0, 3, 4, 8]
    assert cu_seqlens_from_position_ids(torch.tensor([0])).tolist() == [0, 1]


@pytest.mark.parametrize(("ids", "match"), [
    (torch.tensor([[1, 2, 0]]), "must start at 0, got 1"),
    (torch.tensor([[0, 1, 3, 0]]), r"restart at 0 or count up by 1, got 1 then 3 at index 2"),
    (torch.tensor([[0, 1, 1]]), r"got 1 then 1 at index 2"),
    (torch.tensor([[0, 1], [0, 1]]), r"shape \(1, T\) or \(T,\)"),
    (torch.tensor([[0.0, 1.0]]), "integer torch.Tensor"),
    (torch.zeros(1, 0, dtype=torch.long), r"T >= 1"),
])
def test_bad_position_ids_raise_one_line_errors(ids, match):
    with pytest.raises(ValueError, match=match) as info:
        cu_seqlens_from_position_ids(ids)
    assert "\n" not in str(info.value)


def test_packed_cu_seqlens_detects_packing():
    assert packed_cu_seqlens(torch.arange(6)[None]) is None  # one sequence
    assert packed_cu_seqlens(torch.arange(6).repeat(2, 1)) is None  # a batch of rows
    assert packed_cu_seqlens(None) is None
    assert packed_cu_seqlens(torch.tensor([[0, 1, 0, 1, 2]])).tolist() == [0, 2, 5]
    cu = torch.tensor([0, 2, 5], dtype=torch.int32)
    assert packed_cu_seqlens(None, cu_seq_lens_q=cu, cu_seq_lens_k=cu.clone(), max_length_q=3).tolist() == [0, 2, 5]
    with pytest.raises(ValueError, match="cu_seq_lens_q and cu_seq_lens_k must both be given and equal"):
        packed_cu_seqlens(None, cu_seq_lens_q=cu, cu_seq_lens_k=torch.tensor([0, 5], dtype=torch.int32))
    with pytest.raises(ValueError, match="must both be given"):
        packed_cu_seqlens(None, cu_seq_lens_q=cu)
    with pytest.raises(ValueError, match="strictly increasing"):
        bad = torch.tensor([0, 3, 3, 5], dtype=torch.int32)
        packed_cu_seqlens(None, cu_seq_lens_q=bad, cu_seq_lens_k=bad)


def test_mapped_boundaries_separate_the_sequences():
    ids = torch.tensor([[0, 1, 2, 3, 0, 1, 0, 1, 2]])
    cu = packed_cu_seqlens(ids)
    q, k, v = (torch.randn(1, 2, 9, 8, dtype=torch.float64) for _ in range(3))
    got = attention(q, k, v, method="si-nope", cu_seqlens=cu)
    want = torch.cat([attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], method="si-nope")
                      for s, e in itertools.pairwise(cu.tolist())], dim=2)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_a_converted_model_runs_a_packed_row_as_its_sequences_run_alone(monkeypatch):
    """Position ids that restart at each sequence: the bridge takes the cu_seqlens path, and each sequence's
    logits equal those of the sequence run on its own (RoPE restarts through the ids, the transform's distances
    through cu_seqlens)."""
    from hf_models import tiny_llama, tokens

    import siattn.hf.attention as bridge
    from siattn import hf

    calls = []
    real = bridge.run_backend

    def spy(*args, **kwargs):
        calls.append(kwargs.get("cu_seqlens"))
        return real(*args, **kwargs)

    monkeypatch.setattr(bridge, "run_backend", spy)
    model = hf.convert(tiny_llama(), method="si-p-rope")
    lengths = (9, 1, 14)
    docs = [tokens(1, n, seed=i) for i, n in enumerate(lengths)]
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    with torch.no_grad():
        packed = model(torch.cat(docs, dim=1), position_ids=position_ids).logits
        assert [c.tolist() for c in calls] == [[0, 9, 10, 24]] * 2  # both layers took the packed path
        alone = torch.cat([model(d).logits for d in docs], dim=1)
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)
