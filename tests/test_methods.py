import pytest
import torch

import siattn
from siattn import METHODS, attention, get_method, scale_invariant_attention
from siattn.positional import apply_rotary, logn_init

NAMES = ["rope", "p-rope", "nope", "rope-ntk", "yarn", "logn-rope", "logn-p-rope", "logn-ntk", "alibi",
         "si-p-rope", "si-rope", "si-nope"]


def test_registry_has_the_twelve_methods():
    assert sorted(METHODS) == sorted(NAMES)


def test_unknown_method_lists_the_names():
    with pytest.raises(ValueError, match="si-p-rope"):
        get_method("si-prope")


def _run(method_name, length, train_length, head_dim=32, heads=4):
    method = get_method(method_name)
    q, k, v = (torch.randn(1, heads, length, head_dim) for _ in range(3))
    rotary = method.rotary_config(head_dim, train_length, p_rope_base=1024.0 * train_length / 4096)
    if rotary is not None:
        cos, sin = rotary.cos_sin(0, length)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    s = torch.full((heads,), logn_init(train_length)) if method.uses_logn else None
    return attention(q, k, v, method=method, logn_scale=s)


@pytest.mark.parametrize("name", NAMES)
def test_every_method_is_finite_at_16x_its_configured_length(name):
    out = _run(name, length=16 * 64, train_length=64)
    assert out.shape == (1, 4, 1024, 32)
    assert torch.isfinite(out).all()


def test_si_method_equals_scale_invariant_attention():
    q, k, v = (torch.randn(2, 4, 50, 16) for _ in range(3))
    torch.testing.assert_close(attention(q, k, v, method="si-nope", tau=3.0),
                               scale_invariant_attention(q, k, v, tau=3.0))


def test_logn_methods_need_their_scale():
    q = torch.randn(1, 2, 8, 16)
    with pytest.raises(ValueError, match="logn_scale"):
        attention(q, q, q, method="logn-rope")


def test_logn_at_training_length_init_is_plain_attention_at_that_length():
    q, k, v = (torch.randn(1, 2, 64, 16) for _ in range(3))
    s = torch.full((2,), logn_init(64))
    out = attention(q, k, v, method="logn-p-rope", logn_scale=s)
    plain = attention(q, k, v, method="p-rope")
    torch.testing.assert_close(out[:, :, -1], plain[:, :, -1], rtol=1e-5, atol=1e-5)  # n = 64 at the last row
    assert not torch.allclose(out[:, :, 10], plain[:, :, 10])


def test_alibi_method_biases_towards_recent_keys():
    q = torch.zeros(1, 8, 40, 16)
    v = torch.arange(40.0).view(1, 1, 40, 1).expand(1, 8, 40, 16).contiguous()
    out = attention(q, q, v, method="alibi")
    # with equal scores, heads with steeper slopes average closer to the query's own position
    last = out[0, :, -1, 0]
    assert torch.all(last[:-1] > last[1:])


def test_register_method_adds_one_entry():
    m = siattn.Method("si-alibi-test", None, "scale-invariant", "test")
    siattn.register_method(m)
    try:
        assert get_method("si-alibi-test") is m
    finally:
        METHODS.pop("si-alibi-test")
