"""Batches for training and validation, read window by window from memory-mapped tokens."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from siattn.data.errors import DataError
from siattn.data.shards import TokenArray, as_token_array


class SequenceLoader:
    """Endless (x, y) training batches in a fixed, seeded, resumable order.

    The tokens are cut into ``n_windows = (len(tokens) - 1) // seq_len`` windows of ``seq_len + 1`` tokens
    starting at multiples of ``seq_len`` (neighbours share one boundary token, so every token is a target
    once per epoch). Epoch ``e`` visits the windows in ``permutation(n_windows)`` drawn from
    ``numpy.random.default_rng([seed, e])``, ``batch_size * world_size`` windows per global step; rank ``r``
    takes the ``r``-th slice of ``batch_size``. The last partial global batch of an epoch is dropped.

    Iterating yields ``x, y``: int64 tensors of shape (batch_size, seq_len), ``y = x`` shifted by one, without
    end: the epoch counter advances by itself. ``state_dict()`` / ``load_state_dict()`` hold (epoch, step), so
    a resumed run sees exactly the batches the uninterrupted one would have.
    """

    def __init__(self, tokens: TokenArray | np.ndarray | Sequence[int], seq_len: int, batch_size: int, *,
                 seed: int = 0, rank: int = 0, world_size: int = 1):
        if seq_len < 1 or batch_size < 1:
            raise ValueError(f"seq_len and batch_size must be positive, got {seq_len}, {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.tokens = as_token_array(tokens)
        self.seq_len, self.batch_size = int(seq_len), int(batch_size)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.n_windows = max(0, (len(self.tokens) - 1) // self.seq_len)
        self.steps_per_epoch = self.n_windows // (self.batch_size * self.world_size)
        if self.steps_per_epoch == 0:
            raise DataError(f"{len(self.tokens)} tokens hold {self.n_windows} windows of {self.seq_len + 1}: "
                            f"fewer than one global batch ({self.batch_size} x {self.world_size} ranks); "
                            "use more data or a smaller seq_len / batch_size")
        self.epoch = 0
        self.step = 0  # steps done in the current epoch
        self._perm: np.ndarray | None = None
        self._perm_epoch = -1

    @property
    def tokens_per_epoch(self) -> int:
        """Target tokens one epoch trains on, summed over all ranks."""
        return self.steps_per_epoch * self.batch_size * self.world_size * self.seq_len

    @property
    def tokens_per_step(self) -> int:
        """Target tokens per global step (all ranks)."""
        return self.batch_size * self.world_size * self.seq_len

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._perm is None or self._perm_epoch != epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)
            self._perm_epoch = epoch
        return self._perm

    def window_starts(self, epoch: int, step: int) -> np.ndarray:
        """Token offsets of this rank's windows at (epoch, step); what ``__next__`` reads."""
        perm = self._permutation(epoch)
        lo = step * self.batch_size * self.world_size + self.rank * self.batch_size
        return perm[lo:lo + self.batch_size].astype(np.int64) * self.seq_len

    def __iter__(self) -> SequenceLoader:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.step >= self.steps_per_epoch:
            self.epoch += 1
            self.step = 0
        starts = self.window_starts(self.epoch, self.step)
        self.step += 1
        buf = np.stack([self.tokens.get(s, self.seq_len + 1) for s in starts]).astype(np.int64)
        batch = torch.from_numpy(buf)
        return batch[:, :-1], batch[:, 1:]

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step": self.step, "seed": self.seed, "seq_len": self.seq_len,
                "batch_size": self.batch_size, "world_size": self.world_size, "n_windows": self.n_windows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``; seed, seq_len and window count must match.

        The batch size and world size may differ (a run saved on 2 GPUs resumed on 1): the position is the
        number of windows the epoch has consumed, which must then be a whole number of this loader's steps.
        With the same per-step total (micro-batch × ranks × accumulation) every global step then trains on the
        same windows as before; only where the epoch ends (its last partial batch is dropped) can differ."""
        for key in ("seed", "seq_len", "n_windows"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"cannot resume: saved {key}={state[key]} but this loader has "
                                 f"{key}={getattr(self, key)}")
        per_step = int(state.get("batch_size", self.batch_size)) * int(state.get("world_size", self.world_size))
        consumed = int(state["step"]) * per_step
        here = self.batch_size * self.world_size
        if consumed % here:
            raise ValueError(f"cannot resume: {consumed} windows of the epoch were consumed ({state['step']} steps of "
                             f"{per_step}), not a whole number of this loader's steps of {here} windows "
                             f"(batch_size {self.batch_size} × world_size {self.world_size})")
        self.epoch, self.step = int(state["epoch"]), consumed // here


def pack_rows(x: torch.Tensor, y: torch.Tensor, eod_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A (B, T) batch as one packed row of documents: (x (1, B·T), y (1, B·T), cu_seqlens (N+1,) int32 on x's
    device). A document begins at every row start and at every ``eod_id`` in x (prepared data puts one before each
    document), so no position attends across a row or a document boundary (:func:`siattn.attention`'s
    ``cu_seqlens``)."""
    if x.dim() != 2 or x.shape != y.shape:
        raise ValueError(f"x and y must be (batch, seq_len) of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    batch, length = x.shape
    flat = x.reshape(1, batch * length)
    starts = flat[0] == eod_id
    starts[::length] = True
    bounds = torch.cat([torch.nonzero(starts).flatten(), torch.tensor([batch * length], device=x.device)])
    return flat, y.reshape(1, batch * length), bounds.to(torch.int32)


def validation_windows(tokens: TokenArray | np.ndarray | Sequence[int], seq_len: int, n_tokens: int, *,
                       batch_size: int = 1, allow_remainder: bool = False) -> Iterator[torch.Tensor]:
    """Fixed validation windows: ``n_tokens // seq_len`` windows of ``seq_len + 1`` tokens from the start of
    ``tokens``, starting at multiples of ``seq_len``, yielded as int64 tensors of shape (b, seq_len + 1) with
    b = ``batch_size`` (the last batch may be smaller). Inputs are ``w[:, :-1]``, targets ``w[:, 1:]``.

    Every length scores exactly ``n_tokens`` targets over the same stretch of text, so losses at different
    lengths are comparable: ``n_tokens`` must be a multiple of ``seq_len`` unless ``allow_remainder``.
    """
    tokens = as_token_array(tokens)
    if seq_len < 1 or n_tokens < 1 or batch_size < 1:
        raise ValueError(f"seq_len, n_tokens and batch_size must be positive, got {seq_len}, {n_tokens}, "
                         f"{batch_size}")
    if n_tokens % seq_len and not allow_remainder:
        raise ValueError(f"n_tokens={n_tokens} is not a multiple of seq_len={seq_len}, so this length "
                         "would score a different number of tokens; use a multiple of every length")
    n_windows = n_tokens // seq_len
    need = n_windows * seq_len + 1
    if n_windows == 0 or len(tokens) < need:
        raise DataError(f"the validation split has {len(tokens)} tokens but {n_windows} windows of "
                        f"{seq_len + 1} need {max(need, seq_len + 1)}; lower n_tokens or prepare with a "
                        "larger val_fraction")
    return _windows(tokens, seq_len, n_windows, batch_size)


def _windows(tokens: TokenArray, seq_len: int, n_windows: int, batch_size: int) -> Iterator[torch.Tensor]:
    for lo in range(0, n_windows, batch_size):
        b = min(batch_size, n_windows - lo)
        flat = tokens.get(lo * seq_len, b * seq_len + 1).astype(np.int64)
        idx = np.arange(b)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
        yield torch.from_numpy(flat[idx])


def unigram_entropy(tokens: TokenArray | np.ndarray | Sequence[int], *, chunk: int = 1 << 24) -> float:
    """Entropy of the token frequency distribution in nats/token: the loss of the best context-free model,
    a ceiling any trained model should beat."""
    tokens = as_token_array(tokens)
    counts = np.zeros(0, dtype=np.int64)
    for piece in tokens.iter_chunks(chunk):
        c = np.bincount(np.asarray(piece, dtype=np.int64))
        if len(c) > len(counts):
            c[:len(counts)] += counts
            counts = c
        else:
            counts[:len(c)] += c
    total = counts.sum()
    if total == 0:
        raise ValueError("unigram_entropy of an empty token sequence")
    p = counts[counts > 0] / total
    return float(-(p * np.log(p)).sum())
