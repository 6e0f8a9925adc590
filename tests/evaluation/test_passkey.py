"""Passkey retrieval: prompt generation and exact-match scoring."""

from __future__ import annotations

import math

import numpy as np
import pytest

from siattn.evaluation import PasskeyTask, evaluate_length, make_passkey_example, score_passkey
from siattn.evaluation.passkey import FILLER, QUESTION


def test_passkey_prompts_are_deterministic_per_seed(tokenizer):
    a, b, c = (make_passkey_example(tokenizer, 1000, np.random.default_rng(s)) for s in (1, 1, 2))
    assert np.array_equal(a.prompt, b.prompt) and a.answer_text == b.answer_text
    assert not np.array_equal(a.prompt, c.prompt)


@pytest.mark.parametrize("seed", range(5))
def test_the_key_is_hidden_once_in_filler_and_asked_for_at_the_end(tokenizer, seed):
    ex = make_passkey_example(tokenizer, 1000, np.random.default_rng(seed))
    key = ex.needles[0].value
    text = tokenizer.decode(ex.prompt)
    assert len(key) == 5 and key.isdigit() and key[0] != "0"
    assert text.count(f"The pass key is {key}. Remember it. {key} is the pass key.") == 1
    assert text.endswith(QUESTION) and text.count(FILLER.strip()) >= 5
    assert ex.answer_text == f" {key}." and tokenizer.decode(ex.answer) == f" {key}."  # the full stop ends it
    assert 1000 - len(tokenizer.encode(FILLER)) < ex.length <= 1000
    assert tokenizer.decode(ex.prompt[ex.needles[0].start:]).startswith(" The pass key is")


def test_the_key_lands_at_every_depth_across_seeds(tokenizer):
    examples = [make_passkey_example(tokenizer, 2000, np.random.default_rng(s)) for s in range(40)]
    depths = [ex.needles[0].depth for ex in examples]
    assert min(depths) < 0.2 and max(depths) > 0.8


def test_exact_match_takes_the_first_integer_of_the_answer_line():
    assert score_passkey(" 48213", 48213)
    assert score_passkey(" 48213. The grass is green.", "48213")
    assert not score_passkey(" 4821", "48213")
    assert not score_passkey(" 482130", "48213")
    assert not score_passkey(" 12345 48213", "48213")
    assert not score_passkey(" the key\n48213", "48213")
    assert not score_passkey("", "48213")


def test_a_perfect_retriever_gets_every_passkey(tokenizer, oracle):
    res = evaluate_length(oracle(tokenizer), PasskeyTask(tokenizer), 600, 5, decode=tokenizer.decode,
                          progress=False)
    assert res["accuracy"] == 1.0 and res["trials"] == 5
    # the stand-in's probabilities are uniform: the answer loss is log(vocab) per answer token, prompt excluded
    assert res["answer_loss"] == pytest.approx(math.log(tokenizer.vocab_size), rel=1e-5)
    assert all(r["answer_loss"] == pytest.approx(res["answer_loss"], rel=1e-4) for r in res["records"])
    off_by_one = oracle(tokenizer, lambda t: t[:-1] + str((int(t[-1]) + 1) % 10))
    res = evaluate_length(off_by_one, PasskeyTask(tokenizer), 600, 5, decode=tokenizer.decode, progress=False)
    assert res["accuracy"] == 0.0
