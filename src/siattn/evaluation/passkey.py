"""Passkey retrieval (Mohtashami & Jaggi, 2023): one number hidden in repeated filler sentences.

    There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. I will quiz
    you about the important information there. The grass is green. The sky is blue. The sun is yellow. Here
    we go. There and back again. ... The pass key is 48213. Remember it. 48213 is the pass key. ... The grass
    is green. ... What is the pass key? The pass key is| 48213.

The filler is repeated as often as fits in ``length`` positions (prompt + answer <= length + 1 tokens); the
key sentence goes between two repetitions chosen uniformly at random; the key is a uniformly random 5-digit
integer. The answer is the key and the full stop that ends the sentence, so fine-tuning (on the answer
tokens) also teaches where the key ends. Scoring is exact match of the first integer in the greedy output.
Fine-tuning, greedy decoding and the depth heat map are the needle task's (:mod:`siattn.evaluation.needle`).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from siattn.evaluation.needle import Needle, NeedleScore, NeedleTask, RetrievalExample, answer_line, encode

INTRO = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. I will "
         "quiz you about the important information there.")
FILLER = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
KEY_SENTENCE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = " What is the pass key? The pass key is"
ANSWER = " {key}."


def make_passkey_example(tokenizer: Any, length: int, rng: np.random.Generator, *, digits: int = 5
                         ) -> RetrievalExample:
    """One passkey example of at most ``length`` positions; deterministic in ``rng``'s state."""
    key = str(int(rng.integers(10 ** (digits - 1), 10**digits)))
    intro, filler = encode(tokenizer, INTRO), encode(tokenizer, FILLER)
    key_ids, question = encode(tokenizer, KEY_SENTENCE.format(key=key)), encode(tokenizer, QUESTION)
    answer_text = ANSWER.format(key=key)
    answer = encode(tokenizer, answer_text)
    room = length + 1 - len(answer) - len(intro) - len(key_ids) - len(question)
    if room < 0:
        raise ValueError(f"length {length} is too short for the passkey prompt ({length + 1 - room} tokens)")
    n_filler = room // len(filler)
    before = int(rng.integers(0, n_filler + 1))
    start = len(intro) + before * len(filler)
    prompt = np.concatenate([intro, *[filler] * before, key_ids, *[filler] * (n_filler - before), question])
    depth = before / n_filler if n_filler else 0.0
    needle = Needle("pass key", key, start, depth, tokens=len(key_ids))
    return RetrievalExample(prompt.astype(np.int64), answer, answer_text, [needle],
                            info={"filler_repeats": n_filler})


def first_integer(text: str) -> str | None:
    """The first run of digits in the answer line of ``text``, or None."""
    m = re.search(r"\d+", answer_line(text))
    return m.group(0) if m else None


def score_passkey(text: str, key: str | int) -> bool:
    """Exact match: the first integer the model wrote is the key (no more, no fewer digits)."""
    return first_integer(text) == str(key)


class PasskeyTask:
    """Passkey retrieval as a :class:`~siattn.evaluation.needle.RetrievalTask`."""

    name = "passkey"

    def __init__(self, tokenizer: Any, *, digits: int = 5):
        self.tokenizer, self.digits = tokenizer, digits

    def example(self, length: int, rng: np.random.Generator) -> RetrievalExample:
        return make_passkey_example(self.tokenizer, length, rng, digits=self.digits)

    def score(self, example: RetrievalExample, text: str) -> list[NeedleScore]:
        ok = score_passkey(text, example.needles[0].value)
        return [NeedleScore(key=True, value=ok, correct=ok)]


def retrieval_task(name: str, tokens: Any, tokenizer: Any) -> NeedleTask | PasskeyTask:
    """The task called ``name``: "needle" (haystacks cut from ``tokens``) or "passkey" (filler text; ``tokens``
    unused)."""
    return NeedleTask(tokens, tokenizer) if name == "needle" else PasskeyTask(tokenizer)
