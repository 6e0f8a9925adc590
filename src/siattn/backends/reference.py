"""Reference backend: materialises the (Tq, Tk) score matrix in float32 (float64 for float64 inputs).

The ground truth every other backend is tested against; memory O(B·H·Tq·Tk).
"""

from __future__ import annotations

import torch

from siattn.backends.transforms import LogitTransform, transform_logits


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def distances(q_start: int, tq: int, k_start: int, tk: int, device: torch.device) -> torch.Tensor:
    """(tq, tk) signed distance i − j between query positions q_start.. and key positions k_start.. (int64)."""
    qpos = torch.arange(q_start, q_start + tq, device=device)
    kpos = torch.arange(k_start, k_start + tk, device=device)
    return qpos[:, None] - kpos[None, :]


def reference_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, transform: LogitTransform, q_offset: int,
    causal: bool, scale: float,
) -> torch.Tensor:
    """softmax(f(scale·q·kᵀ; t) + causal mask)·v.  q: (B, H, Tq, D); k, v: (B, Hkv, Tk, D) -> (B, H, Tq, D)."""
    batch, heads, tq, dim = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    cd = compute_dtype(q.dtype)
    qg = q.to(cd).reshape(batch, hkv, heads // hkv, tq, dim)
    kf = k.to(cd)[:, :, None]
    vf = v.to(cd)[:, :, None]
    scores = torch.matmul(qg, kf.transpose(-1, -2)) * scale
    signed = distances(q_offset, tq, 0, tk, q.device)
    logits, _ = transform_logits(scores, signed.abs(), transform, heads)
    if causal:
        logits = logits.masked_fill(signed < 0, float("-inf"))
    out = torch.matmul(torch.softmax(logits, dim=-1), vf)
    return out.reshape(batch, heads, tq, v.shape[-1]).to(q.dtype)
