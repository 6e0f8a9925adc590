"""Needle in a haystack: example generation, the loss mask, scoring, depth bins, fine-tuning, evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from siattn.evaluation import (
    CITIES,
    NeedleTask,
    depth_accuracy,
    evaluate_length,
    finetune,
    make_needle_example,
    parse_answer,
    score_needle_answer,
)
from siattn.evaluation.needle import NEEDLE_TEMPLATE, Needle


def example(haystack, tokenizer, seed=0, length=400):
    return make_needle_example(haystack, tokenizer, length, np.random.default_rng(seed))


def test_the_city_list_has_at_least_100_distinct_names_that_cannot_break_the_answer_format():
    assert len(set(CITIES)) == len(CITIES) >= 100
    assert not any(set(c) & set("=;0123456789\n") for c in CITIES)


def test_examples_are_deterministic_per_seed(haystack, tokenizer):
    a, b, c = (example(haystack, tokenizer, s) for s in (3, 3, 4))
    assert np.array_equal(a.prompt, b.prompt) and np.array_equal(a.answer, b.answer)
    assert a.needles == b.needles
    assert not np.array_equal(a.prompt, c.prompt)


@pytest.mark.parametrize("seed", range(5))
def test_three_needles_with_distinct_cities_and_7_digit_numbers_sit_where_recorded(haystack, tokenizer, seed):
    ex = example(haystack, tokenizer, seed)
    assert len(ex.needles) == 3
    assert len({n.key for n in ex.needles}) == 3 and all(n.key in CITIES for n in ex.needles)
    assert all(len(n.value) == 7 and n.value.isdigit() and n.value[0] != "0" for n in ex.needles)
    text = tokenizer.decode(ex.prompt)
    assert text.count("The special magic") == 3
    starts = [n.start for n in ex.needles]
    assert starts == sorted(starts)
    for n in ex.needles:
        needle = NEEDLE_TEMPLATE.format(city=n.key, number=n.value)
        assert tokenizer.decode(ex.prompt[n.start:n.start + len(needle)]) == needle
        assert 0.0 <= n.depth <= 1.0


def test_needles_go_in_at_line_starts_when_there_are_some(haystack, tokenizer):
    for seed in range(10):
        ex = example(haystack, tokenizer, seed)
        for n in ex.needles:
            assert n.start == 0 or tokenizer.decode(ex.prompt[n.start - 1:n.start]) in ("\n", "<|endoftext|>")


def test_loss_mask_covers_exactly_the_answer_which_lists_the_needles_in_order(haystack, tokenizer):
    ex = example(haystack, tokenizer, seed=7, length=400)
    x, y = ex.training_pair()
    assert len(x) == len(y) == ex.length == 400
    mask = y != -1
    assert mask.sum() == len(ex.answer) and mask[-len(ex.answer):].all()
    assert tokenizer.decode(y[mask]) == ex.answer_text
    # the closing newline is part of the target: a fine-tuned model learns where the answer ends
    assert ex.answer_text == ";".join(f"{n.key}={n.value}" for n in ex.needles) + "\n"
    seq = np.concatenate([ex.prompt, ex.answer])
    assert np.array_equal(x, seq[:-1]) and np.array_equal(y[mask], seq[1:][mask])
    assert tokenizer.decode(ex.prompt).endswith("Answer: ")


def test_a_length_too_short_for_the_needles_is_refused_with_the_size_needed(haystack, tokenizer):
    with pytest.raises(ValueError, match="too short"):
        example(haystack, tokenizer, length=100)


NEEDLES = [Needle("Oslo", "4817263", 0, 0.1), Needle("Lima", "9034417", 0, 0.5),
           Needle("Kyoto", "1275590", 0, 0.9)]


def score(text, ordered=True):
    return [(s.key, s.value, s.correct) for s in score_needle_answer(text, NEEDLES, ordered=ordered)]


def test_parse_answer_splits_items_and_keeps_leading_digits():
    assert parse_answer(" Oslo = 4817263;Lima=90x; junk ;") == [
        ("Oslo", "4817263"), ("Lima", "90"), ("junk", "")]
    assert parse_answer("Oslo=1\nLima=2") == [("Oslo", "1")]
    assert parse_answer("Oslo=1<|endoftext|>Lima=2") == [("Oslo", "1")]


def test_a_fully_right_answer_scores_every_needle():
    assert score("Oslo=4817263;Lima=9034417;Kyoto=1275590") == [(True, True, True)] * 3


def test_text_after_the_answer_line_does_not_count():
    right = [(True, True, True)] * 3
    assert score("Oslo=4817263;Lima=9034417;Kyoto=1275590\nThe special magic Rome number is 1.") == right
    assert score("Oslo=4817263;Lima=9034417;Kyoto=1275590 and more") == right


def test_city_and_number_are_counted_separately_and_a_needle_needs_both():
    assert score("Oslo=4817264;Lisbon=9034417;Kyoto=1275590") == [
        (True, False, False), (False, True, False), (True, True, True)]


def test_wrong_order_fails_in_order_but_counts_when_order_is_ignored():
    text = "Lima=9034417;Oslo=4817263;Kyoto=1275590"
    assert score(text) == [(False, False, False), (False, False, False), (True, True, True)]
    assert score(text, ordered=False) == [(True, True, True)] * 3
    # ignoring order still needs the city and its own number together
    assert [c for *_, c in score("Oslo=9034417;Lima=4817263", ordered=False)] == [False, False, False]


def test_missing_items_and_garbage_score_nothing():
    assert score("Oslo=4817263") == [(True, True, True), (False, False, False), (False, False, False)]
    assert score("") == [(False, False, False)] * 3
    assert score("481726390344171275590") == [(False, False, False)] * 3
    assert score("Oslo=48172630;Lima=;Kyoto") == [(True, False, False)] * 3


def test_depth_accuracy_bins_needles_by_depth_and_length():
    results = {100: {"records": [{"depths": [0.05, 0.5, 0.95], "correct": [True, False, True]},
                                 {"depths": [0.0, 0.55, 1.0], "correct": [True, True, False]}]},
               400: {"records": [{"depths": [0.3, 0.31, 0.32], "correct": [False, True, True]}]}}
    acc, counts, lengths = depth_accuracy(results, n_bins=4)
    assert lengths == [100, 400]
    assert counts[:, 0].tolist() == [2, 0, 2, 2] and counts[:, 1].tolist() == [0, 3, 0, 0]
    assert acc[0, 0] == 1.0 and acc[2, 0] == 0.5 and acc[3, 0] == 0.5 and np.isnan(acc[1, 0])
    assert acc[1, 1] == pytest.approx(2 / 3)


def test_a_perfect_retriever_scores_one_and_a_number_swapper_scores_zero(haystack, tokenizer, oracle):
    task = NeedleTask(haystack, tokenizer)
    res = evaluate_length(oracle(tokenizer), task, 400, 4, seed=1, decode=tokenizer.decode, progress=False)
    assert res["accuracy"] == res["exact_match"] == 1.0 and res["needles"] == 12 and res["trials"] == 4
    assert res["records"][0]["output"].startswith(res["records"][0]["answer"])

    def swap(text):  # keep the cities, rotate the numbers
        items = [i.split("=") for i in text.split(";")]
        return ";".join(f"{c}={items[(k + 1) % 3][1]}" for k, (c, _) in enumerate(items))

    res = evaluate_length(oracle(tokenizer, swap), task, 400, 4, seed=1, decode=tokenizer.decode,
                          progress=False)
    assert res["accuracy"] == 0.0 and res["key_accuracy"] == 1.0 and res["value_accuracy"] == 0.0


def test_evaluation_examples_are_the_same_for_the_same_seed(haystack, tokenizer, oracle):
    task = NeedleTask(haystack, tokenizer)
    a = evaluate_length(oracle(tokenizer), task, 400, 3, seed=5, decode=tokenizer.decode, progress=False)
    b = evaluate_length(oracle(tokenizer), task, 400, 3, seed=5, decode=tokenizer.decode, progress=False)
    assert [r["answer"] for r in a["records"]] == [r["answer"] for r in b["records"]]


def test_finetuning_follows_warmup_constant_decay_and_changes_the_model(haystack, tokenizer, monkeypatch,
                                                                         make_gpt):
    from siattn.training import OptimizerSet, resolve_config

    seen = []
    original = OptimizerSet.set_lr_multiplier
    monkeypatch.setattr(OptimizerSet, "set_lr_multiplier",
                        lambda self, m: (seen.append(m), original(self, m)))
    model = make_gpt(train_length=320)
    before = [p.detach().clone() for p in model.parameters()]
    cfg = resolve_config("cpu-tiny", seq_len=320)
    out = finetune(model, NeedleTask(haystack, tokenizer), length=320, train_config=cfg, warmup=3, constant=2,
                   decay=3, batch_size=2, micro_batch_size=1, progress=False)
    assert seen == pytest.approx([1 / 3, 2 / 3, 1, 1, 1, 1, 2 / 3, 1 / 3])
    assert len(out["losses"]) == 8 and all(np.isfinite(out["losses"]))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert not model.training


def test_greedy_evaluation_runs_on_a_real_model_with_its_kv_cache(haystack, tokenizer, make_gpt):
    model = make_gpt(train_length=400)
    res = evaluate_length(model, NeedleTask(haystack, tokenizer), 800, 2, decode=tokenizer.decode,
                          eod_id=tokenizer.eod_id, progress=False)
    assert 0.0 <= res["accuracy"] <= 1.0 and res["needles"] == 6
    assert all(isinstance(r["output"], str) for r in res["records"])
