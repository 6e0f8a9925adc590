"""The network's configuration: :class:`GPTConfig` says what the model is.

It is saved with every checkpoint and is all that :func:`siattn.training.load_checkpoint` needs to rebuild the
model. How a run trains it (data, batch, optimiser, schedule) is :class:`siattn.training.TrainConfig`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from siattn.errors import UsageError, check_float, check_int
from siattn.methods import get_method
from siattn.schedule import DEFAULT_TAU


def pad_vocab(vocab_size: int, multiple: int = 64) -> int:
    """``vocab_size`` rounded up to a multiple of ``multiple`` (50,257 -> 50,304)."""
    return multiple * math.ceil(vocab_size / multiple)


def check_fields(cls: type, d: dict[str, Any]) -> type:
    """``cls`` after checking that ``d`` names only its fields (a saved config from a newer siattn does not)."""
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown} (written by a newer siattn?)")
    return cls


@dataclass
class GPTConfig:
    """The network. ``vocab_size`` is the tokenizer's (exact); embedding and head have ``padded_vocab_size`` rows."""

    vocab_size: int = 50_257
    n_layer: int = 12
    n_head: int = 6
    n_kv_head: int | None = None  # None: n_head (no grouped-query attention)
    n_embd: int = 768
    head_dim: int = 128
    mlp_ratio: float = 4.0
    method: str = "si-p-rope"
    tau: float = DEFAULT_TAU  # scale-invariant methods only
    train_length: int = 4096  # where NTK/YaRN start scaling and where LogN scales are initialised
    rope_theta: float = 10_000.0
    p_rope_base: float = 1024.0
    p_rope_fraction: float = 0.5
    vocab_multiple: int = 64
    attn_backend: str = "auto"  # a runtime choice, not part of the weights; load_checkpoint can override it

    def __post_init__(self) -> None:
        get_method(self.method)  # raises with the list of names
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        for name in ("vocab_size", "n_layer", "n_head", "n_kv_head", "n_embd", "head_dim", "train_length",
                     "vocab_multiple"):
            check_int(name, getattr(self, name), min=1)
        for name in ("mlp_ratio", "tau", "rope_theta", "p_rope_base"):
            check_float(name, getattr(self, name), min=0.0, min_open=True)
        check_float("p_rope_fraction", self.p_rope_fraction, min=0.0, max=1.0)
        if self.n_head % self.n_kv_head:
            raise UsageError(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head})")
        if self.head_dim % 2:
            raise UsageError(f"head_dim must be even, got {self.head_dim}")

    @property
    def padded_vocab_size(self) -> int:
        return pad_vocab(self.vocab_size, self.vocab_multiple)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPTConfig:
        return check_fields(cls, d)(**d)
