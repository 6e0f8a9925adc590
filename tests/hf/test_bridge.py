"""The transformers bridge (siattn.hf): tiny random Llama models built from configs, never the hub."""

import inspect
import math
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")
hf = pytest.importorskip("siattn.hf")

from hf_models import HEAD_DIM, HEADS, KV_HEADS, MAX_POS, tiny_llama, tokens  # noqa: E402
from transformers import AttentionInterface, AutoModelForCausalLM, DynamicCache  # noqa: E402

from siattn.backends import run_backend  # noqa: E402
from siattn.backends.transforms import LogitTransform  # noqa: E402
from siattn.hf import attention as hfa  # noqa: E402
from siattn.positional import rope  # noqa: E402


# ---------------------------------------------------------------- a hand-written forward with the schedule spelled out
def si_logits(tau):
    def fn(scores, t):  # a_t = sqrt(2 log(1 + t/τ) + 1), m_t = −2 log(1 + t/τ), t = i − j
        log_term = torch.log1p(t / tau)
        return torch.sqrt(2 * log_term + 1) * scores - 2 * log_term
    return fn


def alibi_logits(scores, t):
    slopes = torch.tensor([2.0 ** (-8 * (h + 1) / HEADS) for h in range(HEADS)]).view(1, HEADS, 1, 1)
    return scores - slopes * t


def plain_logits(scores, t):
    return scores


def manual_forward(model, ids, inv_freq, logit_fn):
    """Llama's forward written out: RMSNorm, rotary with ``inv_freq`` (None: none), the logit function on
    scores S = q·k/sqrt(d) and t = i − j, causal softmax, o_proj, MLP."""
    inner = model.model
    batch, length = ids.shape
    x = inner.embed_tokens(ids)
    pos = torch.arange(length, dtype=torch.float64)
    if inv_freq is None:
        cos, sin = torch.ones(length, HEAD_DIM), torch.zeros(length, HEAD_DIM)
    else:
        angles = pos[:, None] * inv_freq.double()[None, :]
        angles = torch.cat((angles, angles), dim=-1)
        cos, sin = angles.cos().float(), angles.sin().float()
    i, j = torch.arange(length)[:, None], torch.arange(length)[None, :]
    t = (i - j).clamp(min=0).float()

    def rotate(v):
        v1, v2 = v[..., : HEAD_DIM // 2], v[..., HEAD_DIM // 2:]
        return v * cos + torch.cat((-v2, v1), dim=-1) * sin

    for layer in inner.layers:
        attn, h = layer.self_attn, layer.input_layernorm(x)
        q = rotate(attn.q_proj(h).view(batch, length, HEADS, HEAD_DIM).transpose(1, 2))
        k = rotate(attn.k_proj(h).view(batch, length, KV_HEADS, HEAD_DIM).transpose(1, 2))
        v = attn.v_proj(h).view(batch, length, KV_HEADS, HEAD_DIM).transpose(1, 2)
        k, v = (z.repeat_interleave(HEADS // KV_HEADS, dim=1) for z in (k, v))
        logits = logit_fn(q @ k.transpose(-1, -2) / math.sqrt(HEAD_DIM), t).masked_fill(j > i, float("-inf"))
        out = (torch.softmax(logits, dim=-1) @ v).transpose(1, 2).reshape(batch, length, HEADS * HEAD_DIM)
        x = x + attn.o_proj(out)
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return model.lm_head(inner.norm(x))


# where transformers has the "proportional" rope type, p-RoPE is stored as it (plain transformers then loads it)
STORED_P_ROPE = "proportional" if "proportional" in transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS else "p_rope"
P_ROPE_64 = torch.tensor([64.0 ** (-k / 3) for k in range(4)] + [0.0] * 4)  # base 1024·256/4096, 4 of 8 pairs
ROPE_10K = torch.tensor([10_000.0 ** (-2 * i / HEAD_DIM) for i in range(HEAD_DIM // 2)])


@pytest.mark.parametrize(("method", "tau", "inv_freq", "logit_fn"), [
    ("si-p-rope", 10.0, P_ROPE_64, si_logits(10.0)),
    ("si-rope", 3.0, ROPE_10K, si_logits(3.0)),
    ("si-nope", 10.0, None, si_logits(10.0)),
    ("p-rope", 10.0, P_ROPE_64, plain_logits),
    ("alibi", 10.0, None, alibi_logits),
])
def test_converted_logits_equal_the_written_out_forward(method, tau, inv_freq, logit_fn):
    model = tiny_llama()
    ids = tokens(2, 24)
    with torch.no_grad():
        before = model(ids).logits
        hf.convert(model, method=method, tau=tau)
        after = model(ids).logits
        expected = manual_forward(model, ids, inv_freq, logit_fn)
    torch.testing.assert_close(after, expected, atol=2e-5, rtol=1e-4)
    if method != "si-rope" or tau != 10.0:
        assert (after - before).abs().max() > 1e-3  # the conversion changed the model


def test_p_rope_type_gives_siattn_frequencies():
    model = hf.convert(tiny_llama(), method="si-p-rope", p_rope_fraction=0.5)
    params = model.config.rope_parameters if hasattr(model.config, "rope_parameters") else model.config.rope_scaling
    assert params["rope_type"] == STORED_P_ROPE and hf.rope.current_rope_type(model.config) == "p_rope"
    assert params["p_rope_base"] == pytest.approx(1024 * MAX_POS / 4096)
    expected = rope.p_rope_inv_freq(HEAD_DIM, 1024 * MAX_POS / 4096, 0.5)
    inv_freq, factor = transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS["p_rope"](model.config)
    assert factor == 1.0
    torch.testing.assert_close(inv_freq, expected, atol=0, rtol=0)
    torch.testing.assert_close(model.model.rotary_emb.inv_freq, expected, atol=0, rtol=0)
    assert model.config.siattn_method == "si-p-rope" and model.config.siattn_tau == 10.0
    assert model.config._attn_implementation == "siattn"


def test_register_is_idempotent_and_refuses_taken_names():
    assert hf.register() == "siattn"
    assert hf.register() == "siattn"
    assert hf.register("siattn_second") == "siattn_second"
    with pytest.raises(ValueError, match="already registered"):
        hf.register("sdpa")


# --------------------------------------------------------------------------------------------- decoding and masks
def greedy_by_full_forwards(model, ids, steps):
    seq, step_logits = ids, []
    with torch.no_grad():
        for _ in range(steps):
            last = model(seq).logits[:, -1]
            step_logits.append(last)
            seq = torch.cat((seq, last.argmax(-1, keepdim=True)), dim=1)
    return seq, step_logits


def test_cached_greedy_generation_matches_full_forwards():
    model = hf.convert(tiny_llama(), method="si-p-rope")
    ids = tokens(1, 10)
    out = model.generate(ids, max_new_tokens=8, do_sample=False, output_logits=True, return_dict_in_generate=True)
    seq, step_logits = greedy_by_full_forwards(model, ids, 8)
    assert torch.equal(out.sequences, seq)
    for cached, full in zip(out.logits, step_logits):
        torch.testing.assert_close(cached, full, atol=1e-4, rtol=1e-4)


def test_chunked_prefill_with_cache_uses_slot_offsets():
    model = hf.convert(tiny_llama(), method="si-p-rope")
    ids = tokens(1, 14)
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    with torch.no_grad():
        full = model(ids).logits
        cache = DynamicCache()
        model(ids[:, :9], **{cache_kw: cache}, use_cache=True)
        chunk = model(ids[:, 9:], **{cache_kw: cache}, use_cache=True).logits  # q = 5, kv = 14: a 4D mask
    torch.testing.assert_close(chunk, full[:, 9:], atol=1e-4, rtol=1e-4)


def test_static_cache_generation_matches_dynamic():
    model = hf.convert(tiny_llama(), method="si-p-rope")
    ids = tokens(1, 10)
    kw = {"max_new_tokens": 6, "do_sample": False, "output_logits": True, "return_dict_in_generate": True}
    dynamic = model.generate(ids, **kw)
    static = model.generate(ids, cache_implementation="static", **kw)  # kv = max_cache_len: offsets from the mask
    assert torch.equal(dynamic.sequences, static.sequences)
    for a, b in zip(dynamic.logits, static.logits):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_left_padded_batch_generation_matches_single_rows():
    model = hf.convert(tiny_llama(), method="si-p-rope")
    long, short = tokens(1, 12, seed=2), tokens(1, 7, seed=3)
    batch = torch.cat((long, torch.cat((torch.zeros(1, 5, dtype=torch.long), short), dim=1)))
    mask = torch.ones_like(batch)
    mask[1, :5] = 0
    out = model.generate(batch, attention_mask=mask, max_new_tokens=6, do_sample=False, output_logits=True,
                         return_dict_in_generate=True)
    assert all(torch.isfinite(step).all() for step in out.logits)
    for row, prompt in ((0, long), (1, short)):
        single = model.generate(prompt, max_new_tokens=6, do_sample=False, output_logits=True,
                                return_dict_in_generate=True)
        assert torch.equal(out.sequences[row, -6:], single.sequences[0, -6:])
        for batched, alone in zip(out.logits, single.logits):
            torch.testing.assert_close(batched[row], alone[0], atol=1e-4, rtol=1e-4)


def test_decoding_reads_each_mask_once_not_in_every_layer(monkeypatch):
    model = hf.convert(tiny_llama(), method="si-p-rope")
    layers = model.config.num_hidden_layers
    calls = []
    real = hfa.masked_terms
    monkeypatch.setattr(hfa, "masked_terms", lambda *a, **k: calls.append(1) or real(*a, **k))
    batch = torch.cat((tokens(1, 12, seed=2), torch.cat((torch.zeros(1, 5, dtype=torch.long), tokens(1, 7)), 1)))
    mask = torch.ones_like(batch)
    mask[1, :5] = 0
    model.generate(batch, attention_mask=mask, max_new_tokens=6, do_sample=False)
    # the prefill (12 query rows, at most SMALL_QUERY) and 5 decoding steps: one mask each, read once for all layers
    assert layers > 1 and len(calls) == 6


def test_cached_decoding_terms_follow_a_mask_changed_in_place():
    model = hf.convert(tiny_llama(), method="si-p-rope")
    attn = model.model.layers[0].self_attn
    q, k, v = torch.randn(2, 4, 1, 16), torch.randn(2, 2, 9, 16), torch.randn(2, 2, 9, 16)
    mask = torch.ones(2, 1, 1, 9, dtype=torch.bool)
    transform = LogitTransform("scale-invariant", tau=10.0)
    first, _ = hf.attention_forward(attn, q, k, v, mask, scaling=0.25)
    torch.testing.assert_close(first.transpose(1, 2), hfa.masked_attention(q, k, v, mask, transform, 8, 0.25, 0.0),
                               atol=0, rtol=0)
    mask[1, ..., :4] = False  # left padding written into the same tensor
    second, _ = hf.attention_forward(attn, q, k, v, mask, scaling=0.25)
    torch.testing.assert_close(second.transpose(1, 2), hfa.masked_attention(q, k, v, mask, transform, 8, 0.25, 0.0),
                               atol=0, rtol=0)
    assert (second[1] - first[1]).abs().max() > 1e-3 and torch.equal(second[0], first[0])


def test_masked_path_equals_backend_and_zeroes_fully_masked_rows():
    q, k, v = torch.randn(2, 4, 5, 16), torch.randn(2, 2, 9, 16), torch.randn(2, 2, 9, 16)
    transform = LogitTransform("scale-invariant", tau=10.0)
    causal = hfa.causal_mask(4, 5, 9, q.device)[None, None]
    masked = hfa.masked_attention(q, k, v, causal.expand(2, 1, 5, 9), transform, 4, 0.25, 0.0)
    expected = run_backend(q, k, v, transform=transform, q_offset=4, causal=True, scale=0.25, backend="reference")
    torch.testing.assert_close(masked, expected, atol=1e-5, rtol=1e-5)
    blocked = causal.expand(2, 1, 5, 9).clone()
    blocked[1, :, 2] = False
    out = hfa.masked_attention(q, k, v, blocked, transform, 4, 0.25, 0.0)
    assert torch.isfinite(out).all() and (out[1, :, 2] == 0).all()
    torch.testing.assert_close(out[0], expected[0], atol=1e-5, rtol=1e-5)


def test_left_padding_path_equals_masked_path():
    q, k, v = torch.randn(3, 4, 6, 16), torch.randn(3, 2, 6, 16), torch.randn(3, 2, 6, 16)
    transform = LogitTransform("scale-invariant", tau=10.0)
    allowed = hfa.causal_mask(0, 6, 6, q.device)[None, None].repeat(3, 1, 1, 1)
    allowed[1, ..., :2] = False  # two padded slots: query rows 0 and 1 see nothing
    allowed[2, ..., :5] = False
    pads = hfa.left_padding(allowed, 0)
    assert pads == [0, 2, 5]
    fast = hfa.left_padded_attention(q, k, v, pads, transform, 0, 0.25)
    torch.testing.assert_close(fast, hfa.masked_attention(q, k, v, allowed, transform, 0, 0.25, 0.0),
                               atol=1e-5, rtol=1e-5)
    assert (fast[1, :, :2] == 0).all()
    right = hfa.causal_mask(0, 6, 6, q.device)[None, None].repeat(3, 1, 1, 1)
    right[1, ..., 4:] = False  # right padding is not left padding
    assert hfa.left_padding(right, 0) is None


def test_right_padded_forward_matches_single_rows():
    model = hf.convert(tiny_llama(), method="si-p-rope")
    long, short = tokens(1, 12, seed=2), tokens(1, 7, seed=3)
    batch = torch.cat((long, torch.cat((short, torch.zeros(1, 5, dtype=torch.long)), dim=1)))
    mask = torch.ones_like(batch)
    mask[1, 7:] = 0
    with torch.no_grad():
        padded = model(batch, attention_mask=mask).logits
        torch.testing.assert_close(padded[0], model(long).logits[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(padded[1, :7], model(short).logits[0], atol=1e-4, rtol=1e-4)


def test_additive_float_mask_reads_as_boolean():
    model = hf.convert(tiny_llama(), method="si-p-rope")
    attn = model.model.layers[0].self_attn
    q, k, v = torch.randn(2, 4, 3, 16), torch.randn(2, 2, 8, 16), torch.randn(2, 2, 8, 16)
    allowed = hfa.causal_mask(5, 3, 8, q.device)[None, None].expand(2, 1, 3, 8).clone()
    allowed[1, :, :, :2] = False
    additive = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    from_bool, _ = hf.attention_forward(attn, q, k, v, allowed, scaling=0.25)
    from_float, _ = hf.attention_forward(attn, q, k, v, additive, scaling=0.25)
    assert from_bool.shape == (2, 3, 4, 16)
    torch.testing.assert_close(from_float, from_bool, atol=0, rtol=0)
    plain, _ = hf.attention_forward(attn, q, k, v, allowed[:1].expand(2, 1, 3, 8), scaling=0.25)
    assert (plain[1] - from_bool[1]).abs().max() > 1e-3  # the padded row really is masked


def test_query_offset_is_read_from_the_mask():
    mask = hfa.causal_mask(6, 3, 12, torch.device("cpu"))[None, None].expand(2, 1, 3, 12).clone()
    mask[0, :, :, :4] = False  # left padding in row 0
    assert hfa.query_offset(mask) == 6
    assert hfa.query_offset(torch.zeros(1, 1, 3, 5, dtype=torch.bool)) is None


def test_training_backward_and_attention_dropout():
    model = hf.convert(tiny_llama(), method="si-p-rope").train()
    ids = tokens(2, 16)
    loss = model(ids, labels=ids).loss
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.5
    with torch.no_grad():
        first, second = model(ids).logits, model(ids).logits
    assert torch.isfinite(first).all() and not torch.equal(first, second)


def test_training_under_autocast_takes_q_k_v_in_the_autocast_dtype():
    """Under autocast (hf-train's mixed precision) the rotary embedding's float32 cos/sin lift q and k to float32
    while v stays bfloat16: the bridge casts them as SDPA does, and the loss stays close to float32's."""
    model = hf.convert(tiny_llama(), method="si-p-rope").train()
    ids = tokens(2, 24)
    full = model(ids, labels=ids).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model(ids, labels=ids).loss
    mixed.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert abs(float(mixed.detach()) - float(full.detach())) < 0.05 * float(full.detach())


# ---------------------------------------------------------------------------------------------------- round trip
def test_save_and_reload_keeps_method_tau_and_p_rope(tmp_path):
    model = hf.convert(tiny_llama(), method="si-p-rope", tau=4.0, p_rope_base=50.0)
    ids = tokens(2, 20)
    with torch.no_grad():
        expected = model(ids).logits
    model.save_pretrained(tmp_path)
    hf.register()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="siattn").eval()
    config = reloaded.config
    params = config.rope_parameters if hasattr(config, "rope_parameters") else config.rope_scaling
    assert (config.siattn_method, config.siattn_tau, config._attn_implementation) == ("si-p-rope", 4.0, "siattn")
    assert params["rope_type"] == STORED_P_ROPE and params["p_rope_base"] == 50.0
    torch.testing.assert_close(reloaded.model.rotary_emb.inv_freq, rope.p_rope_inv_freq(HEAD_DIM, 50.0))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, expected, atol=1e-6, rtol=1e-6)


def test_reload_in_a_fresh_process(tmp_path):
    model = hf.convert(tiny_llama(), method="si-p-rope", tau=4.0)
    ids = tokens(1, 12)
    with torch.no_grad():
        expected = model(ids).logits
    model.save_pretrained(tmp_path / "model")
    torch.save(ids, tmp_path / "ids.pt")
    script = (
        "import sys, torch, siattn.hf\n"
        "from transformers import AutoModelForCausalLM\n"
        "siattn.hf.register()\n"
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1] + '/model', attn_implementation='siattn').eval()\n"
        "with torch.no_grad():\n"
        "    torch.save(m(torch.load(sys.argv[1] + '/ids.pt')).logits, sys.argv[1] + '/logits.pt')\n"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, capture_output=True, timeout=120)
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected, atol=1e-6, rtol=1e-6)


def test_import_siattn_does_not_import_transformers():
    code = "import sys, siattn; assert 'transformers' not in sys.modules, 'siattn imported transformers'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# -------------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("method", ["logn-p-rope", "logn-rope", "logn-ntk"])
def test_logn_methods_are_refused(method):
    with pytest.raises(ValueError, match="LogN"):
        hf.convert(tiny_llama(), method=method)


@pytest.mark.parametrize("method", ["rope-ntk", "yarn"])
def test_plain_rope_extensions_point_to_transformers(method):
    with pytest.raises(ValueError, match="rope_type"):
        hf.convert(tiny_llama(), method=method)


def test_logn_in_a_saved_config_is_refused_at_run_time():
    model = hf.convert(tiny_llama(), method="si-rope")
    model.config.siattn_method = "logn-rope"
    with pytest.raises(ValueError, match="LogN"):
        model(tokens(1, 4))


def test_unconverted_model_is_told_to_convert():
    model = tiny_llama()
    hf.register()
    hf._set_attn_implementation(model, model.config, "siattn")  # si-p-rope by default, but the rotary is RoPE
    with pytest.raises(ValueError, match="convert"):
        model(tokens(1, 4))


def test_attention_function_without_its_mask_registration_is_refused():
    model = hf.convert(tiny_llama(), method="si-p-rope")
    AttentionInterface.register("siattn_no_mask", hf.attention_forward)
    try:
        hf._set_attn_implementation(model, model.config, "siattn_no_mask")  # any transformers version
        with pytest.raises(RuntimeError, match=r"siattn\.hf\.register"):
            model(tokens(1, 4))
    finally:
        AttentionInterface._global_mapping.pop("siattn_no_mask", None)


def test_bad_arguments_fail_before_the_model_changes():
    model = tiny_llama()
    with pytest.raises(ValueError, match="tau"):
        hf.convert(model, method="si-p-rope", tau=0.0)
    with pytest.raises(ValueError, match="p_rope_fraction"):
        hf.convert(model, method="si-p-rope", p_rope_fraction=0.1)
    with pytest.raises(ValueError, match="method must be one of"):
        hf.convert(model, method="nonsense")
    with pytest.raises(ValueError, match="backend must be one of"):
        hf.convert(model, method="si-p-rope", backend="fastest")
    assert not hasattr(model.config, "siattn_method")
    torch.testing.assert_close(model.model.rotary_emb.inv_freq, ROPE_10K)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_prefill_runs_row_windows_without_materialising(side, monkeypatch):
    model = hf.convert(tiny_llama(), method="si-p-rope")
    long, short = tokens(1, 30, seed=2), tokens(1, 21, seed=3)  # more query rows than SMALL_QUERY
    pad = torch.zeros(1, 9, dtype=torch.long)
    batch = torch.cat((long, torch.cat((pad, short) if side == "left" else (short, pad), dim=1)))
    mask = torch.ones_like(batch)
    if side == "left":
        mask[1, :9] = 0
    else:
        mask[1, 21:] = 0
    monkeypatch.setattr(hfa, "masked_attention", lambda *a, **k: pytest.fail("took the materialising path"))
    with torch.no_grad():
        padded = model(batch, attention_mask=mask).logits
        alone_long, alone_short = model(long).logits[0], model(short).logits[0]
    torch.testing.assert_close(padded[0], alone_long, atol=1e-4, rtol=1e-4)
    real = slice(9, None) if side == "left" else slice(None, 21)
    torch.testing.assert_close(padded[1, real], alone_short, atol=1e-4, rtol=1e-4)
    allowed = hfa.causal_mask(0, 30, 30, batch.device)[None, None] & mask.bool()[:, None, None, :]
    layout = hfa.mask_layout(allowed)
    assert layout.kind == "windows" and layout.q_offset == 0
    assert layout.starts == ((0, 9) if side == "left" else (0, 0)) and layout.ends == ((30, 30) if side == "left"
                                                                                        else (30, 21))


@pytest.mark.parametrize("batch", ["causal", "left-padded", "packed"])
def test_backend_option_picks_the_backend_of_every_fast_path(batch, monkeypatch, tmp_path):
    """convert(backend=...) is saved in the config and reaches every fast-backend call (no mask, padding
    windows, packed rows); the logits equal those of the default backend."""
    ids = tokens(2, 24)
    kwargs = {}
    if batch == "left-padded":
        kwargs["attention_mask"] = torch.ones_like(ids)
        kwargs["attention_mask"][1, :5] = 0
    elif batch == "packed":
        ids = ids[:1]
        kwargs["position_ids"] = torch.cat((torch.arange(10), torch.arange(14)))[None]
    with torch.no_grad():
        expected = hf.convert(tiny_llama(), method="si-p-rope")(ids, **kwargs).logits
    model = hf.convert(tiny_llama(), method="si-p-rope", backend="reference")
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="siattn").eval()
    assert reloaded.config.siattn_backend == "reference"
    seen = []

    def spy(*args, backend="auto", **kw):
        seen.append(backend)
        return run_backend(*args, backend=backend, **kw)

    monkeypatch.setattr(hfa, "run_backend", spy)
    with torch.no_grad():
        got = reloaded(ids, **kwargs).logits
    assert seen and set(seen) == {"reference"}
    real = kwargs.get("attention_mask", torch.ones_like(ids)).bool()  # logits at padded slots are not compared
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=1e-5)
