"""Launching the kernels: the program order, TMA descriptors, the forward, the backward (separate or fused dQ)
and split-K decoding."""

from __future__ import annotations

import dataclasses
import math

import torch

from siattn.backends.options import DEFAULT_KERNEL_OPTIONS, KernelOptions
from siattn.backends.transforms import LogitTransform
from siattn.backends.triton.autotune import _bucket, _pick
from siattn.backends.triton.coefficients import _MODES, _head_slopes, _si_constants, _transform_args
from siattn.backends.triton.configs import (
    DEFAULT_DECODE,
    DKDV_CANDIDATES,
    DQ_CANDIDATES,
    FUSED_DQ_MODES,
    FUSED_DQ_ORDERS,
    FWD_CANDIDATES,
    INTERPRETER_DECODE,
    LN2,
    BwdConfig,
    DecodeConfig,
    FwdConfig,
    arch_defaults,
    default_kernel_configs,
)
from siattn.backends.triton.runtime import (
    TensorDescriptor,
    _k,
    _sm_count,
    _use_asm,
    capability,
    interpreted,
    triton,
)
from siattn.backends.varlen import document_bounds


def heads_per_section(n_tiles: int, n_heads: int, sms: int) -> int:
    """How many heads the kernels interleave (``_schedule`` in the kernels module). Causal tiles differ up to 2× in
    work; when one head's tiles fill at most half a wave of programs, every head is interleaved so that the
    programs start longest tile first across the whole grid (on the H200 at 4k × 8: forward −5%, dK/dV −8%,
    dQ −3%); longer heads go head by head, which keeps each head's keys in L2 (interleaving all heads at 64k
    made the plain forward 7% slower)."""
    if n_tiles < 1 or n_heads < 1 or sms < 1:
        raise ValueError(f"n_tiles, n_heads and sms must be >= 1, got {n_tiles}, {n_heads}, {sms}")
    return n_heads if 2 * n_tiles <= sms else 1


def _grid(section: int, n_tiles: int, n_heads: int, device: torch.device) -> tuple[int, int, int]:
    """Launch grid (heads per section, tiles, sections) of ``_schedule``; ``section`` 0 picks it from the shape.
    An empty grid when there are no tiles or no heads (e.g. zero queries)."""
    if n_tiles < 1 or n_heads < 1:
        return 0, 0, 0
    if not section:
        section = heads_per_section(n_tiles, n_heads, _sm_count(str(device)))
    section = min(section, n_heads)
    return section, n_tiles, math.ceil(n_heads / section)


def _head_descriptor(x: torch.Tensor, rows: int) -> TensorDescriptor:
    """Host-side TMA descriptor of a (B, H, T, D) tensor (any strides :func:`tma_compatible` accepts) read in
    (rows, D) tiles of one head (``kernels._head_tile``); it is passed to the kernel as a launch argument,
    so no program builds a tensor map on the device."""
    return TensorDescriptor(x, shape=list(x.shape), strides=list(x.stride()), block_shape=[1, 1, rows, x.shape[-1]])


def tma_compatible(*tensors: torch.Tensor) -> bool:
    """Whether the kernels may read these (B, H, T, D) tensors through TMA descriptors of one head's (T, D)
    rows: on CUDA or under the interpreter, with the start of every head's rows and the row stride 16-byte
    aligned and the last dimension contiguous."""
    for x in tensors:
        size = x.element_size()
        if not (x.is_cuda or interpreted()) or x.stride(-1) != 1 or x.data_ptr() % 16:
            return False
        if any(x.stride(d) * size % 16 for d in range(x.dim() - 1)):
            return False
    return True


def default_fwd_config(transform: LogitTransform, k: torch.Tensor, v: torch.Tensor) -> FwdConfig:
    """The forward tiling used without autotuning: the device's row of ``ARCH_DEFAULTS`` for the transform
    (:func:`~siattn.backends.triton.configs.default_kernel_configs`; on sm_90 ``DEFAULT_FWD_SI`` for the
    scale-invariant transform), or the row's plain tiling where that reads k and v through TMA and they do not
    allow it."""
    fwd, _ = default_kernel_configs(capability(k.device), transform.kind)
    if fwd.tma_loads and not tma_compatible(k, v):
        return arch_defaults(capability(k.device)).fwd
    return fwd


def default_bwd_config(transform: LogitTransform, device: torch.device | str,
                       options: KernelOptions = DEFAULT_KERNEL_OPTIONS, parts: tuple[str, ...] = ("dkdv", "dq"),
                       cfg: BwdConfig | None = None) -> BwdConfig:
    """The backward tiling used without autotuning, its ``fused_dq`` resolved to "off", "atomics" or "tma".

    ``cfg`` (else ``options.backward``) when given; otherwise the device's row of ``ARCH_DEFAULTS``: with the fused
    dQ (the scale-invariant default on sm_90) its ``bwd_si``, with a separate dQ kernel its ``bwd``.
    ``options.deterministic`` turns the fused dQ off."""
    row = arch_defaults(capability(device))
    cfg = cfg or options.backward
    si = transform.kind == "scale-invariant"
    setting = "off" if options.deterministic else (cfg or (row.bwd_si if si else row.bwd)).fused_dq
    setting = _fused_setting(setting, transform, parts, row.fused_dq_si)
    base = cfg or (row.bwd_si if setting != "off" else row.bwd)
    return base if base.fused_dq == setting else dataclasses.replace(base, fused_dq=setting)


def _forward(q, k, v, transform, q_offset, causal, scale, cfg: FwdConfig | None = None,
             stats: dict | None = None, options: KernelOptions = DEFAULT_KERNEL_OPTIONS,
             docs: tuple[torch.Tensor, torch.Tensor] | None = None):
    """(out, lse). ``cfg`` (else ``options.forward``; else the default or, with ``options.autotune``, the tuned
    tiling). ``stats``, if given, receives "recomputed": the fraction of query blocks the fixed-offset forward
    had to recompute online (0.0 when it was not used; reading it synchronises). ``docs``: packed documents,
    (start, end) int32 (T,) of each position's document (:func:`document_args`); they run without the
    fixed-offset (``static``) forward."""
    batch, heads, tq, dim = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    out = torch.empty_like(q)
    lse = torch.empty(batch, heads, tq, device=q.device, dtype=torch.float32)
    poly = options.far_tile_polynomials

    def launch(c: FwdConfig):
        coef, slopes, consts, (t1, t2, t3) = _transform_args(transform, scale, c.block_n, q_offset + tq,
                                                              heads, q.device, causal, poly)
        n_blocks = triton.cdiv(tq, c.block_m)
        grid = _grid(c.section, n_blocks, batch * heads, q.device)
        static = c.static and tk >= c.static_min_keys and docs is None
        flags = torch.empty(n_blocks * batch * heads, device=q.device, dtype=torch.int32) if static else lse
        tma = c.tma_loads and tma_compatible(k, v)
        k_arg, v_arg = (_head_descriptor(k, c.block_n), _head_descriptor(v, c.block_n)) if tma else (k, v)
        doc_start, doc_end = docs if docs is not None else (flags, flags)
        args = (
            q, k_arg, v_arg, out, lse, coef, slopes, flags, doc_start, doc_end,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
            batch * heads, heads, heads // hkv, tq, tk, q_offset, coef.shape[1],
            consts["qk_scale"], consts["inv_tau"], consts["A2"], consts["K2"], consts["NEG_GAMMA"], t1, t2, t3,
        )
        const = dict(HEAD_DIM=dim, BLOCK_M=c.block_m, BLOCK_N=c.block_n, MODE=_MODES[transform.kind],
                     CAUSAL=causal, LAZY=c.lazy, BOUND=c.bound and transform.kind == "scale-invariant",
                     USE_ASM=_use_asm(), TMA_LOADS=tma, num_warps=c.num_warps, num_stages=c.num_stages)
        if docs is not None:
            const["VARLEN"] = True
        _k.fwd_kernel[grid](*args, STATIC=static, **const)
        if static:  # the blocks whose fixed offset overflowed, again with the online softmax
            _k.fwd_kernel[grid](*args, REDO=True, **const)
        if stats is not None:
            stats["recomputed"] = flags.float().mean().item() if static else 0.0

    cfg = cfg or options.forward
    if cfg is None:
        key = (dim, q.dtype, transform.kind, causal, heads // hkv, _bucket(tq), _bucket(tk), poly)
        if docs is not None:
            key = (*key, "varlen")
        cfg = _pick("fwd", key, FWD_CANDIDATES, default_fwd_config(transform, k, v), launch, options.autotune)
    launch(cfg)
    return out, lse


def _backward(q, k, v, out, lse, dout, transform, q_offset, causal, scale, cfg: BwdConfig | None = None,
              parts: tuple[str, ...] = ("dkdv", "dq"), options: KernelOptions = DEFAULT_KERNEL_OPTIONS,
              docs: tuple[torch.Tensor, torch.Tensor] | None = None):
    """(dq, dk, dv) of the kernels ``parts`` (the other gradients are left uninitialised). ``cfg`` (else
    ``options.backward``; else :func:`default_bwd_config` or, with ``options.autotune``, the tuned tiling).
    ``docs``: packed documents, as in :func:`_forward`."""
    batch, heads, tq, dim = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    groups = heads // hkv
    if tq == 0:  # no queries: nothing flows back to k and v (and no dQ accumulator to describe)
        return torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
    # every kernel below reads and writes through strides, so q, out, dout and the gradients may be transposed
    # (B, T, H, D) views as a model makes them; only the last dimension must be contiguous
    dout = _contiguous(dout)
    delta = torch.empty(batch, heads, tq, device=q.device, dtype=torch.float32)
    rows = batch * heads * tq
    dq_pitch = -(-tq // 4) * 4  # a TMA row stride must be a multiple of 16 bytes

    def preprocess(dq_acc: torch.Tensor | None = None):
        """delta = rowsum(O·dO); with ``dq_acc``, also zero that fused-dQ accumulator (one pass)."""
        _k.bwd_preprocess_kernel[(triton.cdiv(rows, 64),)](
            out, dout, delta, delta if dq_acc is None else dq_acc, out.stride(0), out.stride(1), out.stride(2),
            dout.stride(0), dout.stride(1), dout.stride(2), heads, tq, rows, dq_pitch, HEAD_DIM=dim, BLOCK=64,
            ZERO_DQ=dq_acc is not None)

    dq = torch.empty_like(q)
    dk = torch.empty_like(k)
    dv = torch.empty_like(v)
    mode = _MODES[transform.kind]
    consts = _si_constants(transform, scale)
    ds_scale = LN2 if transform.kind == "scale-invariant" else scale
    poly = options.far_tile_polynomials
    doc_start, doc_end = docs if docs is not None else (delta, delta)
    varlen = {"VARLEN": True} if docs is not None else {}

    def launch_dkdv(c: BwdConfig, dq_acc: torch.Tensor | None = None, fused: int = 0):
        coef, slopes, _, th = _transform_args(transform, scale, c.dkdv_m, q_offset + tq, heads, q.device, causal,
                                              poly)
        tma = c.dkdv_tma_loads and tma_compatible(q, dout)
        q_arg, do_arg = (_head_descriptor(q, c.dkdv_m), _head_descriptor(dout, c.dkdv_m)) if tma else (q, dout)
        if fused == 2:  # TMA reductions into the accumulator seen as (B·H·D, Tq): one head's dQᵀ is D rows
            dq_arg = TensorDescriptor(dq_acc.view(-1, dq_pitch), shape=[batch * heads * dim, tq], strides=[dq_pitch, 1],
                                      block_shape=[dim, c.dkdv_m])
        else:
            dq_arg = dq_acc if fused else delta
        _k.bwd_dkdv_kernel[_grid(c.section, triton.cdiv(tk, c.dkdv_n), batch * hkv, q.device)](
            q_arg, k, v, do_arg, lse, delta, dk, dv, dq_arg, coef, slopes, doc_start, doc_end,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), dout.stride(0), dout.stride(1), dout.stride(2),
            dk.stride(0), dk.stride(1), dk.stride(2), dv.stride(0), dv.stride(1), dv.stride(2),
            batch * hkv, hkv, groups, tq, tk, q_offset, coef.shape[1], dq_pitch,
            consts["qk_scale"], consts["inv_tau"], consts["A2"], consts["K2"], consts["NEG_GAMMA"], ds_scale,
            *th, HEAD_DIM=dim, BLOCK_M=c.dkdv_m, BLOCK_N=c.dkdv_n, MODE=mode, CAUSAL=causal,
            USE_ASM=_use_asm(), POLY=c.dkdv_poly, EARLY_DP=c.dkdv_early_dp, FUSED_DQ=fused, TMA_LOADS=tma,
            ORDER_DQ=FUSED_DQ_ORDERS[c.fused_dq_order],
            num_warps=c.dkdv_warps, num_stages=c.dkdv_stages, **varlen,
        )

    def launch_dq(c: BwdConfig, row_term: bool = False):
        coef, slopes, _, th = _transform_args(transform, scale, c.dq_n, q_offset + tq, heads, q.device, causal,
                                              poly)
        _k.bwd_dq_kernel[_grid(c.section, triton.cdiv(tq, c.dq_m), batch * heads, q.device)](
            q, k, v, dout, lse, delta, dq, coef, slopes, doc_start, doc_end,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), dout.stride(0), dout.stride(1), dout.stride(2),
            dq.stride(0), dq.stride(1), dq.stride(2),
            batch * heads, heads, groups, tq, tk, q_offset, coef.shape[1],
            consts["qk_scale"], consts["inv_tau"], consts["A2"], consts["K2"], consts["NEG_GAMMA"], ds_scale,
            *th, HEAD_DIM=dim, BLOCK_M=c.dq_m, BLOCK_N=c.dq_n, MODE=mode, CAUSAL=causal,
            USE_ASM=_use_asm(), ROW_TERM=row_term, num_warps=c.dq_warps, num_stages=c.dq_stages, **varlen,
        )

    exact_row_term = options.exact_row_term(tq)

    def row_term(c: BwdConfig):
        """Overwrite delta with the exact row term Σ_j P·dP (one more pass over the keys, no dQ product)."""
        launch_dq(c, row_term=True)

    key = (dim, q.dtype, transform.kind, causal, groups, _bucket(tq), _bucket(tk), poly)
    if docs is not None:
        key = (*key, "varlen")
    explicit = cfg or options.backward
    default = default_bwd_config(transform, q.device, options, parts, explicit)
    cfg = default if explicit is not None else None
    tune = options.autotune
    fused = _fused_mode(default.fused_dq)
    if fused:  # one kernel for dK, dV and dQ

        def launch_fused(c: BwdConfig):
            dq_acc = torch.empty(batch * heads, dim, dq_pitch, device=q.device, dtype=torch.float32)
            preprocess(dq_acc)  # zeroes dq_acc (every launch while tuning adds into a fresh one)
            if exact_row_term:
                row_term(c)
            launch_dkdv(c, dq_acc, fused)
            _k.dq_from_accumulator_kernel[(triton.cdiv(tq, 64), batch * heads)](
                dq_acc, dq, dq.stride(0), dq.stride(1), dq.stride(2), heads, tq, dq_pitch, ds_scale,
                HEAD_DIM=dim, BLOCK=64)

        launch_fused(cfg or _pick("fused", key, DKDV_CANDIDATES, default, launch_fused, tune))
        return dq, dk, dv
    preprocess()
    if exact_row_term:
        row_term(cfg or default)
    if "dkdv" in parts:
        launch_dkdv(cfg or _pick("dkdv", key, DKDV_CANDIDATES, default, launch_dkdv, tune))
    if "dq" in parts:
        launch_dq(cfg or _pick("dq", key, DQ_CANDIDATES, default, launch_dq, tune))
    return dq, dk, dv


def document_args(cu_seqlens: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernels' view of packed documents: (start, end), int32 (T,), each position's document start and end."""
    start, end = document_bounds(cu_seqlens, total)
    return start.to(torch.int32), end.to(torch.int32)


def _fused_setting(setting: str, transform: LogitTransform, parts: tuple[str, ...], auto_si: str) -> str:
    """``BwdConfig.fused_dq`` resolved for one backward to "off", "atomics" or "tma"; "auto" is ``auto_si`` (the
    architecture's choice) for the scale-invariant transform and "off" otherwise, and for part of the backward."""
    whole = set(parts) == {"dkdv", "dq"}
    if setting == "auto":
        return auto_si if transform.kind == "scale-invariant" and whole else "off"
    if setting != "off" and not whole:
        raise ValueError(f"fused_dq={setting!r} computes every gradient in one kernel; parts must be "
                         f"('dkdv', 'dq'), got {parts!r}")
    return setting


def _fused_mode(setting: str) -> int:
    """The kernels' FUSED_DQ of a resolved ``fused_dq``: 0 (separate dQ kernel), 1 (atomics) or 2 (TMA)."""
    mode = FUSED_DQ_MODES[setting]
    return 1 if mode == 2 and interpreted() else mode  # the interpreter has no TMA reductions


def _contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def decode_splits(batch_kv_heads: int, tk: int, block_n: int, programs_per_sm: int, sms: int) -> int:
    """Number of key splits: enough programs to fill the GPU, at least two key tiles per split."""
    want = max(1, math.ceil(programs_per_sm * sms / batch_kv_heads))
    return max(1, min(want, math.ceil(tk / (2 * block_n))))


def decode_attention(q, k, v, *, transform: LogitTransform, q_offset: int, causal: bool, scale: float,
                     config: DecodeConfig | None = None, splits: int | None = None) -> torch.Tensor:
    """Split-K attention for a few queries (Tq·G <= 128) against a long key/value cache; forward only.

    Each program streams one contiguous chunk of keys of one kv head for all G·Tq query rows of that head, so
    K and V are read once; a second kernel merges the chunks by their log-sum-exp."""
    q, k, v = _contiguous(q), _contiguous(k), _contiguous(v)
    cfg = config or (INTERPRETER_DECODE if interpreted() else DEFAULT_DECODE)
    batch, heads, tq, dim = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    groups = heads // hkv
    block_m = max(16, _bucket(groups * tq))
    if splits is None:
        splits = decode_splits(batch * hkv, tk, cfg.block_n, cfg.programs_per_sm, _sm_count(str(q.device)))
    chunk = math.ceil(math.ceil(tk / splits) / cfg.block_n) * cfg.block_n
    splits = math.ceil(tk / chunk)
    consts = _si_constants(transform, scale)
    slopes = _head_slopes(transform, heads, q.device)
    part_o = torch.empty(batch * hkv, splits, block_m, dim, device=q.device, dtype=torch.float32)
    part_l = torch.empty(batch * hkv, splits, block_m, device=q.device, dtype=torch.float32)
    _k.decode_split_kernel[(splits, batch * hkv)](
        q, k, v, part_o, part_l, slopes,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        hkv, groups, tq, tk, q_offset, chunk,
        consts["qk_scale"], consts["inv_tau"], consts["A2"], consts["K2"], consts["NEG_GAMMA"],
        HEAD_DIM=dim, BLOCK_M=block_m, BLOCK_N=cfg.block_n, MODE=_MODES[transform.kind], CAUSAL=causal,
        USE_ASM=_use_asm(), num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    out = torch.empty_like(q)
    _k.decode_combine_kernel[(groups * tq, batch * hkv)](
        part_o, part_l, out, out.stride(0), out.stride(1), out.stride(2), hkv, groups, tq, splits,
        HEAD_DIM=dim, BLOCK_M=block_m, BLOCK_S=max(2, _bucket(splits)), num_warps=4,
    )
    return out
