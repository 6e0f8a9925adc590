"""transformers' packed inputs as ``cu_seqlens`` (:mod:`siattn.backends.varlen`).

transformers marks packed sequences (``DataCollatorWithFlattening``, padding-free training) in two ways: position
ids that restart at 0 at each sequence in one row of shape (1, T), and, for the FlashAttention path, the keyword
arguments ``cu_seq_lens_q`` / ``cu_seq_lens_k`` (with ``max_length_q`` / ``max_length_k``) that reach the attention
function. :func:`packed_cu_seqlens` turns either into the cumulative lengths that :func:`siattn.attention` takes,
or returns None for inputs that are not packed.
"""

from __future__ import annotations

from typing import Any

import torch

from siattn.backends.varlen import check_cu_seqlens_values


def cu_seqlens_from_position_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """cu_seqlens (N+1,) int32 of one packed row whose position ids restart at 0 at each sequence.

    position_ids: (1, T) or (T,) integers, 0 at the first token of each sequence and one more than the previous
    id elsewhere (0, 1, 2, 0, 1, 0, ... gives [0, 3, 5, ..., T]). Reads the ids on the host."""
    if not isinstance(position_ids, torch.Tensor) or position_ids.is_floating_point():
        raise ValueError("position_ids must be an integer torch.Tensor of shape (1, T) or (T,)")
    if position_ids.dim() == 2 and position_ids.shape[0] == 1:
        position_ids = position_ids[0]
    if position_ids.dim() != 1 or position_ids.numel() < 1:
        raise ValueError(f"position_ids must have shape (1, T) or (T,) with T >= 1 (one packed row), got "
                         f"{tuple(position_ids.shape)}")
    ids = position_ids.to("cpu", torch.int64)
    if ids[0] != 0:
        raise ValueError(f"position_ids of packed sequences must start at 0, got {int(ids[0])}")
    starts = ids == 0
    steps = ids[1:] - ids[:-1]
    bad = ~starts[1:] & (steps != 1)
    if bool(bad.any()):
        i = int(torch.nonzero(bad)[0]) + 1
        raise ValueError(f"position_ids of packed sequences must restart at 0 or count up by 1, got "
                         f"{int(ids[i - 1])} then {int(ids[i])} at index {i}")
    bounds = torch.cat([torch.nonzero(starts).flatten(), torch.tensor([ids.numel()])])
    return bounds.to(torch.int32)


def packed_cu_seqlens(position_ids: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor | None:
    """The cu_seqlens of transformers' packed inputs, or None when the inputs are not packed.

    ``cu_seq_lens_q`` and ``cu_seq_lens_k`` in ``kwargs`` (equal: packed self-attention) win; else
    ``position_ids`` of one row that restart at 0 somewhere after the first token. Several rows, or position ids
    that count up from 0 without restarting, are not packed (None)."""
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    if cu_q is not None or cu_k is not None:
        if cu_q is None or cu_k is None or not torch.equal(cu_q.cpu(), cu_k.cpu()):
            raise ValueError("cu_seq_lens_q and cu_seq_lens_k must both be given and equal (packed self-attention)")
        return check_cu_seqlens_values(cu_q, int(cu_q[-1]), "cpu").to(torch.int32)
    if position_ids is None or position_ids.dim() != 2 or position_ids.shape[0] != 1 or position_ids.shape[1] < 2:
        return None
    if not bool((position_ids[0, 1:] == 0).any()):
        return None
    return cu_seqlens_from_position_ids(position_ids)
