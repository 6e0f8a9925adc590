"""Rotary frequencies agree with transformers' RoPE initialisation functions; rotations behave as rotations."""

import math

import pytest
import torch

from siattn.positional import (
    RotaryConfig,
    alibi_slopes,
    apply_rotary,
    logn_query_scale,
    ntk_theta,
    p_rope_inv_freq,
    rope_inv_freq,
    yarn_inv_freq,
)

transformers = pytest.importorskip("transformers")
from transformers import LlamaConfig  # noqa: E402
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding  # noqa: E402


def _config(head_dim, **rope):
    return LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, head_dim=head_dim,
                       max_position_embeddings=rope.pop("max_position_embeddings", 2048), rope_parameters=rope)


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("theta", [10_000.0, 500_000.0])
def test_rope_matches_transformers_default(head_dim, theta):
    hf = LlamaRotaryEmbedding(_config(head_dim, rope_type="default", rope_theta=theta)).inv_freq
    torch.testing.assert_close(rope_inv_freq(head_dim, theta), hf.float(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize(("train", "length"), [(512, 2048), (4096, 65536), (512, 512)])
def test_ntk_matches_transformers_dynamic(head_dim, train, length):
    cfg = _config(head_dim, rope_type="dynamic", rope_theta=10_000.0, factor=1.0, max_position_embeddings=train)
    hf, _ = ROPE_INIT_FUNCTIONS["dynamic"](cfg, "cpu", seq_len=length)
    mine = rope_inv_freq(head_dim, ntk_theta(10_000.0, head_dim, train, length))
    torch.testing.assert_close(mine, hf.float(), rtol=1e-6, atol=1e-6)


def test_ntk_scaling_is_the_papers_formula():
    assert ntk_theta(10_000.0, 128, 4096, 16384) == pytest.approx(10_000.0 * 4 ** (128 / 126))


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize(("train", "length"), [(512, 2048), (4096, 65536), (1024, 3000)])
def test_yarn_matches_transformers(head_dim, train, length):
    cfg = _config(head_dim, rope_type="yarn", rope_theta=10_000.0, factor=length / train,
                  original_max_position_embeddings=train)
    hf, hf_factor = ROPE_INIT_FUNCTIONS["yarn"](cfg, "cpu")
    mine, factor = yarn_inv_freq(head_dim, 10_000.0, train, length)
    torch.testing.assert_close(mine, hf.float(), rtol=1e-6, atol=1e-6)
    assert factor == pytest.approx(hf_factor, abs=1e-6)


def test_yarn_inside_training_length_is_plain_rope():
    inv, factor = yarn_inv_freq(64, 10_000.0, 512, 300)
    torch.testing.assert_close(inv, rope_inv_freq(64))
    assert factor == 1.0


@pytest.mark.parametrize("head_dim", [64, 128])
def test_p_rope_matches_definition(head_dim):
    inv = p_rope_inv_freq(head_dim, base=1024.0, fraction=0.5)
    n = head_dim // 4
    expected = torch.tensor([(1 / 1024) ** (k / (n - 1)) for k in range(n)] + [0.0] * (head_dim // 2 - n))
    torch.testing.assert_close(inv, expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("head_dim", [64, 128])
def test_p_rope_matches_transformers_proportional(head_dim):
    if "proportional" not in ROPE_INIT_FUNCTIONS:
        pytest.skip("transformers < 5.5 has no proportional RoPE")
    n = head_dim // 4
    cfg = _config(head_dim, rope_type="proportional", rope_theta=1024.0 ** (head_dim / (2 * (n - 1))),
                  partial_rotary_factor=0.5)
    hf, _ = ROPE_INIT_FUNCTIONS["proportional"](cfg, "cpu")
    torch.testing.assert_close(p_rope_inv_freq(head_dim), hf.float(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["rope", "p-rope", "ntk", "yarn"])
def test_rotary_scores_depend_on_relative_position_only(kind):
    cfg = RotaryConfig(kind=kind, head_dim=32, train_length=64)
    cos, sin = cfg.cos_sin(0, 200, context_length=200)
    rot = lambda x, i: apply_rotary(x.view(1, 1, 1, -1), cos[i : i + 1].double(), sin[i : i + 1].double())  # noqa: E731
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        q, k = (torch.randn(32, dtype=torch.float64, generator=gen) for _ in range(2))
        s1 = (rot(q, 50) * rot(k, 40)).sum()
        s2 = (rot(q, 150) * rot(k, 140)).sum()
        # the cos/sin tables are float32: a score may differ by their rounding (~1e-7) times |q|·|k|, which is
        # not small relative to a score near zero (a relative tolerance on s failed now and then)
        assert abs(s1.item() - s2.item()) <= 1e-6 * (q.norm() * k.norm()).item()
        s_far = (rot(q, 150) * rot(k, 40)).sum()  # another distance: the scores must not all coincide
        assert abs(s_far.item() - s1.item()) > 1e-3 or abs(s1.item()) < 1e-3


def test_p_rope_leaves_half_the_pairs_unrotated():
    cos, sin = RotaryConfig(kind="p-rope", head_dim=32).cos_sin(0, 100)
    assert torch.all(cos[:, 8:16] == 1) and torch.all(sin[:, 8:16] == 0)
    assert torch.all(cos[:, 24:] == 1) and torch.all(sin[:, 24:] == 0)


def test_rotation_preserves_norm():
    x = torch.randn(2, 3, 50, 64)
    cos, sin = RotaryConfig(kind="rope", head_dim=64).cos_sin(7, 50)
    torch.testing.assert_close(apply_rotary(x, cos, sin).norm(dim=-1), x.norm(dim=-1))


def test_yarn_scales_cos_and_sin_by_attention_factor():
    cos, sin = RotaryConfig(kind="yarn", head_dim=64, train_length=100).cos_sin(0, 400)
    torch.testing.assert_close(cos**2 + sin**2, torch.full_like(cos, (0.1 * math.log(4) + 1) ** 2))


def test_alibi_slopes_standard_values():
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)], dtype=torch.float64))
    expected6 = [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3]
    torch.testing.assert_close(alibi_slopes(6), torch.tensor(expected6, dtype=torch.float64))


def test_logn_scales_each_query_row_by_s_log_n():
    q = torch.ones(1, 2, 5, 4)
    s = torch.tensor([0.5, 2.0])
    out = logn_query_scale(q, s, q_offset=10)
    expected = torch.log(torch.arange(11, 16, dtype=torch.float32))
    torch.testing.assert_close(out[0, 0, :, 0], 0.5 * expected)
    torch.testing.assert_close(out[0, 1, :, 3], 2.0 * expected)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"kind": "rotary"}, "rotary kind"), ({"head_dim": 7}, "head_dim"), ({"kind": "p-rope", "p_rope_base": 0.5},
     "p_rope_base"), ({"kind": "p-rope", "p_rope_fraction": 1.5}, "p_rope_fraction"), ({"train_length": 0},
     "train_length")],
)
def test_bad_rotary_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RotaryConfig(**kwargs)
