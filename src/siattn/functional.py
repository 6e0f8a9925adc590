"""The public attention functions: a small functional interface over the backends (FlashAttention's feel)."""

from __future__ import annotations

import torch

from siattn.backends import check_inputs, run_backend
from siattn.backends.options import KernelOptions
from siattn.backends.transforms import LogitTransform
from siattn.backends.varlen import check_cu_seqlens, keys_seen
from siattn.methods import Method, get_method
from siattn.positional.logn import logn_query_scale
from siattn.schedule import DEFAULT_TAU


def scale_invariant_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, tau: float = DEFAULT_TAU, causal: bool = True,
    q_offset: int = 0, scale: float | None = None, backend: str = "auto", alpha: float | None = None,
    beta: float | None = None, kernel: KernelOptions | None = None, cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention with logits L_t = a_t·S_t + m_t, S_t = scale·q·k, t = q_offset + r − c (|·| if not causal).

    q: (B, H, Tq, D); k, v: (B, Hkv, Tk, D) with H % Hkv == 0 (grouped-query attention). Query row r sits at
    absolute position q_offset + r and key column c at position c (KV-cache decoding uses q_offset = Tk − Tq).
    scale defaults to 1/sqrt(D). Returns (B, H, Tq, D) in q's dtype; the math is float32 (float64 for float64).
    backend: "auto", "reference", "chunked", "sdpa" (plain logits only), "flex" or "triton" (:mod:`siattn.backends`).
    kernel: :class:`siattn.KernelOptions` of the fused Triton kernels (determinism, autotuning, far-tile
    polynomials, tilings); only the triton backend reads them. ``KernelOptions(deterministic=True)`` makes its dQ
    bitwise reproducible from run to run; the CPU backends are so already, and sdpa and flex on CUDA follow
    ``torch.use_deterministic_algorithms``.
    cu_seqlens: packed documents, as FlashAttention's varlen interface: int32/int64 (N+1,), cu_seqlens[0] = 0,
    strictly increasing, cu_seqlens[-1] = T, with q (1, H, T, D), k and v (1, Hkv, T, D) and q_offset = 0.
    Query i and key j interact only within one document and positions restart at each document, so the result
    equals each document run on its own (:mod:`siattn.backends.varlen`). Every backend takes it.
    """
    transform = LogitTransform("scale-invariant", tau=tau, alpha=alpha, beta=beta)
    return run_backend(q, k, v, transform=transform, q_offset=q_offset, causal=causal, scale=scale,
                       backend=backend, kernel=kernel, cu_seqlens=cu_seqlens)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, method: str | Method = "nope", causal: bool = True,
    q_offset: int = 0, scale: float | None = None, backend: str = "auto", tau: float = DEFAULT_TAU,
    logn_scale: torch.Tensor | float | None = None, kernel: KernelOptions | None = None,
    cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention for any method of :data:`siattn.METHODS` (the model's single entry point).

    q and k must already carry the method's rotary embedding (``method.rotary_config(...).cos_sin`` and
    :func:`siattn.positional.apply_rotary`), as in transformers' attention functions. This function applies
    the method's logit transform: none, LogN (q scaled by s_h·log n; ``logn_scale`` s of shape () or (H,)
    required), ALiBi, or scale-invariant (``tau``). Shapes, positions, ``kernel`` and ``cu_seqlens`` as in
    :func:`scale_invariant_attention`; with ``cu_seqlens`` LogN's n counts the keys of the query's own document.
    """
    method = get_method(method)
    if method.uses_logn:
        if logn_scale is None:
            raise ValueError(f"method {method.name!r} needs logn_scale (s per head; siattn.positional.logn_init "
                             "gives the starting value)")
        if cu_seqlens is None:
            q = logn_query_scale(q, logn_scale, q_offset, None if causal else k.shape[2])
        else:
            check_inputs(q, k, v, q_offset)
            cu_seqlens = check_cu_seqlens(cu_seqlens, q, k, q_offset)
            q = logn_query_scale(q, logn_scale, q_offset, keys_seen=keys_seen(cu_seqlens, q.shape[2], causal))
    return run_backend(q, k, v, transform=method.logit_transform(tau), q_offset=q_offset, causal=causal,
                       scale=scale, backend=backend, kernel=kernel, cu_seqlens=cu_seqlens)
