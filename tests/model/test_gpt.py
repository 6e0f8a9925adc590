"""The GPT: presets at their real shapes, a training step with every method, KV-cache generation, losses."""

from __future__ import annotations

import math

import pytest
import torch

from siattn import METHODS
from siattn.model import GPT, GPTConfig, count_parameters, pad_vocab
from siattn.positional import logn_init, scaled_p_rope_base
from siattn.training import PRESETS, build_optimizer, resolve_config

# tiny shapes that keep a preset's optimiser settings, schedule and method but run in milliseconds
TINY = dict(n_layer=1, n_embd=64, n_head=2, head_dim=32, seq_len=32, vocab_size=300)


def randomise(model: GPT, std: float = 0.2) -> GPT:
    """Zero-initialised projections and head make every method look alike; give them random weights."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


@pytest.mark.parametrize(("preset", "params"), [("paper-162m", 162.2e6), ("paper-304m", 304.3e6)])
def test_paper_presets_have_the_papers_shapes(preset, params):
    cfg = PRESETS[preset]
    assert count_parameters(cfg.model) == pytest.approx(params, rel=1e-3)
    with torch.device("meta"):
        model = GPT(cfg.model)
    width = cfg.model.n_embd
    block = model.transformer.h[0]
    assert block.attn.c_q.weight.shape == (cfg.model.n_head * 128, width)
    assert block.mlp.c_fc.weight.shape == (4 * width, width)
    assert model.transformer.wte.weight.shape == (50_304, width) == model.lm_head.weight.shape
    assert model.lm_head.weight is not model.transformer.wte.weight  # untied
    assert cfg.seq_len == cfg.model.train_length == 4096 and cfg.model.p_rope_base == 1024


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_scale_the_p_rope_base_with_the_training_length(preset):
    cfg = PRESETS[preset]
    assert cfg.seq_len >= 512
    assert cfg.model.train_length == cfg.seq_len
    assert cfg.model.p_rope_base == scaled_p_rope_base(cfg.seq_len) == 1024 * cfg.seq_len / 4096
    assert cfg.model.padded_vocab_size % 64 == 0


def test_overriding_seq_len_moves_train_length_and_p_rope_base():
    cfg = resolve_config("cpu-tiny", seq_len=1024)
    assert cfg.model.train_length == 1024 and cfg.model.p_rope_base == 256
    assert resolve_config("cpu-tiny", seq_len=1024, p_rope_base=50.0).model.p_rope_base == 50.0


def test_unknown_override_and_method_are_refused():
    with pytest.raises(ValueError, match="unknown config fields"):
        resolve_config("cpu-tiny", n_layers=3)
    with pytest.raises(ValueError, match="method must be one of"):
        resolve_config("cpu-tiny", method="rope2")


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_preset_takes_a_training_step_with_every_method(preset, method):
    cfg = resolve_config(preset, method=method, **TINY)
    model = GPT(cfg.model)
    opt = build_optimizer(model, cfg)
    x = torch.randint(0, cfg.model.vocab_size, (2, cfg.seq_len + 1))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = []
    for _ in range(3):  # zero-initialised head and output projections: gradients reach everything by step 3
        _, loss = model(x[:, :-1], x[:, 1:])
        losses.append(loss.item())
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert losses[0] == pytest.approx(math.log(cfg.model.padded_vocab_size), rel=1e-4)  # zero-init head
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
    assert unchanged == []


def test_logn_scales_are_one_parameter_per_head_per_layer_at_logn_init():
    cfg = resolve_config("cpu-tiny", method="logn-p-rope")
    model = GPT(cfg.model)
    scales = [b.attn.logn_scale for b in model.transformer.h]
    assert all(isinstance(s, torch.nn.Parameter) and s.shape == (cfg.model.n_head,) for s in scales)
    assert torch.allclose(scales[0], torch.full((2,), logn_init(512)))
    assert GPT(resolve_config("cpu-tiny", method="rope").model).transformer.h[0].attn.logn_scale is None


def test_loss_is_mean_nats_per_token_and_ignores_minus_one():
    model = randomise(GPT(resolve_config("cpu-tiny", **TINY).model))
    x = torch.randint(0, 257, (2, 17))
    logits, per_token = model(x[:, :-1], x[:, 1:], return_per_token_loss=True)
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), x[:, 1:].reshape(-1))
    assert per_token.shape == (2, 16)
    assert torch.allclose(per_token.mean(), expected, atol=1e-5)
    y = x[:, 1:].clone()
    y[:, :8] = -1
    _, loss = model(x[:, :-1], y)
    assert torch.allclose(loss, per_token[:, 8:].mean(), atol=1e-5)


@pytest.mark.parametrize("method", ["si-p-rope", "logn-p-rope", "alibi", "rope-ntk", "yarn", "si-nope", "rope"])
def test_kv_cache_generation_gives_the_logits_of_a_full_forward(method):
    # training length 8, generation to 24: NTK/YaRN rescale, LogN and the transform see positions > train length
    cfg = GPTConfig(vocab_size=50, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, head_dim=16, method=method,
                    train_length=8, p_rope_base=4.0)
    model = randomise(GPT(cfg)).eval()
    prompt = torch.randint(0, 50, (2, 9))
    out, logits = model.generate(prompt, 15, temperature=0, return_logits=True)
    assert out.shape == (2, 24) and logits.shape == (2, 15, 50)
    full, _ = model(out[:, :-1], context_length=24)  # NTK/YaRN adapt to the whole generation
    torch.testing.assert_close(logits, full[:, 8:, :50], atol=2e-5, rtol=1e-5)
    assert torch.equal(out[:, 9:], full[:, 8:, :50].argmax(-1))  # greedy


def test_ntk_logits_depend_on_the_context_length():
    cfg = GPTConfig(vocab_size=50, n_layer=1, n_head=2, n_embd=32, head_dim=16, method="rope-ntk", train_length=8)
    model = randomise(GPT(cfg)).eval()
    x = torch.randint(0, 50, (1, 16))
    a, _ = model(x)
    b, _ = model(x, context_length=64)
    assert not torch.allclose(a, b)


def test_sampling_respects_top_k_seed_and_stops_at_eod():
    model = randomise(GPT(GPTConfig(vocab_size=50, n_layer=1, n_head=2, n_embd=32, head_dim=16))).eval()
    prompt = torch.zeros(3, 4, dtype=torch.long)
    a = model.generate(prompt, 10, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(1))
    greedy = model.generate(prompt, 10, temperature=0)
    assert torch.equal(a, greedy)  # top-1 sampling is greedy
    s1 = model.generate(prompt, 10, generator=torch.Generator().manual_seed(3))
    s2 = model.generate(prompt, 10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(s1, s2) and int(s1.max()) < 50  # padded vocab rows are never sampled
    eod = int(greedy[0, 4])
    stopped = model.generate(prompt, 10, temperature=0, eod_id=eod)
    assert stopped.shape[1] == 5


def test_vocab_is_padded_to_a_multiple_of_64():
    assert pad_vocab(50_257) == 50_304 and pad_vocab(257) == 320 and pad_vocab(8192) == 8192
    model = GPT(GPTConfig(vocab_size=257, n_layer=1, n_head=2, n_embd=32, head_dim=16))
    assert model.lm_head.weight.shape[0] == 320


def test_config_round_trips_through_a_dict():
    cfg = resolve_config("gpu-small", method="alibi", n_kv_head=2)
    again = type(cfg).from_dict(cfg.to_dict())
    assert again == cfg
    with pytest.raises(ValueError, match="unknown GPTConfig fields"):
        GPTConfig.from_dict({**cfg.model.to_dict(), "foo": 1})
