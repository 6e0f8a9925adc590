"""Packed sequences: documents laid end to end in one row, delimited by cumulative lengths ``cu_seqlens``.

As in FlashAttention's varlen interface, ``cu_seqlens`` is an int32/int64 tensor of shape (N+1,) with
cu_seqlens[0] = 0, strictly increasing, cu_seqlens[-1] = T: document d holds the positions
cu_seqlens[d] .. cu_seqlens[d+1] − 1 of packed q (1, H, T, D) and k, v (1, Hkv, T, D). Query i and key j
interact only when they lie in one document, and every position restarts at 0 at each document. The distance
t = i − j of two positions of one document does not change when the document is shifted, so the logit transforms
are unchanged; only the masks (and LogN's key count, :func:`keys_seen`) depend on the documents.
"""

from __future__ import annotations

import itertools

import torch

CU_SEQLENS_DTYPES = (torch.int32, torch.int64)


def check_cu_seqlens(cu_seqlens: torch.Tensor, q: torch.Tensor, k: torch.Tensor, q_offset: int) -> torch.Tensor:
    """``cu_seqlens`` as int64 on q's device after checking it and the packed layout (q (1, H, T, D), k (1, Hkv,
    T, D), q_offset = 0); one-line ValueErrors naming the parameter. Reads the (N+1) values on the host (one
    synchronisation when they live on a GPU)."""
    check_cu_seqlens_tensor(cu_seqlens)
    if q.shape[0] != 1:
        raise ValueError(f"with cu_seqlens, q, k, v must hold one packed row (batch 1), got batch {q.shape[0]}")
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"with cu_seqlens, q and k must have one length (packed self-attention), got "
                         f"{q.shape[2]} and {k.shape[2]}")
    if q_offset != 0:
        raise ValueError(f"with cu_seqlens, q_offset must be 0 (positions restart at each document), got {q_offset}")
    return check_cu_seqlens_values(cu_seqlens, q.shape[2], q.device)


def check_cu_seqlens_tensor(cu_seqlens: torch.Tensor) -> None:
    """Raise a one-line ValueError unless ``cu_seqlens`` is an int32/int64 tensor of shape (N+1,), N >= 1."""
    if not isinstance(cu_seqlens, torch.Tensor):
        raise ValueError(f"cu_seqlens must be an int32 or int64 torch.Tensor or None, got "
                         f"{type(cu_seqlens).__name__}")
    if cu_seqlens.dtype not in CU_SEQLENS_DTYPES:
        raise ValueError(f"cu_seqlens.dtype must be torch.int32 or torch.int64, got {cu_seqlens.dtype}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must have shape (N+1,) with N >= 1 documents, got {tuple(cu_seqlens.shape)}")


def check_cu_seqlens_values(cu_seqlens: torch.Tensor, total: int, device: torch.device | str) -> torch.Tensor:
    """``cu_seqlens`` (checked by :func:`check_cu_seqlens_tensor`) as int64 on ``device`` after checking
    cu_seqlens[0] = 0 < cu_seqlens[1] < ... < cu_seqlens[-1] = ``total``."""
    check_cu_seqlens_tensor(cu_seqlens)
    values = cu_seqlens.tolist()
    if values[0] != 0:
        raise ValueError(f"cu_seqlens[0] must be 0, got {values[0]}")
    if values[-1] != total:
        raise ValueError(f"cu_seqlens[-1] must equal the packed length T = {total}, got {values[-1]}")
    for d, (a, b) in enumerate(itertools.pairwise(values)):
        if b <= a:
            raise ValueError(f"cu_seqlens must be strictly increasing (documents of length >= 1), got "
                             f"cu_seqlens[{d}] = {a} and cu_seqlens[{d + 1}] = {b}")
    return cu_seqlens.to(device=device, dtype=torch.int64)


def document_ids(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """(T,) int64: the document each packed position belongs to."""
    positions = torch.arange(total, device=cu_seqlens.device)
    return torch.searchsorted(cu_seqlens[1:], positions, right=True)


def document_bounds(cu_seqlens: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(start, end), each (T,) int64: the first position of each position's document and one past its last."""
    doc = document_ids(cu_seqlens, total)
    return cu_seqlens[doc], cu_seqlens[doc + 1]


def positions_in_documents(cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
    """(T,) int64: each position counted from the start of its document (0, 1, ..., 0, 1, ...)."""
    start, _ = document_bounds(cu_seqlens, total)
    return torch.arange(total, device=cu_seqlens.device) - start


def keys_seen(cu_seqlens: torch.Tensor, total: int, causal: bool) -> torch.Tensor:
    """(T,) int64: the number of keys each query sees, its position in its document + 1 (causal) or the length
    of its document."""
    start, end = document_bounds(cu_seqlens, total)
    if causal:
        return torch.arange(1, total + 1, device=cu_seqlens.device) - start
    return end - start


def same_document(cu_seqlens: torch.Tensor, total: int, causal: bool) -> torch.Tensor:
    """(T, T) bool, True where query i may see key j: one document, and j <= i when ``causal``. Materialised:
    for the backends that take a dense mask (sdpa)."""
    doc = document_ids(cu_seqlens, total)
    keep = doc[:, None] == doc[None, :]
    if causal:
        keep = keep & torch.ones(total, total, dtype=torch.bool, device=doc.device).tril()
    return keep


def from_lengths(lengths: list[int] | tuple[int, ...], device: torch.device | str | None = None) -> torch.Tensor:
    """cu_seqlens (N+1,) int32 of documents of these lengths (each >= 1), laid end to end."""
    if not lengths or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in lengths):
        raise ValueError(f"lengths must be a non-empty list of ints >= 1, got {lengths!r}")
    out = torch.zeros(len(lengths) + 1, dtype=torch.int32, device=device)
    out[1:] = torch.cumsum(torch.tensor(lengths, dtype=torch.int32, device=device), 0)
    return out
