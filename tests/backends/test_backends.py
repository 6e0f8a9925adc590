"""Every backend computes the reference function, forward and backward, on fresh random inputs."""

import pytest
import torch

from siattn import scale_invariant_attention
from siattn.backends import LogitTransform, choose_backend, run_backend
from siattn.backends.chunked import chunked_attention
from siattn.backends.reference import reference_attention
from siattn.benchmarking.accuracy import QUANTITIES, output_and_gradients, relative_error

TRANSFORMS = [LogitTransform("none"), LogitTransform("scale-invariant", tau=10.0),
              LogitTransform("scale-invariant", tau=0.5, alpha=2.0, beta=3.0), LogitTransform("alibi")]
# (B, H, Hkv, Tq, Tk, q_offset, D): square, GQA, chunked prefill (q_offset > 0), decode, ragged lengths
CASES = [
    (2, 4, 4, 37, 37, 0, 16),
    (1, 6, 2, 53, 53, 0, 32),
    (1, 4, 1, 19, 70, 51, 16),
    (2, 4, 2, 1, 97, 96, 16),
    (1, 2, 1, 45, 45, 0, 8),
    (1, 3, 3, 30, 60, 100, 16),  # queries past the last key (q_offset + Tq > Tk)
]


def _inputs(b, h, hkv, tq, tk, d, dtype=torch.float32, grad=False):
    make = lambda *s: torch.randn(*s, dtype=dtype).requires_grad_(grad)  # noqa: E731
    return make(b, h, tq, d), make(b, hkv, tk, d), make(b, hkv, tk, d)


def _id(case):
    return "B{}H{}kv{}q{}k{}off{}D{}".format(*case)


FLOAT32_AGREEMENT = 1e-5
"""Largest error of a float32 backend, max|x − x₆₄| / max|x₆₄|, on these random inputs (about 84 ulp of the
largest value; the worst seen over 40 seeds × every case below is 1.1e-6 for chunked and 4e-7 for the reference).
Measured against max|x₆₄| rather than element by element: a gradient element that cancels to almost zero carries
the absolute rounding error of its large terms, which an elementwise rtol would misread."""


@pytest.mark.parametrize("transform", TRANSFORMS, ids=lambda t: f"{t.kind}-tau{t.tau}")
@pytest.mark.parametrize("case", CASES, ids=_id)
@pytest.mark.parametrize("causal", [True, False])
def test_chunked_matches_reference_forward_and_backward(transform, case, causal):
    b, h, hkv, tq, tk, off, d = case
    q, k, v = _inputs(b, h, hkv, tq, tk, d)
    grad_out = torch.randn(b, h, tq, d)
    kw = dict(transform=transform, q_offset=off, causal=causal, scale=d**-0.5)
    exact = output_and_gradients(lambda *x: reference_attention(*x, **kw), q.double(), k.double(), v.double(),
                                 grad_out.double())
    chunked = lambda *x: chunked_attention(*x, block_q=16, block_k=24, **kw)  # noqa: E731
    for name, fn in (("chunked", chunked), ("reference", lambda *x: reference_attention(*x, **kw))):
        got = output_and_gradients(fn, q, k, v, grad_out)
        for quantity in QUANTITIES:
            err = relative_error(got[quantity], exact[quantity])
            assert err <= FLOAT32_AGREEMENT, f"{name} {quantity}: error {err:.2e} against float64"


@pytest.mark.parametrize("transform", TRANSFORMS[:2] + TRANSFORMS[3:], ids=lambda t: t.kind)
def test_chunked_gradcheck_float64(transform):
    q, k, v = _inputs(1, 4, 2, 7, 11, 4, dtype=torch.float64, grad=True)
    fn = lambda q, k, v: chunked_attention(q, k, v, transform=transform, q_offset=4, causal=True,  # noqa: E731
                                           scale=0.5, block_q=3, block_k=4)
    assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-6, atol=1e-6)


def test_reference_gradcheck_float64():
    q, k, v = _inputs(1, 2, 1, 5, 5, 4, dtype=torch.float64, grad=True)
    fn = lambda q, k, v: reference_attention(q, k, v, transform=TRANSFORMS[1], q_offset=0,  # noqa: E731
                                             causal=True, scale=0.5)
    assert torch.autograd.gradcheck(fn, (q, k, v))


def test_reference_equals_textbook_formula():
    """Direct loop over query rows with the schedule written out (independent of the backend helpers)."""
    from siattn import schedule

    q, k, v = _inputs(1, 1, 1, 6, 9, 4, dtype=torch.float64)
    off = 3
    out = reference_attention(q, k, v, transform=TRANSFORMS[1], q_offset=off, causal=True, scale=0.5)
    for r in range(6):
        keys = torch.arange(0, min(9, off + r + 1))
        a, m = schedule((off + r - keys).double())
        logits = a * (0.5 * q[0, 0, r] @ k[0, 0, keys].T) + m
        expected = torch.softmax(logits, -1) @ v[0, 0, keys]
        torch.testing.assert_close(out[0, 0, r], expected)


@pytest.mark.parametrize("transform", [TRANSFORMS[0], TRANSFORMS[1], TRANSFORMS[3]], ids=lambda t: t.kind)
@pytest.mark.parametrize("case", [CASES[1], CASES[2]], ids=_id)
def test_flex_matches_reference_forward(transform, case):
    b, h, hkv, tq, tk, off, d = case
    q, k, v = _inputs(b, h, hkv, tq, tk, d)
    kw = dict(transform=transform, q_offset=off, causal=True, scale=d**-0.5)
    torch.testing.assert_close(run_backend(q, k, v, backend="flex", **kw),
                               reference_attention(q, k, v, **kw), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["chunked", "flex"])
@pytest.mark.parametrize("transform", [TRANSFORMS[0], TRANSFORMS[1], TRANSFORMS[3]], ids=lambda t: t.kind)
def test_cuda_backends_match_reference_with_gradients(backend, transform):
    q, k, v = (x.cuda() for x in _inputs(2, 6, 2, 300, 300, 64))
    for x in (q, k, v):
        x.requires_grad_(True)
    kw = dict(transform=transform, q_offset=0, causal=True, scale=0.125)
    ref = reference_attention(q, k, v, **kw)
    out = run_backend(q, k, v, backend=backend, **kw)
    torch.testing.assert_close(out, ref, rtol=2e-4, atol=2e-4)  # fp32 inputs; flex may use TF32-free fp32 dots
    g = torch.randn_like(ref)
    for a, b_ in zip(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g)):
        torch.testing.assert_close(a, b_, rtol=1e-3, atol=1e-3)


def _transposed_leaves(device, dtype):
    """Leaves (B, T, H, D) and their (B, H, T, D) transposed views, as a model's projections give them."""
    torch.manual_seed(0)
    leaves = [torch.randn(2, 300, n, 64, device=device).to(dtype).requires_grad_(True) for n in (6, 2, 2)]
    return leaves, [x.transpose(1, 2) for x in leaves]


def _check_transposed(backend, transform, device, dtype, tol):
    leaves, (q, k, v) = _transposed_leaves(device, dtype)
    kw = dict(transform=transform, q_offset=0, causal=True, scale=0.125)
    out = run_backend(q, k, v, backend=backend, **kw)
    g = torch.randn(out.shape, device=device)
    grads = torch.autograd.grad(out, leaves, g.to(dtype))
    ref_leaves = [x.detach().float().requires_grad_(True) for x in leaves]
    ref = reference_attention(*(x.transpose(1, 2) for x in ref_leaves), **kw)
    ref_grads = torch.autograd.grad(ref, ref_leaves, g)
    for name, a, r in zip(("out", "dq", "dk", "dv"), (out, *grads), (ref, *ref_grads), strict=True):
        err = ((a.float() - r).norm() / r.norm()).item()
        assert err < tol, f"{backend} {transform.kind}: {name} relative error {err:.2e}"


@pytest.mark.parametrize("transform", [TRANSFORMS[0], TRANSFORMS[1], TRANSFORMS[3]], ids=lambda t: t.kind)
def test_chunked_takes_transposed_views_as_a_model_passes_them(transform):
    _check_transposed("chunked", transform, "cpu", torch.float32, 1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["chunked", "flex", "triton"])
@pytest.mark.parametrize("transform", [TRANSFORMS[0], TRANSFORMS[1], TRANSFORMS[3]], ids=lambda t: t.kind)
def test_cuda_backends_take_transposed_bf16_views(backend, transform):
    """Regression for the Triton backward's layout bugs (delta read as contiguous, dV stored with dK's strides)."""
    _check_transposed(backend, transform, "cuda", torch.bfloat16, 1e-2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_use_float32_math(dtype):
    q, k, v = _inputs(1, 2, 2, 40, 40, 16, dtype=dtype)
    ref = reference_attention(q.float(), k.float(), v.float(), transform=TRANSFORMS[1], q_offset=0,
                              causal=True, scale=0.25)
    out = run_backend(q, k, v, transform=TRANSFORMS[1], scale=0.25, backend="chunked")
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-2)


def test_public_function_defaults():
    q, k, v = _inputs(1, 2, 1, 33, 33, 16)
    out = scale_invariant_attention(q, k, v)
    ref = reference_attention(q, k, v, transform=LogitTransform("scale-invariant"), q_offset=0, causal=True,
                              scale=0.25)
    torch.testing.assert_close(out, ref)


def test_first_query_attends_only_to_first_key():
    q, k, v = _inputs(1, 1, 1, 4, 4, 8)
    out = scale_invariant_attention(q, k, v, backend="chunked")
    torch.testing.assert_close(out[0, 0, 0], v[0, 0, 0])


def test_auto_picks_chunked_for_transformed_cpu_inputs():
    x = torch.empty(1, 2, 128, 16)
    for transform in (TRANSFORMS[1], TRANSFORMS[3]):
        assert choose_backend(x, x, x, transform, needs_grad=True) == "chunked"


@pytest.mark.parametrize(
    ("q", "k", "kwargs", "match"),
    [
        ((1, 4, 8, 16), (1, 3, 8, 16), {}, "multiple of key/value heads"),
        ((1, 4, 8), (1, 4, 8, 16), {}, "q must have shape"),
        ((1, 4, 8, 16), (1, 4, 8, 8), {}, "head_dim differ"),
        ((2, 4, 8, 16), (1, 4, 8, 16), {}, "batch sizes differ"),
        ((1, 4, 8, 16), (1, 4, 8, 16), {"q_offset": -1}, "q_offset"),
        ((1, 4, 8, 16), (1, 4, 8, 16), {"scale": -1.0}, "scale"),
        ((1, 4, 8, 16), (1, 4, 8, 16), {"backend": "cuda-magic"}, "backend must be one of"),
        ((1, 4, 8, 16), (1, 4, 8, 16), {"tau": 0.0}, "tau"),
        ((1, 4, 8, 16), (1, 4, 0, 16), {}, "at least one key"),
    ],
)
def test_bad_inputs_raise_clear_errors(q, k, kwargs, match):
    with pytest.raises(ValueError, match=match):
        scale_invariant_attention(torch.randn(*q), torch.randn(*k), torch.randn(*k), **kwargs)


def test_mixed_dtypes_rejected():
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match="one dtype"):
        scale_invariant_attention(q, q.double(), q)


def test_integer_inputs_rejected():
    q = torch.ones(1, 2, 4, 8, dtype=torch.int32)
    with pytest.raises(ValueError, match="dtype must be one of"):
        scale_invariant_attention(q, q, q)


def test_flex_refuses_cpu_backward_with_advice():
    q, k, v = _inputs(1, 2, 2, 8, 8, 16, grad=True)
    with pytest.raises(ValueError, match="chunked"):
        scale_invariant_attention(q, k, v, backend="flex")


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_sdpa_matches_reference_for_plain_logits(case):
    b, h, hkv, tq, tk, off, d = case
    q, k, v = _inputs(b, h, hkv, tq, tk, d, grad=True)
    kw = dict(transform=LogitTransform("none"), q_offset=off, causal=True, scale=d**-0.5)
    ref = reference_attention(q, k, v, **kw)
    out = run_backend(q, k, v, backend="sdpa", **kw)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(ref)
    for a, r in zip(torch.autograd.grad(out, (q, k, v), g), torch.autograd.grad(ref, (q, k, v), g)):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)


def test_sdpa_refuses_transforms():
    q = torch.randn(1, 2, 8, 16)
    with pytest.raises(ValueError, match="scale-invariant"):
        scale_invariant_attention(q, q, q, backend="sdpa")


def test_auto_uses_sdpa_for_plain_logits():
    x = torch.empty(1, 2, 64, 16)
    assert choose_backend(x, x, x, LogitTransform("none"), needs_grad=False) == "sdpa"


@pytest.mark.gpu
def test_flex_backward_after_several_forwards_like_a_multilayer_model():
    """Regression: the captured q_offset tensor must not be rewritten between forward and backward."""
    xs = [torch.randn(1, 4, 256, 64, device="cuda", requires_grad=True) for _ in range(3)]
    out = sum(run_backend(x, x, x, transform=TRANSFORMS[1], backend="flex").sum() for x in xs)
    out.backward()
    assert all(torch.isfinite(x.grad).all() for x in xs)
