"""The autograd function over the fused kernels: forward saves (q, k, v, out, lse), backward runs the backward
kernels once."""

from __future__ import annotations

import torch

from siattn.backends.options import KernelOptions, check_kernel_options
from siattn.backends.transforms import LogitTransform
from siattn.backends.triton.launch import _backward, _contiguous, _forward, document_args


class _TritonAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, transform, q_offset, causal, scale, options: KernelOptions, cu_seqlens=None):
        docs = None if cu_seqlens is None else document_args(cu_seqlens, q.shape[2])
        out, lse = _forward(q, k, v, transform, q_offset, causal, scale, options=options, docs=docs)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.config = (transform, q_offset, causal, scale, options, docs)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        transform, q_offset, causal, scale, options, docs = ctx.config
        dq, dk, dv = _backward(q, k, v, out, lse, dout, transform, q_offset, causal, scale, options=options,
                               docs=docs)
        return dq, dk, dv, None, None, None, None, None, None


def flash_attention(q, k, v, *, transform: LogitTransform, q_offset: int, causal: bool, scale: float,
                    kernel: KernelOptions | None = None, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    """The FlashAttention-style kernels (forward + backward) for any query length; ``kernel``: tilings,
    autotuning, determinism and the far-tile polynomials (:class:`~siattn.backends.options.KernelOptions`).
    ``cu_seqlens``: packed documents (:mod:`siattn.backends.varlen`, checked by the caller)."""
    q, k, v = _contiguous(q), _contiguous(k), _contiguous(v)
    return _TritonAttention.apply(q, k, v, transform, q_offset, causal, scale, check_kernel_options(kernel),
                                  cu_seqlens)
