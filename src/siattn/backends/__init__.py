"""Attention backends behind one dispatcher.

Every backend computes the same function, softmax(f(scale·q·kᵀ; t) + causal mask)·v, with
q: (B, H, Tq, D), k and v: (B, Hkv, Tk, D), H % Hkv == 0, query row r at absolute position q_offset + r and key
column c at position c (t = q_offset + r − c), math in float32, output in q's dtype.

| name | what | memory | grad |
| --- | --- | --- | --- |
| reference | materialised scores: the ground truth | O(Tq·Tk) | autograd |
| chunked | online softmax over key blocks, recomputing backward | O(T·block) | CPU + CUDA |
| flex | FlexAttention score_mod + block mask (compiled) | O(T) | CUDA only |
| sdpa | torch's scaled_dot_product_attention; plain logits only | O(T) on CUDA | CPU + CUDA |
| triton | fused Triton kernel (CUDA, fp16/bf16, head dim 64/128) | O(T) | CUDA |

``cu_seqlens=`` packs documents into one row (:mod:`siattn.backends.varlen`); every backend takes it.
``kernel=KernelOptions(...)`` (:mod:`siattn.backends.options`) reaches the backends that take it (triton: tilings,
autotuning, far-tile polynomials, determinism); the others have no float atomics and need none.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from siattn.backends.chunked import chunked_attention
from siattn.backends.flex import flex_attention
from siattn.backends.options import KernelOptions, check_kernel_options
from siattn.backends.reference import reference_attention
from siattn.backends.sdpa import sdpa_attention, sdpa_unsupported
from siattn.backends.transforms import NO_TRANSFORM, LogitTransform, transform_logits
from siattn.backends.varlen import check_cu_seqlens
from siattn.positional.alibi import alibi_slopes

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class Backend:
    """A registered attention implementation. ``unsupported`` returns why it cannot run these inputs, or None.
    ``takes_kernel_options``: ``fn`` accepts ``kernel=KernelOptions`` (passed on only when given).
    ``takes_cu_seqlens``: ``fn`` accepts ``cu_seqlens=`` (packed documents, :mod:`siattn.backends.varlen`;
    passed on only when given)."""

    name: str
    fn: Callable[..., torch.Tensor]
    unsupported: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, LogitTransform, bool], str | None]
    description: str
    takes_kernel_options: bool = False
    takes_cu_seqlens: bool = False


BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> None:
    """Add (or replace) a backend under ``backend.name``."""
    BACKENDS[backend.name] = backend


def _always(q, k, v, transform, needs_grad):
    return None


def _flex_unsupported(q, k, v, transform, needs_grad):
    if q.dtype == torch.float64:
        return "FlexAttention does not compile float64"
    if needs_grad and q.device.type == "cpu":
        return "FlexAttention has no backward on CPU (use 'chunked' to train on CPU)"
    return None


register_backend(Backend("reference", reference_attention, _always, "materialised scores (ground truth)",
                         takes_cu_seqlens=True))
register_backend(Backend("chunked", chunked_attention, _always, "blockwise online softmax, O(T·block) memory",
                         takes_cu_seqlens=True))
register_backend(Backend("flex", flex_attention, _flex_unsupported, "FlexAttention score_mod + block mask",
                         takes_cu_seqlens=True))
register_backend(Backend("sdpa", sdpa_attention, sdpa_unsupported, "torch SDPA (flash), no logit transform",
                         takes_cu_seqlens=True))

# Backends that live in optional modules, imported on first use on a device where they can run.
_OPTIONAL_BACKENDS = {"triton": "siattn.backends.triton"}


def _available(name: str) -> bool:
    """Whether backend ``name`` is registered, importing its optional module on first use."""
    if name in BACKENDS:
        return True
    if name not in _OPTIONAL_BACKENDS:
        return False
    try:
        importlib.import_module(_OPTIONAL_BACKENDS[name])
    except ImportError:
        return False
    return name in BACKENDS


def backend_names() -> list[str]:
    """Names accepted by ``backend=`` (``auto`` first)."""
    return ["auto", *BACKENDS, *(n for n in _OPTIONAL_BACKENDS if n not in BACKENDS)]


def choose_backend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, transform: LogitTransform, needs_grad: bool,
    packed: bool = False,
) -> str:
    """The backend ``auto`` runs. Plain logits: SDPA (FlashAttention). Otherwise on CUDA the fused kernel, else
    FlexAttention, else chunked; on CPU chunked, which beat the materialised reference at every size measured
    (results/attention-cpu.md) and, unlike FlexAttention there, has a backward and O(T) memory. ``packed``
    (cu_seqlens given): never SDPA, whose document mask is a dense (T, T) one; the others as above."""
    if transform.kind == "none" and q.dtype != torch.float64 and not packed:
        return "sdpa"
    if q.device.type == "cuda":
        for name in ("triton", "flex"):
            if (_available(name) and (BACKENDS[name].takes_cu_seqlens or not packed)
                    and BACKENDS[name].unsupported(q, k, v, transform, needs_grad) is None):
                return name
    return "chunked"


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_offset: int) -> None:
    """Raise ValueError/TypeError naming the parameter when q, k, v or q_offset do not fit the contract."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"{name} must have shape (batch, heads, seq, head_dim), got {tuple(x.shape)}")
        if x.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"{name}.dtype must be one of float16, bfloat16, float32, float64, got {x.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must have one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    batch, heads, _, dim = q.shape
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got q of shape {tuple(q.shape)}")
    if dim < 1:
        raise ValueError(f"head_dim must be >= 1, got q of shape {tuple(q.shape)}")
    if k.shape[0] != batch or v.shape[0] != batch:
        raise ValueError(f"batch sizes differ: q {batch}, k {k.shape[0]}, v {v.shape[0]}")
    if k.shape[3] != dim:
        raise ValueError(f"q and k head_dim differ: {dim} vs {k.shape[3]}")
    if v.shape[1:3] != k.shape[1:3]:
        raise ValueError(f"k and v must share (heads, seq): k {tuple(k.shape)}, v {tuple(v.shape)}")
    if k.shape[1] < 1 or heads % k.shape[1] != 0:
        raise ValueError(f"query heads ({heads}) must be a multiple of key/value heads ({k.shape[1]})")
    if k.shape[2] < 1:
        raise ValueError("k and v need at least one key (seq >= 1)")
    if isinstance(q_offset, bool) or not isinstance(q_offset, int) or q_offset < 0:
        raise ValueError(f"q_offset must be an int >= 0 (absolute position of the first query), got {q_offset!r}")


def run_backend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, transform: LogitTransform = NO_TRANSFORM,
    q_offset: int = 0, causal: bool = True, scale: float | None = None, backend: str = "auto",
    kernel: KernelOptions | None = None, cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """Validate, pick the backend and run it. Returns (B, H, Tq, D_v) in q's dtype. ``kernel``: options of the
    backends that take them (the triton backend); the others are deterministic already and ignore them.
    ``cu_seqlens``: packed documents (:mod:`siattn.backends.varlen`): int32/int64 (N+1,), 0 = cu_seqlens[0] <
    ... < cu_seqlens[N] = T, with q (1, H, T, D), k and v (1, Hkv, T, D) and q_offset = 0; query i and key j
    interact only within one document, and the result is that of each document run on its own."""
    check_inputs(q, k, v, q_offset)
    if cu_seqlens is not None:
        cu_seqlens = check_cu_seqlens(cu_seqlens, q, k, q_offset)
    if kernel is not None:
        check_kernel_options(kernel)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    elif not (isinstance(scale, int | float) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite number > 0 or None (1/sqrt(head_dim)), got {scale!r}")
    needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
    if backend == "auto":
        backend = choose_backend(q, k, v, transform, needs_grad, packed=cu_seqlens is not None)
    elif not _available(backend):
        raise ValueError(f"backend must be one of {backend_names()}, got {backend!r}")
    impl = BACKENDS[backend]
    if cu_seqlens is not None and not impl.takes_cu_seqlens:
        takers = [name for name, b in BACKENDS.items() if b.takes_cu_seqlens]
        raise ValueError(f"backend {backend!r} does not take cu_seqlens; backends that do: {['auto', *takers]}")
    reason = impl.unsupported(q, k, v, transform, needs_grad)
    if reason is not None:
        raise ValueError(f"backend {backend!r} cannot run these inputs: {reason}")
    extra = {"kernel": kernel} if kernel is not None and impl.takes_kernel_options else {}
    if cu_seqlens is not None:
        extra["cu_seqlens"] = cu_seqlens
    return impl.fn(q, k, v, transform=transform, q_offset=q_offset, causal=causal, scale=float(scale), **extra)


__all__ = [
    "BACKENDS",
    "Backend",
    "KernelOptions",
    "LogitTransform",
    "alibi_slopes",
    "backend_names",
    "check_inputs",
    "choose_backend",
    "register_backend",
    "run_backend",
    "transform_logits",
]
