"""The flex backend on CPU against the reference, at the lengths where torch's compiled CPU FlexAttention alone
returns wrong values now and then (length 8), and at lengths that need padding."""

import pytest
import torch

import siattn


@pytest.mark.parametrize(("tq", "tk", "causal"), [(8, 8, True), (8, 8, False), (5, 13, True), (17, 17, False)])
def test_flex_on_cpu_matches_the_reference_on_every_call(tq, tk, causal):
    seed = int(torch.initial_seed())
    for call in range(6):  # the unpadded length-8 kernel went wrong in about half of such calls
        q = torch.randn(1, 2, tq, 16)
        k, v = torch.randn(1, 1, tk, 16), torch.randn(1, 1, tk, 16)
        offset = tk - tq
        flex = siattn.scale_invariant_attention(q, k, v, backend="flex", causal=causal, q_offset=offset)
        ref = siattn.scale_invariant_attention(q, k, v, backend="reference", causal=causal, q_offset=offset)
        err = (flex - ref).abs().max().item()
        assert err < 1e-5, f"call {call} (torch seed {seed}): flex differs from the reference by {err}"


def _block_mask_tensors(block_mask) -> list[torch.Tensor]:
    return [x for x in block_mask.as_tuple() if isinstance(x, torch.Tensor)]


def test_long_masks_are_built_by_the_compiled_builder(monkeypatch):
    """Regression: the eager create_block_mask held every (query, key) pair of a 131,072-token call in memory
    (a 128 GiB int64 sum on the GPU); calls of more pairs than EAGER_MASK_MAX_PAIRS take the compiled builder."""
    from siattn.backends import flex

    seen = []
    monkeypatch.setattr(flex, "_compiled_create_block_mask", lambda: lambda *a, **kw: seen.append(kw) or "built")
    flex._block_mask.cache_clear()
    try:
        assert flex._block_mask(1 << 17, 1 << 17, 0, True, None, "cpu") == "built"
        assert seen and seen[0]["Q_LEN"] == seen[0]["KV_LEN"] == 1 << 17
        seen.clear()
        flex._block_mask(4096, 4096, 0, True, None, "cpu")  # 2**24 pairs: eager
        assert not seen
    finally:
        flex._block_mask.cache_clear()


@pytest.mark.parametrize("case", ["causal-offset", "padded", "documents"])
def test_compiled_block_masks_equal_the_eager_ones(monkeypatch, case):
    from siattn.backends import flex
    from siattn.backends.varlen import document_ids

    def build():
        flex._block_mask.cache_clear()
        if case == "causal-offset":
            return flex._block_mask(256, 384, 128, True, None, "cpu")
        if case == "padded":
            return flex._block_mask(384, 384, 0, True, 300, "cpu")
        cu = torch.tensor([0, 100, 130, 384])
        return flex._document_block_mask(document_ids(cu, 384), True)

    eager = build()
    monkeypatch.setattr(flex, "EAGER_MASK_MAX_PAIRS", 0)
    compiled = build()
    flex._block_mask.cache_clear()
    for a, b in zip(_block_mask_tensors(eager), _block_mask_tensors(compiled), strict=True):
        assert torch.equal(a, b), case
    assert torch.equal(eager.to_dense(), compiled.to_dense())
