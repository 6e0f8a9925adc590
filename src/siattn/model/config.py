"""The network's configuration: :class:`GPTConfig` says what the model is.

It is saved with every checkpoint and is all that :func:`siattn.training.load_checkpoint` needs to rebuild the
model. How a run trains it (data, batch, optimiser, schedule) is :class:`siattn.training.TrainConfig`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from siattn.backends import backend_names
from siattn.errors import UsageError
from siattn.methods import METHODS, get_method
from siattn.options import check_options, option
from siattn.schedule import DEFAULT_TAU


def method_names() -> list[str]:
    """The registered attention methods (the registry may grow after import)."""
    return sorted(METHODS)


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

    vocab_size: int = option(50_257, "token ids the model reads (the embedding has padded_vocab_size rows)", min=1,
                             derived="the dataset's tokenizer")
    n_layer: int = option(12, "transformer blocks", min=1)
    n_head: int = option(6, "query heads per block", min=1)
    n_kv_head: int | None = option(None, "key/value heads (grouped-query attention; default: n_head)", min=1)
    n_embd: int = option(768, "width of the residual stream", min=1)
    head_dim: int = option(128, "dimension of each head (even)", min=1)
    mlp_ratio: float = option(4.0, "hidden width of the ReLU² MLP as a multiple of n_embd", min=0.0, min_open=True)
    method: str = option("si-p-rope", "attention method (positional encoding + logit transform)",
                         choices=method_names)
    tau: float = option(DEFAULT_TAU, "τ of the scale-invariant methods", min=0.0, min_open=True)
    train_length: int = option(4096, "training length: where NTK/YaRN start scaling and LogN scales are "
                               "initialised", min=1, derived="seq_len")
    rope_theta: float = option(10_000.0, "RoPE base θ", min=0.0, min_open=True)
    p_rope_base: float = option(1024.0, "p-RoPE base (presets: 1024 · seq_len / 4096, see ARCHITECTURE.md)",
                                min=0.0, min_open=True)
    p_rope_fraction: float = option(0.5, "share of the head dimension that p-RoPE rotates", min=0.0, max=1.0)
    vocab_multiple: int = option(64, "the embedding's rows are vocab_size rounded up to a multiple of this", min=1)
    attn_backend: str = option("auto", "attention backend (a runtime choice, not part of the weights)",
                               choices=backend_names)

    def __post_init__(self) -> None:
        get_method(self.method)  # raises with the list of names
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        check_options(self)
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
