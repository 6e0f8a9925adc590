"""LogN / SSMax scaling: logits of a query that sees n keys are multiplied by s_h·log n (s_h learned per head).

Since the factor is constant along a query row it is applied to q: (s_h·log n_r)·(q_r·k) = (s_h·log n_r·q_r)·k,
so every backend (and its backward) supports it unchanged.
"""

from __future__ import annotations

import math

import torch


def logn_init(train_length: int) -> float:
    """Initial s making s·log n = 1 at the training length, so training starts as plain attention there."""
    return 1.0 / math.log(max(train_length, 2))


def logn_query_scale(
    q: torch.Tensor, s: torch.Tensor | float, q_offset: int, num_keys: int | None = None, *,
    keys_seen: torch.Tensor | None = None,
) -> torch.Tensor:
    """q·s_h·log(n_r) with n_r = q_offset + r + 1 keys seen by query row r (causal), or ``num_keys`` for all rows,
    or ``keys_seen[r]`` when given ((Tq,) integers >= 1: packed documents, where n restarts at each document).

    q: (B, H, Tq, D); s: scalar or (H,). Returns q's dtype; math in float32.
    """
    tq, heads = q.shape[2], q.shape[1]
    if keys_seen is not None:
        if keys_seen.shape != (tq,):
            raise ValueError(f"keys_seen must have shape ({tq},) (one count per query row), got "
                             f"{tuple(keys_seen.shape)}")
        n = keys_seen.to(device=q.device, dtype=torch.float32)
    elif num_keys is None:
        n = torch.arange(q_offset + 1, q_offset + tq + 1, device=q.device, dtype=torch.float32)
    else:
        n = torch.full((tq,), float(num_keys), device=q.device, dtype=torch.float32)
    s = torch.as_tensor(s, device=q.device, dtype=torch.float32)
    if s.dim() == 1 and s.numel() != heads:
        raise ValueError(f"logn_scale must be a scalar or have one value per head ({heads}), got {tuple(s.shape)}")
    factor = s.reshape(-1, 1, 1) * torch.log(n).view(1, tq, 1) if s.dim() == 1 else s * torch.log(n).view(1, tq, 1)
    return (q.float() * factor).to(q.dtype)
