"""Loading converted checkpoints safely, and features siattn refuses or supports by name."""

import os
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")
hf = pytest.importorskip("siattn.hf")

from hf_models import HEAD_DIM, MAX_POS, tiny_llama, tokens  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from siattn.positional import rope  # noqa: E402

HAS_PROPORTIONAL = "proportional" in transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS


def saved(tmp_path, method="si-p-rope"):
    model = hf.convert(tiny_llama(), method=method)
    model.save_pretrained(tmp_path)
    return model


def test_loading_without_the_siattn_implementation_fails_with_the_way_to_load(tmp_path):
    saved(tmp_path)
    with pytest.raises(RuntimeError, match=r"attn_implementation='siattn'") as err:
        AutoModelForCausalLM.from_pretrained(tmp_path)
    assert "si-p-rope" in str(err.value) and "siattn.hf.register()" in str(err.value)
    with pytest.raises(RuntimeError, match="attn_implementation='eager'"):
        AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager")


@pytest.mark.parametrize("method", ["si-nope", "alibi"])
def test_no_rope_checkpoints_with_a_transform_are_guarded_too(tmp_path, method):
    saved(tmp_path, method)
    with pytest.raises(RuntimeError, match="attn_implementation"):
        AutoModelForCausalLM.from_pretrained(tmp_path)


def test_plain_p_rope_loads_under_any_implementation(tmp_path):
    model = saved(tmp_path, "p-rope")  # no logit transform: sdpa computes the same attention
    ids = tokens(2, 16)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not HAS_PROPORTIONAL, reason="transformers without the 'proportional' rope type")
def test_plain_transformers_without_siattn_loads_p_rope_with_a_warning(tmp_path):
    saved(tmp_path)
    script = (
        "import sys\n"
        "sys.modules['siattn'] = None  # siattn not installed\n"
        "import torch\n"
        "from transformers import AutoModelForCausalLM\n"
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1])\n"
        "torch.save(m.model.rotary_emb.inv_freq, sys.argv[1] + '/inv_freq.pt')\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "warning"}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert "KeyError" not in done.stderr
    assert "p_rope_base" in done.stderr  # transformers' warning about the keys it does not know
    inv_freq = torch.load(tmp_path / "inv_freq.pt")
    torch.testing.assert_close(inv_freq, rope.p_rope_inv_freq(HEAD_DIM, 1024 * MAX_POS / 4096), atol=1e-6, rtol=1e-5)


def test_reload_with_siattn_gives_exact_p_rope_without_warnings(tmp_path, caplog):
    saved(tmp_path)
    hf.register()
    with caplog.at_level("WARNING"):
        reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="siattn")
    assert "p_rope_base" not in caplog.text
    torch.testing.assert_close(reloaded.model.rotary_emb.inv_freq,
                               rope.p_rope_inv_freq(HEAD_DIM, 1024 * MAX_POS / 4096), atol=0, rtol=0)


def test_transformers_own_proportional_type_is_untouched():
    if not HAS_PROPORTIONAL:
        pytest.skip("transformers without the 'proportional' rope type")
    config = tiny_llama().config
    config.rope_parameters = {"rope_type": "proportional", "rope_theta": 10_000.0, "partial_rotary_factor": 0.5}
    inv_freq, _ = transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS["proportional"](config)
    expected = torch.cat((10_000.0 ** (-torch.arange(0, HEAD_DIM // 2, 2).float() / HEAD_DIM),
                          torch.zeros(HEAD_DIM // 4)))
    torch.testing.assert_close(inv_freq, expected)


# ------------------------------------------------------------------------------------------- model features
def test_gemma2_logit_soft_capping_is_refused_by_name():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    config = Gemma2Config(hidden_size=32, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                          intermediate_size=64, num_hidden_layers=2, vocab_size=100, max_position_embeddings=128,
                          attn_logit_softcapping=50.0, sliding_window=16)
    model = Gemma2ForCausalLM(config)
    with pytest.raises(ValueError, match="attn_logit_softcapping"):
        hf.convert(model, method="si-p-rope")
    assert not hasattr(model.config, "siattn_method")


def test_soft_capping_passed_at_run_time_is_refused():
    model = hf.convert(tiny_llama(), method="si-p-rope")
    attn = model.model.layers[0].self_attn
    q, k = torch.randn(1, 4, 3, HEAD_DIM), torch.randn(1, 2, 3, HEAD_DIM)
    with pytest.raises(ValueError, match="soft-capping"):
        hf.attention_forward(attn, q, k, k, None, softcap=30.0)


def test_sliding_window_is_applied_through_the_mask():
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    config = MistralConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=HEAD_DIM,
                           intermediate_size=128, num_hidden_layers=1, vocab_size=100, max_position_embeddings=256,
                           sliding_window=6, pad_token_id=0)
    model = hf.convert(MistralForCausalLM(config).eval(), method="si-p-rope")
    ids = tokens(1, 20)
    changed = ids.clone()
    changed[0, 0] = (ids[0, 0] + 1) % 100
    with torch.no_grad():
        a, b = model(ids).logits, model(changed).logits
    # one layer, window 6: position r sees tokens r − 5 .. r, so token 0 reaches positions 0..5 only
    assert (a[0, :6] - b[0, :6]).abs().amax() > 1e-4
    torch.testing.assert_close(a[0, 6:], b[0, 6:], atol=0, rtol=0)
