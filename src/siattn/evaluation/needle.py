"""Needle in a haystack (the paper's task): data, scoring, fine-tuning and greedy-decoding evaluation.

One example of length L (what a teacher-forced forward sees: prompt + answer = L + 1 tokens)::

    <validation text ...>The special magic Oslo number is 4817263.\n<... text ...>
    The special magic Lima number is 9034417.\n<... text ...>The special magic Kyoto number is 1275590.\n<...>
    \nQuestion: what are the special magic numbers of the cities above, in the order they appear?\n
    Answer: |Oslo=4817263;Lima=9034417;Kyoto=1275590\n

The haystack is a random window of the token stream, cut so the whole example is L + 1 tokens. Each needle
goes in at a uniformly random token position of the haystack, moved to the nearest line start (after a token
that ends with a newline, or after end-of-document) when one lies within ``max_snap`` tokens (needles that
snap to the same line start go in one after another). Three distinct cities from
:data:`~siattn.evaluation.cities.CITIES`, distinct 7-digit numbers. The loss covers only the answer tokens,
the closing newline included: a fine-tuned model learns where its answer ends (without it, greedy decoding runs
on into extra digits that the exact-match scorer rightly counts as wrong). Scoring reads the answer line only.

The same machinery serves any retrieval task (``passkey``): a task makes :class:`RetrievalExample` s and
scores decoded text; :func:`finetune` trains on the answer tokens with the model's own optimisers and a
warm-up / constant / linear-decay schedule (the paper's 100 / 100 / 100 steps); :func:`evaluate_retrieval`
decodes greedily with the model's KV cache and scores every needle; :func:`depth_accuracy` bins them by depth.
"""

from __future__ import annotations

import copy
import functools
import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from siattn.errors import check_int
from siattn.evaluation.cities import CITIES
from siattn.precision import amp_dtype, autocast

NEEDLE_TEMPLATE = "The special magic {city} number is {number}.\n"
QUESTION = ("\nQuestion: what are the special magic numbers of the cities above, in the order they appear?\n"
            "Answer: ")
EOD_TEXT = "<|endoftext|>"
DEFAULT_MAX_SNAP = 64
DEFAULT_DEPTH_BINS = 10


@dataclass(frozen=True)
class Needle:
    """One fact hidden in the prompt: ``key`` (the city; "pass key" for passkey), ``value`` (the number)."""

    key: str
    value: str
    start: int  # index of the needle's first token in the prompt
    depth: float  # where it went in the haystack: insertion point / haystack length, in [0, 1]
    tokens: int = 0  # tokens of the needle's sentence (prompt[start:start + tokens])


@dataclass
class RetrievalExample:
    """A prompt, the answer tokens the model must produce after it, and the needles the answer is made of."""

    prompt: np.ndarray  # int64 token ids
    answer: np.ndarray  # int64 token ids
    answer_text: str
    needles: list[Needle]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def length(self) -> int:
        """Positions a teacher-forced forward over prompt + answer sees (one less than the tokens)."""
        return len(self.prompt) + len(self.answer) - 1

    def training_pair(self) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of ``length`` tokens each: y is x shifted by one, -1 everywhere but the answer tokens."""
        seq = np.concatenate([self.prompt, self.answer]).astype(np.int64)
        x, y = seq[:-1], seq[1:].copy()
        y[: len(self.prompt) - 1] = -1
        return x, y


@dataclass(frozen=True)
class NeedleScore:
    """``key``: the city (for passkey always right) came out right; ``value``: the number did; ``correct``:
    both, for the same needle."""

    key: bool
    value: bool
    correct: bool


class RetrievalTask(Protocol):
    name: str

    def example(self, length: int, rng: np.random.Generator) -> RetrievalExample: ...

    def score(self, example: RetrievalExample, text: str) -> list[NeedleScore]: ...


# ---- data ----

@functools.lru_cache(maxsize=8)
def line_end_ids(tokenizer: Any) -> frozenset[int]:
    """Token ids after which a line starts: those that decode to text ending with a newline, and the
    end-of-document id."""
    ids = {int(tokenizer.eod_id)}
    for i in range(int(tokenizer.vocab_size)):
        if i == tokenizer.eod_id:
            continue
        try:
            text = tokenizer.decode([i])
        except ValueError:
            continue
        if text.endswith("\n"):
            ids.add(i)
    return frozenset(ids)


def encode(tokenizer: Any, text: str) -> np.ndarray:
    """``tokenizer.encode`` as int64; for tokenizers without a text codec, an error that says what to do."""
    try:
        return np.asarray(tokenizer.encode(text), dtype=np.int64)
    except Exception as err:
        if "cannot encode" in str(err):
            raise ValueError(f"{err}. Retrieval prompts are text: pass --tokenizer hf:PATH (the tokenizer "
                             "that made the data)") from err
        raise


def snap_to_line_start(pos: int, haystack: np.ndarray, line_ends: frozenset[int], max_snap: int) -> int:
    """The line start (0, or just after a line-ending token) nearest ``pos`` if one is within ``max_snap``
    tokens, else ``pos`` (ties go to the earlier one)."""
    lo, hi = max(0, pos - max_snap), min(len(haystack), pos + max_snap)
    best = None
    for p in range(lo, hi + 1):
        if (p == 0 or int(haystack[p - 1]) in line_ends) and (best is None or abs(p - pos) < abs(best - pos)):
            best = p
    return pos if best is None else best


def random_window(tokens: Any, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` consecutive tokens from a uniformly random place of ``tokens`` (TokenArray or array), int64."""
    total = len(tokens)
    if n > total:
        raise ValueError(f"a haystack of {n} tokens is longer than the {total} tokens it is cut from; use a "
                         "shorter length or more validation data")
    start = int(rng.integers(0, total - n + 1))
    piece = tokens.get(start, n) if hasattr(tokens, "get") else tokens[start:start + n]
    return np.asarray(piece, dtype=np.int64)


def make_needle_example(haystack_tokens: Any, tokenizer: Any, length: int, rng: np.random.Generator, *,
                        n_needles: int = 3, cities: Sequence[str] = CITIES,
                        max_snap: int = DEFAULT_MAX_SNAP) -> RetrievalExample:
    """One needle-in-a-haystack example of ``length`` positions (see the module docstring); deterministic in
    ``rng``'s state. The answer lists the needles in the order they appear in the prompt."""
    if n_needles > len(cities):
        raise ValueError(f"{n_needles} needles need as many distinct cities; the list has {len(cities)}")
    names = [cities[i] for i in rng.choice(len(cities), n_needles, replace=False)]
    numbers: list[str] = []
    while len(numbers) < n_needles:
        n = str(int(rng.integers(1_000_000, 10_000_000)))
        if n not in numbers:
            numbers.append(n)
    needle_ids = [encode(tokenizer, NEEDLE_TEMPLATE.format(city=c, number=n)) for c, n in zip(names, numbers)]
    answer_text = ";".join(f"{c}={n}" for c, n in zip(names, numbers)) + "\n"
    answer = encode(tokenizer, answer_text)
    question = encode(tokenizer, QUESTION)
    hay_len = length + 1 - len(answer) - len(question) - sum(len(x) for x in needle_ids)
    if hay_len < 1:
        raise ValueError(f"length {length} is too short: needles, question and answer alone take "
                         f"{length + 1 - hay_len} tokens")
    haystack = random_window(haystack_tokens, hay_len, rng)
    line_ends = line_end_ids(tokenizer)
    raw = np.sort(rng.integers(0, hay_len + 1, n_needles))
    places = sorted(snap_to_line_start(int(p), haystack, line_ends, max_snap) for p in raw)
    pieces, needles, prev, offset = [], [], 0, 0
    for i, (p, ids) in enumerate(zip(places, needle_ids)):
        pieces += [haystack[prev:p], ids]
        needles.append(Needle(names[i], numbers[i], start=p + offset, depth=p / hay_len, tokens=len(ids)))
        offset += len(ids)
        prev = p
    pieces += [haystack[prev:], question]
    prompt = np.concatenate(pieces).astype(np.int64)
    return RetrievalExample(prompt, answer, answer_text, needles, info={"haystack_tokens": hay_len})


# ---- scoring ----

def answer_line(text: str) -> str:
    """The part of decoded model output that counts: up to the first newline or end-of-document."""
    return text.split(EOD_TEXT, 1)[0].split("\n", 1)[0]


def parse_answer(text: str) -> list[tuple[str, str]]:
    """``"Oslo=4817263;Lima=90;x"`` -> [("Oslo", "4817263"), ("Lima", "90"), ("x", "")]: the items of the
    answer line split at ';', each split at its first '=' into a stripped key and the leading digits of the
    rest. Empty items (a trailing ';') are dropped."""
    items = []
    for piece in answer_line(text).split(";"):
        if not piece.strip():
            continue
        key, _, rest = piece.partition("=")
        digits = re.match(r"\s*(\d*)", rest)
        items.append((key.strip(), digits.group(1) if digits else ""))
    return items


def score_needle_answer(text: str, needles: Sequence[Needle], *, ordered: bool = True) -> list[NeedleScore]:
    """Score decoded output against the needles.

    ordered (the answer format): item i of the output is compared with needle i; its city and its number are
    counted separately, and the needle is correct only when both are right. ordered=False ignores the order:
    a city is right when it is any item's key, a number when it is any item's number, and a needle is correct
    when some item holds both its city and its number.
    """
    items = parse_answer(text)
    scores = []
    for i, n in enumerate(needles):
        if ordered:
            key, value = items[i] if i < len(items) else ("", "")
            scores.append(NeedleScore(key == n.key, value == n.value, key == n.key and value == n.value))
        else:
            scores.append(NeedleScore(any(k == n.key for k, _ in items), any(v == n.value for _, v in items),
                                      (n.key, n.value) in items))
    return scores


class NeedleTask:
    """The paper's three-needle task with haystacks cut from ``tokens`` (a split of a TokenDataset)."""

    name = "needle"

    def __init__(self, tokens: Any, tokenizer: Any, *, n_needles: int = 3, cities: Sequence[str] = CITIES,
                 max_snap: int = DEFAULT_MAX_SNAP):
        self.tokens, self.tokenizer = tokens, tokenizer
        self.n_needles, self.cities, self.max_snap = n_needles, tuple(cities), max_snap

    def example(self, length: int, rng: np.random.Generator) -> RetrievalExample:
        return make_needle_example(self.tokens, self.tokenizer, length, rng, n_needles=self.n_needles,
                                   cities=self.cities, max_snap=self.max_snap)

    def score(self, example: RetrievalExample, text: str) -> list[NeedleScore]:
        return score_needle_answer(text, example.needles)

    def score_any_order(self, example: RetrievalExample, text: str) -> list[NeedleScore]:
        return score_needle_answer(text, example.needles, ordered=False)


# ---- fine-tuning ----

def finetune(model: nn.Module, task: RetrievalTask, *, length: int, train_config: Any, warmup: int = 100,
             constant: int = 100, decay: int = 100, batch_size: int = 16, micro_batch_size: int | None = None,
             lr_scale: float = 1.0, seed: int = 0, dtype: str = "auto", progress: bool = True,
             log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train ``model`` in place on ``task`` examples of ``length`` tokens, loss on the answer tokens only.

    Each step is :func:`siattn.training.optimizer_step`, as in the trainer. The optimisers are the model's own
    (:func:`siattn.training.build_optimizer` with ``train_config``'s learning rates × ``lr_scale``); the lr
    rises linearly over ``warmup`` steps, stays for ``constant`` and falls linearly to 0 over ``decay``
    (:func:`siattn.training.lr_multiplier`). Each step takes ``batch_size`` fresh examples drawn from
    ``numpy.random.default_rng([seed, 1, step])``, ``micro_batch_size`` per forward. Returns the settings and
    the loss of every step.
    """
    from siattn.training import build_optimizer, lr_multiplier, optimizer_step

    total = warmup + constant + decay
    if min(warmup, constant, decay) < 0:
        raise ValueError(f"step counts must be >= 0, got {warmup}/{constant}/{decay}")
    if total == 0:
        return {"steps": 0, "losses": []}
    device = next(model.parameters()).device
    micro = min(micro_batch_size or batch_size, batch_size)
    opt = build_optimizer(model, train_config)
    clip = getattr(train_config, "grad_clip", None)

    def micro_losses(x: torch.Tensor, y: torch.Tensor) -> Iterator[torch.Tensor]:
        """Each micro-batch's answer loss, normalised by the answer tokens of the whole step."""
        n_answer = int((y != -1).sum())
        for lo in range(0, batch_size, micro):
            with autocast(device, dtype):
                _, tok_losses = model(x[lo:lo + micro], y[lo:lo + micro], return_per_token_loss=True)
            yield tok_losses.float().sum() / n_answer

    model.train()
    losses: list[float] = []
    bar = tqdm(range(total), desc=f"finetune {task.name}@{length}", unit="step", disable=not progress)
    try:
        for step in bar:
            mult = lr_multiplier(step, total, schedule="constant-cooldown", cooldown_frac=decay / total,
                                 warmup_steps=warmup)
            rng = np.random.default_rng([seed, 1, step])
            pairs = [task.example(length, rng).training_pair() for _ in range(batch_size)]
            x = torch.from_numpy(np.stack([p[0] for p in pairs])).to(device)
            y = torch.from_numpy(np.stack([p[1] for p in pairs])).to(device)
            loss_sum = 0.0
            for loss in optimizer_step(opt, model.parameters(), micro_losses(x, y), lr_multiplier=mult * lr_scale,
                                       grad_clip=clip):
                loss_sum += float(loss)
            losses.append(loss_sum)
            bar.set_postfix(loss=f"{loss_sum:.3f}", lr=f"{mult * lr_scale:.2f}")
            if log is not None and (step % 50 == 0 or step == total - 1):
                log(f"finetune step {step + 1}/{total}: answer loss {loss_sum:.4f}, "
                    f"lr × {mult * lr_scale:.3f}")
    finally:
        bar.close()
        opt.zero_grad(set_to_none=True)
        model.eval()
    return {"steps": total, "warmup": warmup, "constant": constant, "decay": decay, "batch_size": batch_size,
            "length": length, "lr_scale": lr_scale, "losses": losses}


# ---- evaluation ----

@torch.no_grad()
def greedy_decode(model: nn.Module, prompt: np.ndarray, max_new_tokens: int, *, eod_id: int | None = None
                  ) -> list[int]:
    """The tokens ``model`` produces after ``prompt`` by greedy decoding with its KV cache (stops at eod)."""
    device = next(model.parameters()).device
    idx = torch.as_tensor(np.asarray(prompt, dtype=np.int64), device=device)[None]
    out = model.generate(idx, max_new_tokens, temperature=0.0, eod_id=eod_id)
    return out[0, idx.shape[1]:].tolist()


def example_rng(seed: int, length: int, trial: int) -> np.random.Generator:
    """The generator of evaluation example ``trial`` at ``length``: each cell is reproducible on its own."""
    return np.random.default_rng([seed, 0, length, trial])


@torch.no_grad()
def answer_loss(model: nn.Module, example: RetrievalExample) -> float:
    """Teacher-forced mean cross-entropy (nats/token) of the answer tokens given the prompt: a graded
    measure of retrieval that still moves where exact-match accuracy is 0 or 1."""
    from siattn.training.validation import per_token_losses

    device = next(model.parameters()).device
    x, y = (torch.as_tensor(a, device=device)[None] for a in example.training_pair())
    losses = per_token_losses(model, x, y)
    return float(losses[y != -1].mean())


def summarise(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy over the needles of ``records`` (one per trial, as :func:`evaluate_length` writes them), and
    the mean teacher-forced answer loss where the records have it."""
    correct = [c for r in records for c in r["correct"]]
    keys = [c for r in records for c in r["key"]]
    values = [c for r in records for c in r["value"]]
    any_order = [c for r in records for c in r.get("correct_any_order", r["correct"])]

    def mean(xs: Sequence[bool]) -> float | None:
        return float(np.mean(xs)) if xs else None

    losses = [r["answer_loss"] for r in records if "answer_loss" in r]
    return {"accuracy": mean(correct), "key_accuracy": mean(keys), "value_accuracy": mean(values),
            "accuracy_any_order": mean(any_order), "exact_match": mean([all(r["correct"]) for r in records]),
            "answer_loss": float(np.mean(losses)) if losses else None, "trials": len(records),
            "needles": len(correct)}


def decoding_model(model: nn.Module, dtype: str = "auto") -> nn.Module:
    """The model to decode with: ``model`` itself in float32, or a bfloat16 copy (``dtype`` bfloat16, or
    auto on CUDA). A copy, not autocast: the KV cache holds the parameters' dtype, and the copy leaves
    ``model`` trainable."""
    device = next(model.parameters()).device
    if amp_dtype(device, dtype) is None:
        return model
    return copy.deepcopy(model).to(torch.bfloat16).eval()


def evaluate_length(model: nn.Module, task: RetrievalTask, length: int, trials: int, *, seed: int = 0,
                    eod_id: int | None = None, decode: Callable[[Sequence[int]], str], margin: int = 2,
                    progress: bool = True) -> dict[str, Any]:
    """``trials`` examples at ``length``, each decoded greedily for len(answer) + ``margin`` tokens and scored
    (decode in bfloat16 by passing :func:`decoding_model`'s copy), and its :func:`answer_loss`. Returns
    :func:`summarise`'s numbers and the per-trial ``records`` (output text, depths, scores, answer loss)."""
    check_int("trials", trials, min=1)
    check_int("margin", margin, min=0)
    records = []
    for trial in tqdm(range(trials), desc=f"{task.name}@{length}", unit="trial", disable=not progress,
                      leave=False):
        ex = task.example(length, example_rng(seed, length, trial))
        new = greedy_decode(model, ex.prompt, len(ex.answer) + margin, eod_id=eod_id)
        text = decode(new)
        scores = task.score(ex, text)
        any_order = task.score_any_order(ex, text) if hasattr(task, "score_any_order") else scores
        records.append({"trial": trial, "answer": ex.answer_text, "output": text,
                        "depths": [round(n.depth, 4) for n in ex.needles],
                        "key": [s.key for s in scores], "value": [s.value for s in scores],
                        "correct": [s.correct for s in scores],
                        "correct_any_order": [s.correct for s in any_order],
                        "answer_loss": round(answer_loss(model, ex), 5)})
    return {**summarise(records), "length": length, "records": records}


def evaluate_retrieval(model: nn.Module, task: RetrievalTask, lengths: Sequence[int], trials: int, *,
                       done: dict[int, dict[str, Any]] | None = None,
                       on_result: Callable[[int, dict[str, Any]], None] | None = None,
                       **kwargs: Any) -> dict[int, dict[str, Any]]:
    """:func:`evaluate_length` at every length not already in ``done`` (finished cells are kept, not redone);
    ``on_result(length, result)`` runs after each new length (to save progress)."""
    check_int("trials", trials, min=1)
    results = dict(done or {})
    for length in lengths:
        if length in results:
            continue
        results[length] = evaluate_length(model, task, length, trials, **kwargs)
        if on_result is not None:
            on_result(length, results[length])
    return results


def depth_accuracy(results: dict[int, dict[str, Any]], n_bins: int = DEFAULT_DEPTH_BINS
                   ) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Needle accuracy by depth bin (rows, [k/n, (k+1)/n)) and length (columns): (accuracy, counts, lengths).
    Cells without needles are NaN."""
    lengths = sorted(results)
    hits = np.zeros((n_bins, len(lengths)))
    counts = np.zeros((n_bins, len(lengths)), dtype=np.int64)
    for j, length in enumerate(lengths):
        for r in results[length]["records"]:
            for depth, ok in zip(r["depths"], r["correct"]):
                i = min(math.floor(depth * n_bins), n_bins - 1)
                hits[i, j] += bool(ok)
                counts[i, j] += 1
    with np.errstate(invalid="ignore"):
        acc = np.where(counts > 0, hits / np.maximum(counts, 1), np.nan)
    return acc, counts, lengths
