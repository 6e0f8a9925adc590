"""Triton backend: fused causal attention with the logit transform, forward and backward, plus split-K decoding.

Registered as ``triton`` at import. Importing this module never fails: without triton (or without CUDA and
without ``TRITON_INTERPRET=1`` set before the kernels were imported) ``unsupported`` names the reason and
``auto`` falls back to another backend.

What it runs: float16/bfloat16 inputs, float32 accumulation, head dim 64 or 128 (v's too), grouped-query
attention, any lengths, q_offset >= 0, transforms ``none``, ``alibi`` and ``scale-invariant`` (any τ, α, β),
causal or not (non-causal scale-invariant attention evaluates the transform exactly on every tile, so it is
slower than causal). Queries of at most 16 rows without gradients go to a split-K decoding kernel
(:func:`decode_attention`); everything else to the FlashAttention-style kernels (:func:`triton_attention`).

The scale-invariant slope a_t is evaluated per tile either exactly (approximate ``lg2``/``sqrt`` instructions)
or, for tiles whose every distance is large enough, as a per-row polynomial read from a least-squares table
(see :mod:`siattn.backends.triton.kernels`); :func:`poly_thresholds` picks the distances so that the logit
error stays below ``POLY_LOGIT_TOL`` for scores up to ``POLY_SCORE_MAX`` in magnitude.

The package, one idea per module: :mod:`~.runtime` (whether triton and the kernels are usable here),
:mod:`~.configs` (tilings, defaults, autotuning candidates), :mod:`~.autotune`, :mod:`~.coefficients` (the
transform's launch arguments and polynomial tables), :mod:`~.launch` (forward, backward, decoding),
:mod:`~.autograd` (:func:`flash_attention`) and :mod:`~.kernels` (the Triton kernels); this module is the backend
entry point and re-exports their names.
"""

from __future__ import annotations

import torch

from siattn.backends import Backend, register_backend
from siattn.backends.options import KernelOptions
from siattn.backends.transforms import LogitTransform
from siattn.backends.triton.autograd import _TritonAttention, flash_attention
from siattn.backends.triton.autotune import _bucket, _pick, tuned_configs
from siattn.backends.triton.coefficients import (
    _MODES,
    _head_slopes,
    _si_constants,
    _transform_args,
    coefficient_table,
    poly_thresholds,
)
from siattn.backends.triton.configs import (
    ARCH_DEFAULTS,
    DECODE_MAX_QUERIES,
    DECODE_MAX_ROWS,
    DEFAULT_BWD,
    DEFAULT_BWD_SI,
    DEFAULT_DECODE,
    DEFAULT_FWD,
    DEFAULT_FWD_SI,
    DKDV_CANDIDATES,
    DQ_CANDIDATES,
    FUSED_DQ_MODES,
    FUSED_DQ_ORDERS,
    FWD_CANDIDATES,
    GENERIC_BWD,
    GENERIC_DEFAULTS,
    GENERIC_FWD,
    HEAD_DIMS,
    INTERPRETER_BWD,
    INTERPRETER_DECODE,
    INTERPRETER_FWD,
    LN2,
    LOG2E,
    NEVER,
    POLY_LOGIT_TOL,
    POLY_SCORE_MAX,
    POLY_SEARCH_MAX,
    ArchDefaults,
    BwdConfig,
    DecodeConfig,
    FwdConfig,
    arch_defaults,
    default_kernel_configs,
)
from siattn.backends.triton.launch import (
    _backward,
    _contiguous,
    _forward,
    _fused_mode,
    _fused_setting,
    _grid,
    _head_descriptor,
    decode_attention,
    decode_splits,
    default_bwd_config,
    default_fwd_config,
    heads_per_section,
    tma_compatible,
)
from siattn.backends.triton.runtime import _IMPORT_ERROR, _k, _sm_count, capability, interpreted

__all__ = [
    "ARCH_DEFAULTS",
    "DECODE_MAX_QUERIES",
    "DECODE_MAX_ROWS",
    "DEFAULT_BWD",
    "DEFAULT_BWD_SI",
    "DEFAULT_DECODE",
    "DEFAULT_FWD",
    "DEFAULT_FWD_SI",
    "DKDV_CANDIDATES",
    "DQ_CANDIDATES",
    "FUSED_DQ_MODES",
    "FUSED_DQ_ORDERS",
    "FWD_CANDIDATES",
    "GENERIC_BWD",
    "GENERIC_DEFAULTS",
    "GENERIC_FWD",
    "HEAD_DIMS",
    "INTERPRETER_BWD",
    "INTERPRETER_DECODE",
    "INTERPRETER_FWD",
    "LN2",
    "LOG2E",
    "NEVER",
    "POLY_LOGIT_TOL",
    "POLY_SCORE_MAX",
    "POLY_SEARCH_MAX",
    "_MODES",
    "ArchDefaults",
    "BwdConfig",
    "DecodeConfig",
    "FwdConfig",
    "KernelOptions",
    "_TritonAttention",
    "_backward",
    "_bucket",
    "_contiguous",
    "_forward",
    "_fused_mode",
    "_fused_setting",
    "_grid",
    "_head_descriptor",
    "_head_slopes",
    "_k",
    "_pick",
    "_si_constants",
    "_sm_count",
    "_transform_args",
    "arch_defaults",
    "capability",
    "coefficient_table",
    "decode_attention",
    "decode_splits",
    "default_bwd_config",
    "default_fwd_config",
    "default_kernel_configs",
    "flash_attention",
    "heads_per_section",
    "interpreted",
    "poly_thresholds",
    "tma_compatible",
    "triton_attention",
    "tuned_configs",
    "unsupported",
    "use_decode",
]


def use_decode(q: torch.Tensor, k: torch.Tensor, needs_grad: bool) -> bool:
    """Whether the split-K decoding kernel serves these inputs (few queries, no gradient)."""
    groups = q.shape[1] // k.shape[1]
    return not needs_grad and q.shape[2] <= DECODE_MAX_QUERIES and groups * q.shape[2] <= DECODE_MAX_ROWS


def triton_attention(q, k, v, *, transform: LogitTransform, q_offset: int, causal: bool, scale: float,
                     kernel: KernelOptions | None = None, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
    """Backend entry point: split-K decoding for a few queries without gradients, else the fused kernels
    (``kernel``: their options; the decoding kernel has no atomics and ignores them). ``cu_seqlens`` (packed
    documents) always runs the fused kernels, which mask by document and skip the key tiles before the first
    query's document."""
    if v.shape[-1] != q.shape[-1]:
        raise ValueError(f"the triton backend needs v's head dim to equal q's ({q.shape[-1]}), got {v.shape[-1]}")
    needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
    if cu_seqlens is None and use_decode(q, k, needs_grad):
        return decode_attention(q, k, v, transform=transform, q_offset=q_offset, causal=causal, scale=scale)
    return flash_attention(q, k, v, transform=transform, q_offset=q_offset, causal=causal, scale=scale,
                           kernel=kernel, cu_seqlens=cu_seqlens)


def unsupported(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, transform: LogitTransform, needs_grad: bool
) -> str | None:
    """Why the Triton kernels cannot run these inputs, or None."""
    if _k is None:
        return _IMPORT_ERROR
    if q.device.type == "cuda":
        if interpreted():
            return "the Triton kernels were imported under TRITON_INTERPRET=1 (CPU interpreter), not for CUDA"
        if torch.cuda.get_device_capability(q.device) < (8, 0):
            return "needs a GPU of compute capability 8.0 or newer (bf16 tensor cores)"
    elif not (interpreted() and q.device.type == "cpu"):
        return (f"runs on CUDA (got {q.device.type}); on CPU only through Triton's interpreter "
                "(TRITON_INTERPRET=1 set before siattn.backends.triton is imported)")
    if q.dtype not in (torch.float16, torch.bfloat16):
        return f"takes float16 or bfloat16 inputs, got {q.dtype} (use 'flex' or 'chunked' for float32)"
    if q.dtype == torch.bfloat16 and q.device.type == "cpu":
        return "Triton's CPU interpreter computes bfloat16 dot products wrongly (seen with triton 3.9); use float16"
    if q.shape[-1] not in HEAD_DIMS:
        return f"supports head dim {HEAD_DIMS}, got {q.shape[-1]}"
    if k.shape[-1] != q.shape[-1] or v.shape[-1] != q.shape[-1]:
        return "needs the same head dim for q, k and v"
    if transform.kind not in _MODES:
        return f"has no kernel for transform {transform.kind!r}"
    return None


register_backend(Backend("triton", triton_attention, unsupported,
                         "fused Triton kernels (CUDA, fp16/bf16, head dim 64/128) + split-K decoding",
                         takes_kernel_options=True, takes_cu_seqlens=True))

