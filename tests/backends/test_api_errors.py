"""The attention API refuses what it cannot compute: second derivatives of the chunked backend, empty or
mismatched shapes (one-line ValueErrors naming the argument)."""

import pytest
import torch

from siattn import attention, scale_invariant_attention


def _qkv(b=1, h=2, hkv=2, tq=8, tk=8, d=16, dtype=torch.float64, grad=True):
    make = lambda *s: torch.randn(*s, dtype=dtype).requires_grad_(grad)  # noqa: E731
    return make(b, h, tq, d), make(b, hkv, tk, d), make(b, hkv, tk, d)


def test_chunked_double_backward_raises_instead_of_returning_zeros():
    q, k, v = _qkv()
    out = scale_invariant_attention(q, k, v, backend="chunked")
    with pytest.raises(RuntimeError, match=r"second derivative.*backend='reference'"):
        (g,) = torch.autograd.grad(out.square().sum(), q, create_graph=True)
        torch.autograd.grad(g.square().sum(), (q, k, v), allow_unused=True)


def test_reference_double_backward_works():
    q, k, v = _qkv()
    out = scale_invariant_attention(q, k, v, backend="reference")
    (g,) = torch.autograd.grad(out.square().sum(), q, create_graph=True)
    second = torch.autograd.grad(g.square().sum(), (q, k, v))
    assert all(s is not None and s.abs().sum() > 0 for s in second)


def test_chunked_first_order_gradient_still_works():
    q, k, v = _qkv()
    ref = torch.autograd.grad(scale_invariant_attention(q, k, v, backend="reference").sum(), (q, k, v))
    got = torch.autograd.grad(scale_invariant_attention(q, k, v, backend="chunked").sum(), (q, k, v))
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r)


@pytest.mark.parametrize("fn", [scale_invariant_attention, attention], ids=["scale_invariant_attention",
                                                                            "attention"])
@pytest.mark.parametrize("backend", ["auto", "reference", "chunked"])
@pytest.mark.parametrize(("shapes", "match"), [
    (((1, 2, 8, 0), (1, 2, 8, 0), (1, 2, 8, 0)), "head_dim must be >= 1"),
    (((1, 2, 8), (1, 2, 8, 16), (1, 2, 8, 16)), "q must have shape"),
    (((1, 2, 8, 16), (1, 2, 16), (1, 2, 8, 16)), "k must have shape"),
    (((1, 2, 8, 16), (1, 2, 8, 8), (1, 2, 8, 16)), "head_dim differ"),
    (((1, 3, 8, 16), (1, 2, 8, 16), (1, 2, 8, 16)), "multiple"),
    (((2, 2, 8, 16), (1, 2, 8, 16), (1, 2, 8, 16)), "batch"),
    (((1, 2, 8, 16), (1, 2, 8, 16), (1, 2, 9, 16)), "k and v must share"),
    (((0, 2, 8, 16), (0, 2, 8, 16), (0, 2, 8, 16)), "batch must be >= 1"),
    (((1, 0, 8, 16), (1, 0, 8, 16), (1, 0, 8, 16)), "heads"),
])
def test_bad_shapes_raise_one_line_value_error(fn, backend, shapes, match):
    q, k, v = (torch.randn(*s) for s in shapes)
    with pytest.raises(ValueError, match=match) as info:
        fn(q, k, v, backend=backend)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"tau": 0.0}, "tau"), ({"tau": -1.0}, "tau"), ({"tau": float("nan")}, "tau"),
    ({"q_offset": -1}, "q_offset"), ({"scale": float("inf")}, "scale"),
])
def test_bad_options_raise_value_error_naming_them(kwargs, match):
    q, k, v = _qkv(grad=False)
    with pytest.raises(ValueError, match=match):
        scale_invariant_attention(q, k, v, **kwargs)
