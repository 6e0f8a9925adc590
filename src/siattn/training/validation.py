"""Validation loss during training, and the measurement the long-context evaluation shares with it.

The loss of a model on the first ``n_tokens`` targets of a token stream cut into non-overlapping windows of one
length (:func:`siattn.data.validation_windows`), summed per position: the trainer's periodic validation
(:func:`evaluate`, all ranks together) and ``siattn eval`` (:mod:`siattn.evaluation.loss_by_length`) both use
:func:`position_losses`. Memory: no gradients, one batch of windows at a time, the model's attention is
:func:`siattn.attention` (O(T) backends for long inputs), and for large T × vocab the output head and the
cross-entropy run over slices of the sequence (``head_chunk``) instead of materialising all the logits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from siattn.precision import autocast
from siattn.training.config import TrainConfig
from siattn.training.distributed import DistInfo, all_reduce_sum

# above this many logits (T × padded vocab per forward) the head runs over slices of the sequence
HEAD_CHUNK_THRESHOLD = 1 << 26
DEFAULT_HEAD_CHUNK = 8192


@torch.no_grad()
def per_token_losses(model: nn.Module, idx: torch.Tensor, targets: torch.Tensor, *,
                     context_length: int | None = None, head_chunk: int | None = None) -> torch.Tensor:
    """Cross-entropy (B, T) float32 of ``model`` on ``idx`` -> ``targets`` (0 where the target is -1).

    ``head_chunk``: tokens per slice of the output head (None: slice only when B·T·vocab is large, 0: never).
    Slicing runs the model with its head swapped for the identity (so its forward returns the normalised final
    hidden states) and applies the head slice by slice: the same numbers without the (B, T, vocab) logits.
    """
    B, T = idx.shape
    head = getattr(model, "lm_head", None)
    if head_chunk is None:
        vocab = head.out_features if isinstance(head, nn.Linear) else 0
        head_chunk = DEFAULT_HEAD_CHUNK if B * T * vocab > HEAD_CHUNK_THRESHOLD else 0
    if not head_chunk or not isinstance(head, nn.Linear) or head_chunk >= B * T:
        _, losses = model(idx, targets, context_length=context_length, return_per_token_loss=True)
        return losses.float()
    model.lm_head = nn.Identity()
    try:
        hidden, _ = model(idx, None, context_length=context_length)  # (B, T, C): norm(x), as float32
    finally:
        model.lm_head = head
    hidden = hidden.reshape(B * T, -1)
    flat_targets = targets.reshape(B * T)
    out = torch.empty(B * T, dtype=torch.float32, device=idx.device)
    for lo in range(0, B * T, head_chunk):
        logits = head(hidden[lo:lo + head_chunk].to(head.weight.dtype)).float()
        out[lo:lo + head_chunk] = F.cross_entropy(logits, flat_targets[lo:lo + head_chunk], ignore_index=-1,
                                                  reduction="none")
    return out.view(B, T)


def scored_tokens(n_tokens: int, lengths: Sequence[int]) -> int:
    """The largest count <= ``n_tokens`` that every length divides (each length scores exactly that many)."""
    step = math.lcm(*(int(n) for n in lengths))
    n = (int(n_tokens) // step) * step
    if n == 0:
        raise ValueError(f"--tokens {n_tokens} is less than one window of every length (lcm {step}); use at "
                         f"least {step}")
    return n


@torch.no_grad()
def position_losses(model: nn.Module, tokens: Any, length: int, n_tokens: int, *, batch_size: int = 1,
                    dtype: str = "auto", head_chunk: int | None = None, progress: bool = True,
                    desc: str | None = None, shard: tuple[int, int] = (0, 1)) -> tuple[np.ndarray, int]:
    """Loss (nats) summed over windows at each position, (length,) float64, and the number of windows, for the
    first ``n_tokens`` targets of ``tokens`` (a TokenArray, array or list) in non-overlapping windows of
    ``length``, ``batch_size`` windows per forward. ``n_tokens`` must be a multiple of ``length``. ``dtype``:
    ``auto`` (bfloat16 autocast on CUDA), ``float32`` or ``bfloat16``. ``shard = (rank, world_size)``: score
    only batches rank, rank + world_size, ... (the sums are this shard's). Raises when the loss is not finite."""
    from siattn.data import validation_windows

    rank, world_size = shard
    if not 0 <= rank < world_size:
        raise ValueError(f"shard must be (rank, world_size) with 0 <= rank < world_size, got {shard}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    n_windows = 0
    pos_sum = torch.zeros(length, dtype=torch.float64, device=device)
    bar = tqdm(total=n_tokens // length, desc=desc or f"loss@{length}", unit="win", disable=not progress,
               leave=False)
    try:
        for i, w in enumerate(validation_windows(tokens, length, n_tokens, batch_size=batch_size)):
            if i % world_size != rank:
                continue
            n_windows += w.shape[0]
            w = w.to(device)
            with autocast(device, dtype):
                losses = per_token_losses(model, w[:, :-1], w[:, 1:], context_length=length,
                                          head_chunk=head_chunk)
            pos_sum += losses.double().sum(0)
            bar.update(w.shape[0])
    finally:
        bar.close()
        model.train(was_training)
    position_loss_sum = pos_sum.cpu().numpy()
    if not math.isfinite(float(position_loss_sum.sum())):
        raise FloatingPointError(f"non-finite validation loss at length {length}")
    return position_loss_sum, n_windows


def validation_lengths(config: TrainConfig) -> list[int]:
    """The lengths a run validates at: ``seq_len`` × each of ``eval_multipliers``."""
    return [config.seq_len * m for m in config.eval_multipliers]


def eval_token_count(config: TrainConfig, val_tokens: int) -> int:
    """Scored tokens per length: ``eval_tokens``, within the validation split, rounded down to a multiple of
    every evaluation length (:func:`scored_tokens`). Raises when the split cannot hold that."""
    lengths = validation_lengths(config)
    budget = min(config.eval_tokens, val_tokens - 1)
    step = math.lcm(*lengths)
    if budget < step:
        raise ValueError(f"the validation split ({val_tokens} tokens) or eval_tokens ({config.eval_tokens}) is less "
                         f"than one window of every evaluation length (lcm {step} of {lengths}); use smaller "
                         "--eval-multipliers or more data")
    return scored_tokens(budget, lengths)


@torch.no_grad()
def evaluate(model: nn.Module, tokens: Any, lengths: list[int], n_tokens: int, batch_tokens: int, info: DistInfo,
             dtype: str = "auto") -> dict[int, float]:
    """Mean loss (nats/token) over the same ``n_tokens`` validation targets at each length
    (:func:`position_losses`); ranks split the batches of windows and sum their losses."""
    out = {}
    for length in lengths:
        position_loss_sum, n_windows = position_losses(
            model, tokens, length, n_tokens, batch_size=max(1, batch_tokens // length), dtype=dtype,
            progress=False, shard=(info.rank, info.world_size))
        total = torch.tensor([float(position_loss_sum.sum()), n_windows * length], dtype=torch.float64,
                             device=info.device)
        all_reduce_sum(total, info)
        out[length] = float(total[0] / total[1])
    return out
