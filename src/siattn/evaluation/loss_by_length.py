"""Validation loss at several context lengths, and loss as a function of position in the sequence.

    res = loss_at_length(model, ds.val, length=8192, n_tokens=1 << 16)      # one length
    res.loss                                    # mean nats/token over exactly n_tokens scored targets
    res.position_loss()                         # (8192,) mean loss at each position over the windows
    res.binned()                                # the same on log-spaced position bins (for a log-x plot)

Every length scores the same ``n_tokens`` targets on the same stretch of the validation split (the first
``n_tokens + 1`` tokens, cut into non-overlapping windows: :func:`siattn.data.validation_windows`), so losses
are comparable across lengths. The measurement is the trainer's own validation
(:func:`siattn.training.validation.position_losses`: no gradients, one batch of windows at a time, the output
head over slices of the sequence for large T × vocab); this module adds the per-position view and the bins.

Position p (1-based) is the number of tokens the prediction sees: index i of a window is position i + 1.
Log bins (:func:`log_bin_edges`) sit at floor(10^(k / bins_per_decade)) for every length, so the bins of
different lengths and checkpoints line up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch.nn as nn

from siattn.training.validation import position_losses, scored_tokens

DEFAULT_BINS_PER_DECADE = 10


def log_bin_edges(length: int, bins_per_decade: int = DEFAULT_BINS_PER_DECADE) -> np.ndarray:
    """Integer edges 1 = e_0 < e_1 < ... < e_k = length + 1 of log-spaced bins over positions 1..length.

    Bin j holds positions [e_j, e_{j+1}); interior edges are floor(10^(i / bins_per_decade)) (repeats
    dropped, so the first bins are single positions), identical for every length up to the cut at length + 1.
    """
    if length < 1 or bins_per_decade < 1:
        raise ValueError(f"length and bins_per_decade must be >= 1, got {length}, {bins_per_decade}")
    n = math.ceil(math.log10(length + 1) * bins_per_decade) + 1
    raw = np.floor(10.0 ** (np.arange(n + 1) / bins_per_decade) + 1e-9).astype(np.int64)
    return np.unique(np.concatenate([raw[raw < length + 1], [length + 1]]))


def bin_by_position(loss_sum: np.ndarray, count: np.ndarray | int,
                    bins_per_decade: int = DEFAULT_BINS_PER_DECADE) -> dict[str, list]:
    """Log-binned mean loss. ``loss_sum[i]``: summed loss at position i + 1 over ``count`` windows (an int,
    or one count per position). Returns lists: ``start``/``end`` (first/last position of each bin, inclusive),
    ``center`` (geometric mean of start and end), ``count`` (tokens in the bin), ``loss`` (their mean)."""
    loss_sum = np.asarray(loss_sum, dtype=np.float64)
    length = len(loss_sum)
    counts = np.broadcast_to(np.asarray(count, dtype=np.float64), (length,))
    edges = log_bin_edges(length, bins_per_decade)
    sums = np.add.reduceat(loss_sum, edges[:-1] - 1)
    cnts = np.add.reduceat(counts, edges[:-1] - 1)
    start, end = edges[:-1], edges[1:] - 1
    return {"start": start.tolist(), "end": end.tolist(), "center": np.sqrt(start * end).tolist(),
            "count": cnts.astype(np.int64).tolist(), "loss": (sums / np.maximum(cnts, 1)).tolist()}


@dataclass
class LengthLoss:
    """Validation loss at one context length."""

    length: int
    tokens: int  # scored targets
    windows: int
    loss_sum: float
    position_loss_sum: np.ndarray  # (length,) summed over windows

    @property
    def loss(self) -> float:
        """Mean nats/token."""
        return self.loss_sum / max(self.tokens, 1)

    def position_loss(self) -> np.ndarray:
        """(length,) mean loss at each position over the windows."""
        return self.position_loss_sum / max(self.windows, 1)

    def binned(self, bins_per_decade: int = DEFAULT_BINS_PER_DECADE) -> dict[str, list]:
        return bin_by_position(self.position_loss_sum, self.windows, bins_per_decade)

    def to_dict(self, bins_per_decade: int = DEFAULT_BINS_PER_DECADE) -> dict[str, Any]:
        return {"length": self.length, "loss": self.loss, "perplexity": math.exp(min(self.loss, 700.0)),
                "tokens": self.tokens, "windows": self.windows, "positions": self.binned(bins_per_decade)}


def loss_at_length(model: nn.Module, tokens: Any, length: int, n_tokens: int, *, batch_size: int = 1,
                   dtype: str = "auto", head_chunk: int | None = None, progress: bool = True,
                   desc: str | None = None, shard: tuple[int, int] = (0, 1)) -> LengthLoss:
    """Mean loss over the first ``n_tokens`` targets of ``tokens`` (a TokenArray, array or list) in
    non-overlapping windows of ``length``, ``batch_size`` windows per forward. ``n_tokens`` must be a multiple
    of ``length``. ``dtype``: ``auto`` (bfloat16 autocast on CUDA), ``float32`` or ``bfloat16``.
    ``shard = (rank, world_size)``: score only batches rank, rank + world_size, ... (the counts in the result
    are this shard's; summing ``loss_sum`` and ``tokens`` over the ranks gives the whole). The numbers are
    :func:`siattn.training.validation.position_losses`'."""
    position_loss_sum, n_windows = position_losses(model, tokens, length, n_tokens, batch_size=batch_size,
                                                   dtype=dtype, head_chunk=head_chunk, progress=progress,
                                                   desc=desc, shard=shard)
    return LengthLoss(length=length, tokens=n_windows * length, windows=n_windows,
                      loss_sum=float(position_loss_sum.sum()), position_loss_sum=position_loss_sum)


def loss_at_lengths(model: nn.Module, tokens: Any, lengths: Sequence[int], n_tokens: int, *,
                   batch_tokens: int | None = None, **kwargs: Any) -> dict[int, LengthLoss]:
    """:func:`loss_at_length` at every length, each scoring :func:`scored_tokens` (``n_tokens``, lengths)
    targets. ``batch_tokens``: windows per forward = max(1, batch_tokens // length) (None: one window)."""
    n = scored_tokens(n_tokens, lengths)
    out = {}
    for length in lengths:
        batch = max(1, batch_tokens // length) if batch_tokens else 1
        out[int(length)] = loss_at_length(model, tokens, int(length), n, batch_size=batch, **kwargs)
    return out
