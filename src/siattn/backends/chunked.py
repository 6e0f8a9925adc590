"""Chunked backend: blockwise online softmax with a recomputing backward; O(T·block) memory, CPU and CUDA.

Forward, for each query block and each visible key block (FlashAttention's recurrence, in float32):
    L = f(scale·q·kᵀ; t);  m' = max(m, rowmax L);  l = l·e^(m−m') + Σ e^(L−m');  acc = acc·e^(m−m') + e^(L−m')·v
and the row log-sum-exp lse = m + log l is kept for the backward, which recomputes P = e^(L − lse) block by block:
    dV += Pᵀ·dO;  dL = P ∘ (dO·Vᵀ − rowsum(dO ∘ O));  dS = dL ∘ ∂L/∂S;  dQ += scale·dS·K;  dK += scale·dSᵀ·Q.
Key blocks wholly above the causal diagonal are skipped, so causal attention does about half the work. With packed
documents (``cu_seqlens``) the key blocks outside a query block's documents are skipped as well.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator

import torch

from siattn.backends.reference import compute_dtype, distances
from siattn.backends.transforms import LogitTransform, transform_logits
from siattn.backends.varlen import document_ids

DEFAULT_BLOCK_Q = 256
DEFAULT_BLOCK_K = 512


def _blocks(
    tq: int, tk: int, q_offset: int, causal: bool, block_q: int, block_k: int, bounds: list[int] | None = None,
) -> Iterator[tuple[int, int, list[tuple[int, int, bool]]]]:
    """Yield (q_start, q_end, [(k_start, k_end, needs_mask), ...]) over the visible key blocks. ``bounds``:
    cu_seqlens on the host (packed documents, q_offset = 0): a query block's keys start at the document of its
    first query and end with the document of its last one; a block needs a mask unless all its keys and queries
    lie in one document (and, when ``causal``, every key is at or before every query)."""
    for qs in range(0, tq, block_q):
        qe = min(tq, qs + block_q)
        if bounds is None:
            k_start, k_stop = 0, min(tk, q_offset + qe) if causal else tk
        else:
            first, last = bisect.bisect_right(bounds, qs) - 1, bisect.bisect_right(bounds, qe - 1) - 1
            k_start, k_stop = bounds[first], qe if causal else bounds[last + 1]
        kblocks = []
        for ks in range(k_start, k_stop, block_k):
            ke = min(k_stop, ks + block_k)
            # the block needs a mask when some key is after some query of the block
            needs_mask = causal and ke - 1 > q_offset + qs
            if bounds is not None:
                needs_mask = needs_mask or not (bounds[last] <= ks and ke <= bounds[first + 1])
            kblocks.append((ks, ke, needs_mask))
        yield qs, qe, kblocks


def _block_logits(
    qb: torch.Tensor, kb: torch.Tensor, qs: int, ks: int, q_offset: int, needs_mask: bool, scale: float,
    transform: LogitTransform, heads: int, causal: bool = True, doc: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Logits of one block, their slope w.r.t. the scores, and the mask (True = hidden) if needed: keys after the
    query (``causal``), and with ``doc`` (the (T,) document ids of packed documents) keys of another document."""
    signed = distances(q_offset + qs, qb.shape[-2], ks, kb.shape[-2], qb.device)
    scores = torch.matmul(qb, kb.transpose(-1, -2)) * scale
    logits, slope = transform_logits(scores, signed.abs(), transform, heads)
    hidden = None
    if needs_mask:
        if doc is None:
            hidden = signed < 0
        else:
            hidden = doc[qs:qs + qb.shape[-2], None] != doc[None, ks:ks + kb.shape[-2]]
            if causal:
                hidden = hidden | (signed < 0)
    if hidden is not None:
        logits = logits.masked_fill(hidden, float("-inf"))
    return logits, slope, hidden


def _finite_or_zero(x: torch.Tensor) -> torch.Tensor:
    """x with −inf (a row that has seen no key yet) replaced by 0, so that e^(L − x) and e^(m − x) stay 0, not NaN."""
    return torch.where(x == float("-inf"), torch.zeros_like(x), x)


class _ChunkedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, transform, q_offset, causal, scale, block_q, block_k, cu_seqlens=None):
        bounds = None if cu_seqlens is None else cu_seqlens.tolist()
        doc = None if cu_seqlens is None else document_ids(cu_seqlens, q.shape[2])
        batch, heads, tq, dim = q.shape
        hkv, tk, dv = k.shape[1], k.shape[2], v.shape[-1]
        cd = compute_dtype(q.dtype)
        qg = q.to(cd).reshape(batch, hkv, heads // hkv, tq, dim)
        kf, vf = k.to(cd)[:, :, None], v.to(cd)[:, :, None]
        out = torch.empty(batch, hkv, heads // hkv, tq, dv, dtype=cd, device=q.device)
        lse = torch.empty(batch, hkv, heads // hkv, tq, dtype=cd, device=q.device)
        for qs, qe, kblocks in _blocks(tq, tk, q_offset, causal, block_q, block_k, bounds):
            qb = qg[..., qs:qe, :]
            row_max = row_sum = acc = None
            for ks, ke, needs_mask in kblocks:
                logits, _, _ = _block_logits(qb, kf[..., ks:ke, :], qs, ks, q_offset, needs_mask, scale,
                                             transform, heads, causal, doc)
                block_max = logits.amax(dim=-1)
                if row_max is None:
                    new_max = block_max
                    # with documents, a row may see no key of a block (−inf maximum)
                    shift = new_max if doc is None else _finite_or_zero(new_max)
                    p = torch.exp(logits - shift[..., None])
                    row_sum = p.sum(-1)
                    acc = torch.matmul(p, vf[..., ks:ke, :])
                else:
                    new_max = torch.maximum(row_max, block_max)
                    shift = new_max if doc is None else _finite_or_zero(new_max)
                    correction = torch.exp(row_max - shift)
                    p = torch.exp(logits - shift[..., None])
                    row_sum = row_sum * correction + p.sum(-1)
                    acc = torch.addcmul(torch.matmul(p, vf[..., ks:ke, :]), acc, correction[..., None])
                row_max = new_max
            out[..., qs:qe, :] = acc / row_sum[..., None]
            lse[..., qs:qe] = row_max + torch.log(row_sum)
        ctx.save_for_backward(q, k, v, out, lse, doc)
        ctx.config = (transform, q_offset, causal, scale, block_q, block_k, bounds)
        return out.reshape(batch, heads, tq, dv).to(q.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        if torch.is_grad_enabled():  # create_graph=True: a second derivative would silently come out zero
            raise RuntimeError("the chunked attention backend has no second derivative (double backward, "
                               "create_graph=True); use backend='reference' for higher-order gradients")
        q, k, v, out, lse, doc = ctx.saved_tensors
        transform, q_offset, causal, scale, block_q, block_k, bounds = ctx.config
        batch, heads, tq, dim = q.shape
        hkv, tk = k.shape[1], k.shape[2]
        cd = out.dtype
        groups = heads // hkv
        qg = q.to(cd).reshape(batch, hkv, groups, tq, dim)
        kf, vf = k.to(cd)[:, :, None], v.to(cd)[:, :, None]
        dout = grad_out.to(cd).reshape(batch, hkv, groups, tq, -1)
        delta = (dout * out).sum(-1)
        dq = torch.zeros_like(qg)
        dk = torch.zeros(batch, hkv, tk, dim, dtype=cd, device=q.device)
        dv = torch.zeros(batch, hkv, tk, v.shape[-1], dtype=cd, device=q.device)
        for qs, qe, kblocks in _blocks(tq, tk, q_offset, causal, block_q, block_k, bounds):
            qb, dob = qg[..., qs:qe, :], dout[..., qs:qe, :]
            for ks, ke, needs_mask in kblocks:
                kb, vb = kf[..., ks:ke, :], vf[..., ks:ke, :]
                logits, slope, _ = _block_logits(qb, kb, qs, ks, q_offset, needs_mask, scale, transform, heads,
                                                 causal, doc)
                p = torch.exp(logits - lse[..., qs:qe, None])
                dv[:, :, ks:ke] += torch.matmul(p.transpose(-1, -2), dob).sum(2)
                dlogits = p * (torch.matmul(dob, vb.transpose(-1, -2)) - delta[..., qs:qe, None])
                dscores = dlogits if slope is None else dlogits * slope
                dq[..., qs:qe, :] += torch.matmul(dscores, kb) * scale
                dk[:, :, ks:ke] += torch.matmul(dscores.transpose(-1, -2), qb).sum(2) * scale
        return (dq.reshape(q.shape).to(q.dtype), dk.to(k.dtype), dv.to(v.dtype),
                None, None, None, None, None, None, None)


def chunked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, transform: LogitTransform, q_offset: int,
    causal: bool, scale: float, block_q: int = DEFAULT_BLOCK_Q, block_k: int = DEFAULT_BLOCK_K,
    cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Memory-efficient attention. q: (B, H, Tq, D); k, v: (B, Hkv, Tk, D) -> (B, H, Tq, D) in q's dtype.
    ``cu_seqlens``: packed documents (:mod:`siattn.backends.varlen`): key blocks outside a query block's documents
    are skipped, and blocks that straddle a document boundary are masked."""
    if block_q < 1 or block_k < 1:
        raise ValueError(f"block_q and block_k must be >= 1, got {block_q}, {block_k}")
    return _ChunkedAttention.apply(q, k, v, transform, q_offset, causal, scale, block_q, block_k, cu_seqlens)
