"""The autograd function over the fused kernels: forward saves (q, k, v, out, lse), backward runs the backward
kernels once."""

from __future__ import annotations

import torch

from siattn.backends.transforms import LogitTransform
from siattn.backends.triton.configs import BwdConfig, FwdConfig
from siattn.backends.triton.launch import _backward, _contiguous, _forward


class _TritonAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, transform, q_offset, causal, scale, fwd_cfg, bwd_cfg):
        out, lse = _forward(q, k, v, transform, q_offset, causal, scale, fwd_cfg)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.config = (transform, q_offset, causal, scale, bwd_cfg)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        transform, q_offset, causal, scale, bwd_cfg = ctx.config
        dq, dk, dv = _backward(q, k, v, out, lse, dout, transform, q_offset, causal, scale, bwd_cfg)
        return dq, dk, dv, None, None, None, None, None, None


def flash_attention(q, k, v, *, transform: LogitTransform, q_offset: int, causal: bool, scale: float,
                    fwd_config: FwdConfig | None = None, bwd_config: BwdConfig | None = None) -> torch.Tensor:
    """The FlashAttention-style kernels (forward + backward) for any query length."""
    q, k, v = _contiguous(q), _contiguous(k), _contiguous(v)
    return _TritonAttention.apply(q, k, v, transform, q_offset, causal, scale, fwd_config, bwd_config)
