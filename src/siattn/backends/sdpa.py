"""PyTorch SDPA backend for attention without a logit transform (FlashAttention on CUDA, fused kernels on CPU).

Supports the plain methods (RoPE, p-RoPE, NoPE, NTK, YaRN and LogN, whose scaling is already folded into q).
SDPA's causal mask is aligned to the top-left corner, so causal inputs must have q_offset = 0 and Tq = Tk.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from siattn.backends.transforms import LogitTransform
from siattn.backends.varlen import same_document


def sdpa_unsupported(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, transform: LogitTransform, needs_grad: bool
) -> str | None:
    """Why SDPA cannot compute these inputs exactly, or None."""
    if transform.kind != "none":
        return f"SDPA has no {transform.kind} logit transform"
    return None


def sdpa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, transform: LogitTransform, q_offset: int,
    causal: bool, scale: float, cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """softmax(scale·q·kᵀ + causal mask)·v through ``F.scaled_dot_product_attention``. Shapes as every backend.
    ``cu_seqlens``: packed documents (:mod:`siattn.backends.varlen`) through a block-diagonal boolean (T, T)
    mask, which is materialised and keeps SDPA off its flash kernel: ``auto`` does not pick SDPA for them."""
    tq, tk = q.shape[2], k.shape[2]
    mask = None
    if cu_seqlens is not None:
        mask = same_document(cu_seqlens, tk, causal)
    elif causal and not (q_offset == 0 and tq == tk):
        # bottom-right (or offset) alignment: build the boolean mask explicitly (True = attend)
        qpos = torch.arange(q_offset, q_offset + tq, device=q.device)
        mask = qpos[:, None] >= torch.arange(tk, device=q.device)[None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and mask is None, scale=scale,
                                          enable_gqa=q.shape[1] != k.shape[1])
