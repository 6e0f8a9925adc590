"""Packed documents (``cu_seqlens``): every backend returns what running each document on its own returns,
forward and backward, for every kind of logit transform, causal or not, with grouped-query attention, one-token
documents and peaked logits; and bad ``cu_seqlens`` raise one-line ValueErrors naming it.

The reference backend loops over the documents, so it equals the separate runs bit for bit; the other backends
compute in other orders and match to float tolerance (float64 inputs: 1e-12). The Triton kernels' packed tests
live in tests/backends/test_triton.py (they need the interpreter or CUDA)."""

import itertools
import random

import pytest
import torch

from siattn import attention, scale_invariant_attention
from siattn.backends import BACKENDS, Backend, choose_backend, register_backend, run_backend
from siattn.backends.chunked import chunked_attention
from siattn.backends.reference import reference_attention
from siattn.backends.transforms import LogitTransform
from siattn.backends.varlen import (
    document_ids,
    from_lengths,
    keys_seen,
    positions_in_documents,
    same_document,
)
from siattn.methods import get_method

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

METHODS = ["si-nope", "alibi", "nope", "logn-rope"]
CPU_BACKENDS = ["reference", "chunked", "sdpa", "flex"]
F64_TOL = dict(rtol=1e-10, atol=1e-12)


def _qkv(total, h=4, hkv=2, d=16, dtype=torch.float64, grad=True, peak=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def make(*shape, factor=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * factor).to(dtype).requires_grad_(grad)

    return make(1, h, total, d, factor=peak), make(1, hkv, total, d), make(1, hkv, total, d)


def _separately(q, k, v, cu_seqlens, **kw):
    """Each document through the reference backend on its own, concatenated along the sequence."""
    bounds = cu_seqlens.tolist()
    return torch.cat([attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], backend="reference", **kw)
                      for s, e in itertools.pairwise(bounds)], dim=2)


def _runs(backend, method, causal, dtype):
    """Whether ``backend`` can compute ``method`` here (CPU); flex has no CPU backward and no float64."""
    if backend == "sdpa" and method not in ("nope", "logn-rope"):
        return False
    return not (backend == "flex" and dtype == torch.float64)


def _compare(backend, method, causal, lengths, *, dtype=torch.float64, peak=1.0, seed=0, h=4, hkv=2,
             backward=True, **backend_kw):
    cu = from_lengths(lengths)
    total = sum(lengths)
    q, k, v = _qkv(total, h=h, hkv=hkv, dtype=dtype, grad=backward, peak=peak, seed=seed)
    kw = dict(method=method, causal=causal, logn_scale=0.4)
    expected = _separately(q, k, v, cu, **kw)
    if backend_kw:  # the chunked backend with small blocks, called directly (LogN-free methods)
        got = chunked_attention(q, k, v, transform=get_method(method).logit_transform(),
                                q_offset=0, causal=causal, scale=q.shape[-1] ** -0.5, cu_seqlens=cu, **backend_kw)
    else:
        got = attention(q, k, v, backend=backend, cu_seqlens=cu, **kw)
    tol = F64_TOL if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-6)
    where = f"backend={backend} method={method} causal={causal} lengths={lengths} seed={seed} {backend_kw}"
    if backend == "reference":
        assert torch.equal(got, expected), where
    else:
        torch.testing.assert_close(got, expected, **tol, msg=lambda m: f"{where}: {m}")
    if not backward:
        return
    grad = torch.randn(got.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=got.dtype)
    want = torch.autograd.grad(expected, (q, k, v), grad)
    have = torch.autograd.grad(got, (q, k, v), grad)
    for name, a, b in zip("qkv", have, want):
        if backend == "reference":
            assert torch.equal(a, b), f"d{name}: {where}"
        else:
            torch.testing.assert_close(a, b, **tol, msg=lambda m, name=name: f"d{name} {where}: {m}")


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_packed_equals_documents_run_separately(backend, method, causal):
    """Documents of lengths 5, 1, 9, 1, 16 (one-token ones included) packed into T = 32."""
    dtype = torch.float32 if backend == "flex" else torch.float64
    if not _runs(backend, method, causal, dtype):
        pytest.skip(f"{backend} does not compute {method}")
    _compare(backend, method, causal, [5, 1, 9, 1, 16], dtype=dtype, backward=backend != "flex")


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize(("block_q", "block_k"), [(4, 4), (3, 5), (8, 2), (1, 1)])
@pytest.mark.parametrize("method", ["si-nope", "alibi", "nope"])
def test_chunked_blocks_skip_and_mask_across_documents(method, block_q, block_k, causal):
    """Blocks smaller than the documents, larger, and straddling their boundaries: skipped where no document is
    shared, masked inside, never NaN for rows that see no key of a block."""
    _compare("chunked", method, causal, [2, 7, 1, 1, 6, 3], block_q=block_q, block_k=block_k)


@settings(max_examples=25, deadline=None)
@given(lengths=st.lists(st.integers(1, 12), min_size=1, max_size=6), seed=st.integers(0, 2**16),
       method=st.sampled_from(["si-nope", "alibi", "nope"]), causal=st.booleans(),
       blocks=st.tuples(st.integers(1, 9), st.integers(1, 9)))
def test_chunked_random_documents(lengths, seed, method, causal, blocks):
    _compare("chunked", method, causal, lengths, seed=seed, block_q=blocks[0], block_k=blocks[1])


@settings(max_examples=15, deadline=None)
@given(lengths=st.lists(st.integers(1, 20), min_size=1, max_size=5), seed=st.integers(0, 2**16),
       method=st.sampled_from(METHODS), causal=st.booleans())
def test_default_backend_random_documents(lengths, seed, method, causal):
    """``auto`` (chunked on CPU) and the reference on random document lengths."""
    _compare("auto", method, causal, lengths, seed=seed)
    _compare("reference", method, causal, lengths, seed=seed)


@pytest.mark.parametrize("backend", ["reference", "chunked"])
def test_peaked_logits(backend):
    """q scaled ×40: near one-hot softmax rows, where a key leaking across a boundary would show at once."""
    rng = random.Random(7)
    lengths = [rng.randint(1, 9) for _ in range(6)]
    for method in ("si-nope", "alibi", "nope"):
        _compare(backend, method, True, lengths, peak=40.0)


def test_scale_invariant_attention_takes_cu_seqlens():
    cu = from_lengths([3, 4, 1])
    q, k, v = _qkv(8, grad=False)
    got = scale_invariant_attention(q, k, v, tau=3.0, cu_seqlens=cu, backend="chunked")
    want = torch.cat([scale_invariant_attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], tau=3.0)
                      for s, e in itertools.pairwise(cu.tolist())], dim=2)
    torch.testing.assert_close(got, want, **F64_TOL)


def test_one_document_equals_unpacked():
    q, k, v = _qkv(11, grad=False)
    cu = torch.tensor([0, 11])
    for backend in ("reference", "chunked"):
        torch.testing.assert_close(attention(q, k, v, method="si-nope", backend=backend, cu_seqlens=cu),
                                   attention(q, k, v, method="si-nope", backend=backend), **F64_TOL)


def test_reference_with_mask_and_documents():
    """The reference's boolean ``mask`` (the HF bridge's path) composes with documents, each sliced per document."""
    cu = from_lengths([4, 6])
    q, k, v = _qkv(10, grad=False)
    mask = torch.rand(1, 1, 10, 10, generator=torch.Generator().manual_seed(3)) > 0.3
    tr = LogitTransform("scale-invariant")
    got = reference_attention(q, k, v, transform=tr, q_offset=0, causal=True, scale=0.25, mask=mask, cu_seqlens=cu)
    want = torch.cat([reference_attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], transform=tr, q_offset=0,
                                          causal=True, scale=0.25, mask=mask[..., s:e, s:e])
                      for s, e in ((0, 4), (4, 10))], dim=2)
    assert torch.equal(got, want)


def test_document_helpers():
    cu = from_lengths([2, 1, 3])
    assert cu.dtype == torch.int32 and cu.tolist() == [0, 2, 3, 6]
    assert document_ids(cu, 6).tolist() == [0, 0, 1, 2, 2, 2]
    assert positions_in_documents(cu, 6).tolist() == [0, 1, 0, 0, 1, 2]
    assert keys_seen(cu, 6, causal=True).tolist() == [1, 2, 1, 1, 2, 3]
    assert keys_seen(cu, 6, causal=False).tolist() == [2, 2, 1, 3, 3, 3]
    keep = same_document(cu, 6, causal=True)
    assert keep.sum().item() == 3 + 1 + 6 and not keep[3, 2] and keep[5, 3] and not keep[3, 5]
    for bad in ([], [0], [2, -1], [True]):
        with pytest.raises(ValueError, match="lengths must be"):
            from_lengths(bad)


def test_auto_never_picks_sdpa_for_packed_inputs():
    q, k, v = _qkv(8, dtype=torch.float32, grad=False)
    none = LogitTransform("none")
    assert choose_backend(q, k, v, none, False) == "sdpa"
    assert choose_backend(q, k, v, none, False, packed=True) == "chunked"


def test_every_builtin_backend_takes_cu_seqlens():
    for name in ("reference", "chunked", "flex", "sdpa"):
        assert BACKENDS[name].takes_cu_seqlens, name


def test_backend_without_cu_seqlens_is_refused():
    register_backend(Backend("plain-only", lambda q, k, v, **kw: q, lambda *a: None, "test backend"))
    try:
        q, k, v = _qkv(4, grad=False)
        with pytest.raises(ValueError, match=r"backend 'plain-only' does not take cu_seqlens; backends that do") as e:
            run_backend(q, k, v, backend="plain-only", cu_seqlens=from_lengths([2, 2]))
        assert "\n" not in str(e.value) and "'chunked'" in str(e.value)
    finally:
        BACKENDS.pop("plain-only")


@pytest.mark.parametrize("fn", [scale_invariant_attention, attention], ids=["scale_invariant_attention", "attention"])
@pytest.mark.parametrize(("shape", "cu", "kwargs", "match"), [
    ((1, 8), [0, 3, 8], {}, r"cu_seqlens must be an int32 or int64 torch\.Tensor or None, got list"),
    ((1, 8), torch.tensor([0.0, 8.0]), {}, r"cu_seqlens\.dtype must be torch\.int32 or torch\.int64"),
    ((1, 8), torch.tensor([[0, 8]]), {}, r"cu_seqlens must have shape \(N\+1,\)"),
    ((1, 8), torch.tensor([0]), {}, r"cu_seqlens must have shape \(N\+1,\) with N >= 1"),
    ((1, 8), torch.tensor([1, 8]), {}, r"cu_seqlens\[0\] must be 0, got 1"),
    ((1, 8), torch.tensor([0, 3, 7]), {}, r"cu_seqlens\[-1\] must equal the packed length T = 8, got 7"),
    ((1, 8), torch.tensor([0, 3, 3, 8]), {}, r"strictly increasing.*cu_seqlens\[1\] = 3 and cu_seqlens\[2\] = 3"),
    ((1, 8), torch.tensor([0, 5, 2, 8]), {}, r"strictly increasing"),
    ((2, 8), torch.tensor([0, 8]), {}, r"one packed row \(batch 1\), got batch 2"),
    ((1, 8), torch.tensor([0, 8]), {"q_offset": 2}, r"q_offset must be 0"),
])
def test_bad_cu_seqlens_raise_one_line_value_error(fn, shape, cu, kwargs, match):
    batch, total = shape
    q, k = torch.randn(batch, 2, total, 8), torch.randn(batch, 2, total, 8)
    extra = {"method": "logn-rope", "logn_scale": 0.5} if fn is attention else {}
    for backend in ("auto", "reference", "chunked"):
        with pytest.raises(ValueError, match=match) as info:
            fn(q, k, k, backend=backend, cu_seqlens=cu, **kwargs, **extra)
        assert "\n" not in str(info.value)


def test_packed_lengths_must_match():
    q, k = torch.randn(1, 2, 6, 8), torch.randn(1, 2, 8, 8)
    with pytest.raises(ValueError, match=r"q and k must have one length \(packed self-attention\), got 6 and 8"):
        attention(q, k, k, cu_seqlens=torch.tensor([0, 8]))
