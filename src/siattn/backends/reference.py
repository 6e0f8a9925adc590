"""Reference backend: materialises the (Tq, Tk) score matrix in float32 (float64 for float64 inputs).

The ground truth every other backend is tested against; memory O(B·H·Tq·Tk). Its steps are the one
implementation of materialised attention in siattn: :func:`grouped_scores` (S = scale·q·kᵀ per group of query
heads), :func:`attention_logits` (the logit transform and the causal mask), :func:`masked_logit_terms` (a boolean
mask's logits as L = a·S + bias) with :func:`attention_with_terms`, and :func:`reference_attention` (softmax and
values). The Hugging Face bridge's masked path calls :func:`reference_attention` with a boolean ``mask``, or, while
decoding, the two masked steps with the terms computed once for all layers; the model analysis calls the first two
on the rows it studies.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from siattn.backends.transforms import LogitTransform, logit_terms, transform_logits


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; everything else is computed in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def distances(q_start: int | torch.Tensor, tq: int, k_start: int, tk: int, device: torch.device) -> torch.Tensor:
    """(tq, tk) signed distance i − j between query positions q_start.. and key positions k_start.. (int64);
    ``q_start`` may be a 0-dim tensor (an offset read from a mask on the device, without a host sync)."""
    qpos = torch.arange(tq, device=device) + q_start
    kpos = torch.arange(k_start, k_start + tk, device=device)
    return qpos[:, None] - kpos[None, :]


def grouped_scores(q: torch.Tensor, k: torch.Tensor, scale: float, math_dtype: torch.dtype | None = None
                   ) -> torch.Tensor:
    """S = scale·q·kᵀ in ``math_dtype`` (default :func:`compute_dtype`), query heads grouped by the key head
    they read.

    q: (B, H, Tq, D); k: (B, Hkv, Tk, D) with H = Hkv·G. Returns (B, Hkv, G, Tq, Tk).
    """
    batch, heads, tq, dim = q.shape
    hkv = k.shape[1]
    cd = math_dtype or compute_dtype(q.dtype)
    qg = q.to(cd).reshape(batch, hkv, heads // hkv, tq, dim)
    kf = k.to(cd)[:, :, None]
    return torch.matmul(qg, kf.transpose(-1, -2)) * scale


def attention_logits(scores: torch.Tensor, signed: torch.Tensor, transform: LogitTransform, num_heads: int, *,
                     causal: bool = True) -> torch.Tensor:
    """L = f(S; |t|) for the scores of :func:`grouped_scores` and the signed distances ``signed`` (Tq, Tk),
    t = query position − key position; with ``causal``, −inf where t < 0 (keys after the query)."""
    logits, _ = transform_logits(scores, signed.abs(), transform, num_heads)
    if causal:
        logits = logits.masked_fill(signed < 0, float("-inf"))
    return logits


def _group_mask(mask: torch.Tensor, hkv: int, groups: int) -> torch.Tensor:
    """A boolean (B|1, 1|H, Tq, Tk) mask in the grouped layout (B|1, 1|Hkv, 1|G, Tq, Tk)."""
    if mask.shape[1] == 1:
        return mask[:, :, None]
    return mask.reshape(mask.shape[0], hkv, groups, *mask.shape[-2:])


def masked_logit_terms(mask: torch.Tensor, signed: torch.Tensor, transform: LogitTransform, num_heads: int,
                       num_kv_heads: int, dtype: torch.dtype, *, causal: bool = False
                       ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """A masked call's logits as L = a·S + bias, and which query rows see a key.

    mask: boolean (B|1, 1|H, Tq, Tk), True = attend (and t >= 0 with ``causal``); signed: (Tq, Tk) distances.
    Returns (a or None for 1, bias, has_key) in ``dtype``, grouped as :func:`grouped_scores`: bias is the
    transform's additive term where a key is kept and the dtype's lowest finite value where it is blocked (a
    finite fill keeps fully blocked rows NaN-free); has_key (B|1, 1|Hkv, 1|G, Tq, 1) is 1 for rows that see a key,
    0 for rows that see none. They depend on the mask and the distances only, so callers that attend with one mask
    in many layers compute them once.
    """
    keep = _group_mask(mask, num_kv_heads, num_heads // num_kv_heads)
    if causal:
        keep = keep & (signed >= 0)
    a, b = logit_terms(signed.abs(), transform, num_heads, num_kv_heads, dtype)
    kept = torch.zeros((), dtype=dtype, device=mask.device) if b is None else b
    bias = torch.where(keep, kept, torch.finfo(dtype).min)
    return a, bias, keep.any(-1, keepdim=True).to(dtype)


def _weighted_values(probs: torch.Tensor, v: torch.Tensor, dropout: float, out_shape: tuple[int, ...],
                     out_dtype: torch.dtype) -> torch.Tensor:
    """probs (B, Hkv, G, Tq, Tk) · v (B, Hkv, Tk, Dv), after dropout, as (B, H, Tq, Dv) in ``out_dtype``."""
    if dropout > 0:
        probs = F.dropout(probs, p=dropout, training=True)
    out = torch.matmul(probs, v.to(probs.dtype)[:, :, None])
    return out.reshape(out_shape).to(out_dtype)


def attention_with_terms(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, a: torch.Tensor | None,
                         bias: torch.Tensor, has_key: torch.Tensor, *, scale: float, dropout: float = 0.0
                         ) -> torch.Tensor:
    """softmax(a·S + bias)·v with S = scale·q·kᵀ, rows with has_key = 0 giving 0, in ``bias``'s dtype.
    q: (B, H, Tq, D); k, v: (B, Hkv, Tk, D); a, bias, has_key as :func:`masked_logit_terms` returns them.
    Returns (B, H, Tq, Dv) in q's dtype."""
    scores = grouped_scores(q, k, scale, bias.dtype)
    logits = scores + bias if a is None else torch.addcmul(bias, scores, a)
    probs = torch.softmax(logits, dim=-1) * has_key
    return _weighted_values(probs, v, dropout, (*q.shape[:3], v.shape[-1]), q.dtype)


def reference_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, transform: LogitTransform, q_offset: int | torch.Tensor,
    causal: bool, scale: float, mask: torch.Tensor | None = None, dropout: float = 0.0,
    math_dtype: torch.dtype | None = None, cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """softmax(f(scale·q·kᵀ; t) + masks)·v.  q: (B, H, Tq, D); k, v: (B, Hkv, Tk, D) -> (B, H, Tq, D).

    Query row r sits at position q_offset + r, key column c at c, t = q_offset + r − c (``q_offset``: an int, or a
    0-dim integer tensor for callers that must not sync with the device). ``mask``: an optional
    boolean (B|1, 1|H, Tq, Tk), True = attend, combined with the causal mask when ``causal``; with a mask, blocked
    logits are filled with the dtype's lowest finite value and rows that see no key give 0. ``dropout``: the
    probability of dropping each attention weight (training only). ``math_dtype``: the dtype of every step
    (default :func:`compute_dtype`); ``math_dtype=q.dtype`` is the plain formula in the input's precision, the
    yardstick :mod:`siattn.benchmarking.accuracy` holds the other backends to. ``cu_seqlens``: packed documents
    (:mod:`siattn.backends.varlen`; B = 1, Tq = Tk, q_offset = 0), each attended on its own (a loop over the
    documents, so the result is that of running them separately, bit for bit).
    """
    if cu_seqlens is not None:
        bounds = cu_seqlens.tolist()
        return torch.cat([
            reference_attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], transform=transform, q_offset=0,
                                causal=causal, scale=scale, dropout=dropout, math_dtype=math_dtype,
                                mask=None if mask is None else mask[..., s:e, s:e])
            for s, e in itertools.pairwise(bounds)], dim=2)
    heads, tq = q.shape[1], q.shape[2]
    hkv, tk = k.shape[1], k.shape[2]
    cd = math_dtype or compute_dtype(q.dtype)
    signed = distances(q_offset, tq, 0, tk, q.device)
    if mask is not None:
        terms = masked_logit_terms(mask, signed, transform, heads, hkv, cd, causal=causal)
        return attention_with_terms(q, k, v, *terms, scale=scale, dropout=dropout)
    scores = grouped_scores(q, k, scale, cd)
    probs = torch.softmax(attention_logits(scores, signed, transform, heads, causal=causal), dim=-1)
    return _weighted_values(probs, v, dropout, (*q.shape[:3], v.shape[-1]), q.dtype)
