"""Property-based tests (Hypothesis): the attention API against the reference across shapes, dtypes, offsets,
grouped-query ratios and τ on every CPU backend; the data pipeline keeps arbitrary bytes exactly.

FlexAttention is not swept here: on CPU it compiles each new shape (25-60 s apiece). The Triton kernel runs on
CPU only through its interpreter, which must be chosen before import; its tests live in tests/backends."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from siattn import attention, scale_invariant_attention  # noqa: E402
from siattn.data import BytesTokenizer, TokenDataset, prepare_dataset  # noqa: E402

FAST = settings(max_examples=25, deadline=None, derandomize=True)
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 2e-2}


@st.composite
def attention_case(draw, dtypes=(torch.float32, torch.float64)):
    hkv = draw(st.integers(1, 2))
    group = draw(st.sampled_from([1, 2, 3]))
    tk = draw(st.integers(1, 40))
    tq = draw(st.integers(1, tk + 4))
    return {
        "batch": draw(st.integers(1, 2)), "heads": hkv * group, "hkv": hkv, "tq": tq, "tk": tk,
        "dim": draw(st.sampled_from([2, 8, 16])), "dtype": draw(st.sampled_from(dtypes)),
        "q_offset": draw(st.integers(0, 50)), "causal": draw(st.booleans()),
        "tau": draw(st.floats(0.25, 1e4, allow_nan=False, allow_infinity=False)),
        "seed": draw(st.integers(0, 2**16)),
    }


def tensors(c, grad=False):
    g = torch.Generator().manual_seed(c["seed"])

    def make(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(c["dtype"]).requires_grad_(grad)

    return (make(c["batch"], c["heads"], c["tq"], c["dim"]), make(c["batch"], c["hkv"], c["tk"], c["dim"]),
            make(c["batch"], c["hkv"], c["tk"], c["dim"]))


def close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> None:
    tol = TOL[dtype]
    torch.testing.assert_close(a.double(), b.double(), atol=tol, rtol=tol)


@FAST
@given(attention_case(dtypes=(torch.float32, torch.float64, torch.bfloat16)))
def test_chunked_forward_matches_reference(c):
    q, k, v = tensors(c)
    kw = {"tau": c["tau"], "causal": c["causal"], "q_offset": c["q_offset"]}
    ref = scale_invariant_attention(q, k, v, backend="reference", **kw)
    got = scale_invariant_attention(q, k, v, backend="chunked", **kw)
    assert got.dtype == q.dtype and got.shape == q.shape
    close(got, ref, c["dtype"])


@FAST
@given(attention_case())
def test_chunked_gradients_match_reference(c):
    kw = {"tau": c["tau"], "causal": c["causal"], "q_offset": c["q_offset"]}
    grads = []
    for backend in ("reference", "chunked"):
        q, k, v = tensors(c, grad=True)
        out = scale_invariant_attention(q, k, v, backend=backend, **kw)
        weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
        grads.append(torch.autograd.grad((out * weights).sum(), (q, k, v)))
    for r, g in zip(*grads):
        close(g, r, c["dtype"])


@FAST
@given(attention_case(), st.sampled_from(["nope", "alibi", "si-nope", "rope"]))
def test_every_cpu_backend_of_the_method_api_matches_reference(c, method):
    q, k, v = tensors(c)
    kw = {"method": method, "tau": c["tau"], "causal": c["causal"], "q_offset": c["q_offset"]}
    ref = attention(q, k, v, backend="reference", **kw)
    backends = ["chunked"] + (["sdpa"] if method in ("nope", "rope") and c["dtype"] != torch.float64 else [])
    for backend in backends:
        close(attention(q, k, v, backend=backend, **kw), ref, c["dtype"])


@FAST
@given(st.binary(max_size=2000))
def test_bytes_tokenizer_round_trips_arbitrary_bytes(data):
    tok = BytesTokenizer()
    (ids,) = tok.encode_batch([data])
    assert bytes(ids.tolist()) == data
    assert len(ids) == len(data)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(st.binary(min_size=1, max_size=3000))
def test_prepare_keeps_the_bytes_of_any_file(data):
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        (src / "doc.txt").write_bytes(data)
        prepare_dataset(str(src), Path(tmp) / "out", val_fraction=0.0, progress=False)
        ds = TokenDataset(Path(tmp) / "out")
        ids = ds.split("train").get(0, len(ds.split("train")))
        assert ids[0] == ds.eod_id
        assert bytes(np.asarray(ids[1:], dtype=np.uint8).tolist()) == data
