"""Attention mass on the needle tokens: bookkeeping of needle and answer positions, and the mass itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from siattn.analysis.needle_attention import (
    NeedleAttentionConfig,
    answer_rows,
    example_needle_mass,
    needle_attention,
    needle_positions,
)
from siattn.data import BytesTokenizer
from siattn.evaluation.needle import NEEDLE_TEMPLATE, NeedleTask
from siattn.evaluation.passkey import KEY_SENTENCE, PasskeyTask

TOKENIZER = BytesTokenizer()


def haystack() -> np.ndarray:
    text = "".join(f"line {i} of the haystack.\n" for i in range(400))
    return np.asarray(TOKENIZER.encode(text), dtype=np.uint16)


def tiny_gpt(method: str = "si-p-rope", seed: int = 0):
    from siattn.model import GPT, GPTConfig

    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=TOKENIZER.vocab_size, n_layer=2, n_head=4, n_kv_head=2, n_embd=64,
                          head_dim=16, train_length=64, method=method))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "c_proj" in name or "lm_head" in name:
                p.normal_(0.0, 0.05)
    return model.eval()


@pytest.mark.parametrize("seed", range(4))
def test_needle_positions_hold_the_needle_sentences_and_answer_rows_predict_the_answer(seed):
    for task in (NeedleTask(haystack(), TOKENIZER), PasskeyTask(TOKENIZER)):
        ex = task.example(300, np.random.default_rng(seed))
        keys = needle_positions(ex)
        text = TOKENIZER.decode(ex.prompt[keys])
        if task.name == "passkey":
            assert text == KEY_SENTENCE.format(key=ex.needles[0].value)
        else:
            assert text == "".join(NEEDLE_TEMPLATE.format(city=n.key, number=n.value) for n in ex.needles)
        seq = np.concatenate([ex.prompt, ex.answer])
        assert np.array_equal(seq[answer_rows(ex) + 1], ex.answer)


def test_uniform_attention_gives_the_uniform_share():
    """With zero queries and no transform ("nope"), every row attends uniformly: the mass is the share of
    needle keys among the keys each row sees, in every layer and head."""
    model = tiny_gpt("nope")
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_q.weight.zero_()
    ex = NeedleTask(haystack(), TOKENIZER).example(400, np.random.default_rng(1))
    mass, uniform = example_needle_mass(model, ex, [0, 1])
    expected = np.mean([len(needle_positions(ex)) / (r + 1) for r in answer_rows(ex)])
    assert uniform == pytest.approx(expected)
    np.testing.assert_allclose(mass, uniform, rtol=1e-5)


def test_a_head_that_only_looks_at_the_needle_has_mass_one():
    """A model's weights replaced so that layer 0's logits are large exactly on the needle tokens: the analysis
    must find mass 1 there (its softmax is the layer's)."""
    model = tiny_gpt("nope")
    ex = PasskeyTask(TOKENIZER).example(400, np.random.default_rng(0))
    keys = needle_positions(ex)
    from siattn.analysis import needle_attention as na

    real = na.attention_scores

    def peaked(attn, x, rotary, rows):
        s, logits = real(attn, x, rotary, rows)
        boost = torch.full_like(logits, -1e4)
        boost[..., keys] = 0.0
        return s, logits + boost

    na.attention_scores = peaked
    try:
        mass, _ = example_needle_mass(model, ex, [0])
    finally:
        na.attention_scores = real
    np.testing.assert_allclose(mass, 1.0, rtol=1e-6)


def test_report_has_a_mass_per_layer_and_head_for_each_length():
    model = tiny_gpt()
    cfg = NeedleAttentionConfig(lengths=(400, 600), trials=2, seed=3)
    out = needle_attention(model, NeedleTask(haystack(), TOKENIZER), cfg)
    assert list(out["lengths"]) == ["400", "600"]
    for cell in out["lengths"].values():
        mass = np.asarray(cell["mass"])
        assert mass.shape == (2, 4) and np.all((mass >= 0) & (mass <= 1))
        assert 0 < cell["uniform"] < 1
        assert cell["best_head"]["mass"] == pytest.approx(mass.max(), abs=1e-5)


@pytest.mark.parametrize(("field", "value"), [("lengths", ()), ("lengths", (1,)), ("trials", 0)])
def test_bad_config_is_refused_by_name(field, value):
    kwargs = {"lengths": (100,), "trials": 1} | {field: value}
    with pytest.raises(ValueError, match=field):
        NeedleAttentionConfig(**kwargs)
