"""The context lengths an evaluation runs at, and how tables and plots label them."""

from __future__ import annotations

from collections.abc import Sequence

DEFAULT_MULTIPLIERS = (1, 4, 16)


def eval_lengths(train_length: int, multipliers: Sequence[int] = DEFAULT_MULTIPLIERS,
                 lengths: Sequence[int] | None = None) -> list[int]:
    """``lengths`` when given, else ``multipliers`` × the training length; sorted and without repeats."""
    out = [int(n) for n in lengths] if lengths else [int(m * train_length) for m in multipliers]
    if not out or min(out) < 1:
        raise ValueError(f"evaluation lengths must be positive, got {out}")
    return sorted(set(out))


def length_label(length: int, train_length: int | None = None) -> str:
    """``8192`` -> ``"8k"``; with a training length, ``"8k (16×)"``."""
    text = f"{length // 1024}k" if length % 1024 == 0 else str(length)
    if train_length and length % train_length == 0:
        text += f" ({length // train_length}×)"
    return text
