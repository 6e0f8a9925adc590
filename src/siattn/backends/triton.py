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
(see :mod:`siattn.backends.triton_kernels`); :func:`poly_thresholds` picks the distances so that the logit
error stays below ``POLY_LOGIT_TOL`` for scores up to ``POLY_SCORE_MAX`` in magnitude.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from siattn.backends import Backend, register_backend
from siattn.backends.transforms import LogitTransform
from siattn.positional.alibi import alibi_slopes

try:  # the kernels need triton; the backend still registers without it and says why it cannot run
    import triton
    from triton.tools.tensor_descriptor import TensorDescriptor

    from siattn.backends import triton_kernels as _k

    _IMPORT_ERROR: str | None = None
except Exception as err:  # ImportError, or a triton that fails to initialise on this machine
    triton = None
    _k = None
    _IMPORT_ERROR = f"triton is not usable here ({type(err).__name__}: {err}); pip install 'siattn[triton]'"

LOG2E = 1.0 / math.log(2.0)
LN2 = math.log(2.0)
HEAD_DIMS = (64, 128)
DECODE_MAX_QUERIES = 16
DECODE_MAX_ROWS = 128  # G·Tq rows handled by one decoding program
POLY_LOGIT_TOL = 1e-4  # largest logit error (natural-log units) the polynomial tiles may add ...
POLY_SCORE_MAX = 8.0  # ... for scores |scale·q·k| up to this
POLY_SEARCH_MAX = 1 << 15  # thresholds are searched up to this distance (errors only shrink beyond it)
NEVER = 1 << 30
POLY_ENABLED = True  # False: exact per-element transform on every tile (for measuring what the tables save)


def interpreted() -> bool:
    """True when the kernels were compiled for Triton's CPU interpreter (TRITON_INTERPRET=1 at import)."""
    return _k is not None and type(_k.fwd_kernel).__name__ == "InterpretedFunction"


def _use_asm() -> bool:
    return not interpreted()


# ------------------------------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class FwdConfig:
    """Forward tiling: BLOCK_M queries × BLOCK_N keys per step. ``lazy``: rescale the accumulator only when a
    row maximum grows by more than 2^8 (a block-wide reduction per tile; slower on the H200). ``bound``: on
    polynomial tiles take the running maximum from an upper bound of the logits (max q·k and the row's range
    of a_t) instead of materialising them (one operation less per score). ``static``: the near tiles and the
    farthest one go first and their running maximum stays the fixed softmax offset on the other far tiles (no
    row maximum or accumulator rescaling there); a block where some far logit exceeds it so much that p
    overflows (about 2^127 in bf16, 2^16 in fp16) is recomputed with the online softmax. It costs a second
    (mostly empty) launch, so it is used from ``static_min_keys`` keys on, where far tiles exist.
    ``section``: the program order (see :func:`heads_per_section`; 0 picks it from the shape). ``tma_loads``:
    read the key and value tiles with TMA (tensor descriptors made on the host) instead of per-thread copies, where
    k and v are 16-byte aligned (see :func:`tma_compatible`; the interpreter runs descriptors too); otherwise the
    per-thread loads run."""

    block_m: int = 128
    block_n: int = 64
    num_warps: int = 8
    num_stages: int = 3
    lazy: bool = False
    bound: bool = True
    static: bool = True
    static_min_keys: int = 1024
    section: int = 0
    tma_loads: bool = False

    def __post_init__(self) -> None:
        if self.static_min_keys < 0:
            raise ValueError(f"static_min_keys must be >= 0, got {self.static_min_keys!r}")
        _check_section(self.section)


FUSED_DQ_MODES = {"off": 0, "atomics": 1, "tma": 2}
FUSED_DQ_ORDERS = {"after-dk": 0, "before-dk": 1, "before-dv": 2}


@dataclass(frozen=True)
class BwdConfig:
    """Backward tiling: dK/dV programs own ``dkdv_n`` keys and step over ``dkdv_m`` queries; dQ programs own ``dq_m``
    queries and step over ``dq_n`` keys. ``dkdv_poly``: far-tile polynomials of the dK/dV kernel (3: orders 3/2/1 by
    distance, 1: order 3 only, one loop and fewer spilled registers, 0: exact everywhere, the fewest spilled
    registers). ``dkdv_early_dp``: the dK/dV kernel issues dPᵀ = V·dOᵀ right after Sᵀ = K·Qᵀ instead of after the dV
    update (fewer spilled registers; with the exact transform 3–8% faster on the H200; the same order made the dQ
    kernel slower, so it keeps dP after P). The scale-invariant default (``DEFAULT_BWD_SI``) combines the
    polynomials, dP after P and the dQᵀ product before dV. ``fused_dq``: "off" runs a separate dQ kernel (which
    recomputes S and dP); "atomics" or "tma" let the dK/dV kernel also accumulate dQ in float32 (one more product
    per tile, added through per-element atomics or TMA bulk reductions; the interpreter has no TMA reductions and
    uses atomics); "auto" is "tma" for the scale-invariant transform on CUDA (H200, whole backward: −8.5% / −5% / −3% at
    4k / 16k / 64k) and "off" otherwise (the plain kernel was 4–5% slower fused). Float atomics add in no fixed
    order, so a fused dQ is not bitwise reproducible from run to run; "off" is. ``section``: the program order of
    both kernels (see :func:`heads_per_section`; 0 picks it from the shape). ``dkdv_tma_loads``: the dK/dV kernel
    reads its query and dO tiles with TMA (as ``FwdConfig.tma_loads``). ``fused_dq_order``: where the fused kernel
    issues its dQᵀ product: "after-dk" (dV, dK, dQᵀ), "before-dk" (dV, dQᵀ, dK: the dK product then runs on during
    the reduction and the next step's loads, since Triton waits for the dQᵀ product, and every product issued before
    it, right away) or "before-dv" (dQᵀ, dV, dK: both accumulating products run on)."""

    dkdv_m: int = 32
    dkdv_n: int = 128
    dkdv_warps: int = 8
    dkdv_stages: int = 3
    dq_m: int = 128
    dq_n: int = 64
    dq_warps: int = 8
    dq_stages: int = 3
    dkdv_poly: int = 0
    dkdv_early_dp: bool = True
    fused_dq: str = "auto"
    section: int = 0
    dkdv_tma_loads: bool = False
    fused_dq_order: str = "after-dk"

    def __post_init__(self) -> None:
        if self.dkdv_poly not in (0, 1, 3):
            raise ValueError(f"dkdv_poly must be 0, 1 or 3, got {self.dkdv_poly!r}")
        if self.fused_dq not in (*FUSED_DQ_MODES, "auto"):
            raise ValueError(f"fused_dq must be one of {[*FUSED_DQ_MODES, 'auto']}, got {self.fused_dq!r}")
        if self.fused_dq_order not in FUSED_DQ_ORDERS:
            raise ValueError(f"fused_dq_order must be one of {list(FUSED_DQ_ORDERS)}, got {self.fused_dq_order!r}")
        _check_section(self.section)


def _check_section(section: int) -> None:
    if not isinstance(section, int) or section < 0:
        raise ValueError(f"section must be an int >= 0 (0: chosen from the shape, 1: head by head), got {section!r}")


@dataclass(frozen=True)
class DecodeConfig:
    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 3
    programs_per_sm: int = 2


DEFAULT_FWD = FwdConfig()
# scale-invariant forward: 4-warp programs of 64 queries reading keys and values through TMA, two per SM (they
# never wait for each other at a barrier, as the two warpgroups of an 8-warp program do); on the H200 −5% / −3% /
# −1% at 4k / 16k / 64k against DEFAULT_FWD, but slower with per-thread loads (+6%) and for plain attention
DEFAULT_FWD_SI = FwdConfig(block_m=64, block_n=64, num_warps=4, num_stages=2, tma_loads=True)
DEFAULT_BWD = BwdConfig()
# scale-invariant backward (dQ fused into the dK/dV kernel): the far-tile polynomials, dPᵀ after P, and the dQᵀ
# product issued before dV and dK (which then run on during the reduction and the next step's loads); on the H200
# (benchmarks/kernel_h200.py) 1.713 / 5.77 / 44.3 ms at 4k / 16k / 64k against 1.790 / 6.43 / 48.9 with the exact
# transform, dPᵀ first, dQᵀ last and 4 stages; with this order 3 stages beat 4
DEFAULT_BWD_SI = BwdConfig(dkdv_poly=3, dkdv_early_dp=False, fused_dq_order="before-dv")
DEFAULT_DECODE = DecodeConfig()
INTERPRETER_FWD = FwdConfig(16, 16, 1, 1, False, True, False)
INTERPRETER_BWD = BwdConfig(16, 16, 1, 1, 16, 16, 1, 1)
INTERPRETER_DECODE = DecodeConfig(16, 1, 1, 1)

# candidates tried by the optional autotuner (``set_autotune(True)``; the benchmark turns it on); the dK/dV and
# dQ kernels are tuned separately (only the dkdv_* or dq_* fields of a candidate matter)
FWD_CANDIDATES = (
    FwdConfig(128, 64, 8, 3, False, True, True),
    DEFAULT_FWD_SI,
    FwdConfig(128, 64, 8, 4, False, True, True),
    FwdConfig(128, 128, 8, 2, False, True, True),
    # with the online softmax on every tile
    FwdConfig(128, 64, 8, 3, False, True, False),
    FwdConfig(128, 64, 8, 3, False, False, False),
    FwdConfig(128, 64, 8, 4, False, True, False),
    FwdConfig(128, 64, 8, 2, False, True, False),
    FwdConfig(128, 128, 8, 2, False, True, False),
    FwdConfig(128, 64, 8, 3, True, False, False),
)
DKDV_CANDIDATES = (  # also the candidates of the dK/dV kernel with the fused dQ
    BwdConfig(dkdv_m=32, dkdv_n=128, dkdv_warps=8, dkdv_stages=3),
    BwdConfig(dkdv_m=32, dkdv_n=128, dkdv_warps=8, dkdv_stages=4),
    BwdConfig(dkdv_m=32, dkdv_n=128, dkdv_warps=8, dkdv_stages=2),
    BwdConfig(dkdv_m=16, dkdv_n=128, dkdv_warps=8, dkdv_stages=4),
    BwdConfig(dkdv_m=64, dkdv_n=128, dkdv_warps=8, dkdv_stages=2),
    BwdConfig(dkdv_m=32, dkdv_n=64, dkdv_warps=4, dkdv_stages=2),
    # far-tile polynomials (orders 3/2/1): the fastest split kernel at 64k on the H200
    BwdConfig(dkdv_m=32, dkdv_n=128, dkdv_warps=8, dkdv_stages=3, dkdv_poly=3),
    # dP issued after P instead of before it
    BwdConfig(dkdv_m=32, dkdv_n=128, dkdv_warps=8, dkdv_stages=3, dkdv_early_dp=False),
    BwdConfig(dkdv_m=32, dkdv_n=128, dkdv_warps=8, dkdv_stages=3, dkdv_poly=3, dkdv_early_dp=False),
    # the fused kernel's dQᵀ product before dV and dK (the fused default first)
    DEFAULT_BWD_SI,
    dataclasses.replace(DEFAULT_BWD_SI, dkdv_stages=4),
    BwdConfig(dkdv_m=32, dkdv_n=128, dkdv_warps=8, dkdv_stages=4, fused_dq_order="before-dv"),
)
DQ_CANDIDATES = (
    BwdConfig(dq_m=128, dq_n=64, dq_warps=8, dq_stages=3),
    BwdConfig(dq_m=128, dq_n=64, dq_warps=8, dq_stages=2),
    BwdConfig(dq_m=128, dq_n=32, dq_warps=8, dq_stages=3),
    BwdConfig(dq_m=128, dq_n=128, dq_warps=8, dq_stages=2),
    BwdConfig(dq_m=64, dq_n=64, dq_warps=4, dq_stages=3),
)
_AUTOTUNE = {"enabled": False}
_TUNED: dict[tuple, object] = {}


def set_autotune(enabled: bool) -> None:
    """Time the candidate configurations on the first call of each shape class and keep the fastest."""
    _AUTOTUNE["enabled"] = bool(enabled)


def tuned_configs() -> dict[str, str]:
    """The configurations the autotuner picked so far (for benchmark reports)."""
    return {repr(key): repr(cfg) for key, cfg in _TUNED.items()}


def _bucket(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _pick(kind: str, key: tuple, candidates, default, run):
    """Return the tuned config for ``key``: ``run(cfg)`` launches one candidate (used only while tuning)."""
    if interpreted():
        return INTERPRETER_FWD if kind == "fwd" else INTERPRETER_BWD
    full = (kind, *key)
    if full in _TUNED:
        return _TUNED[full]
    if not _AUTOTUNE["enabled"]:
        return default
    from triton.testing import do_bench

    best, best_ms = default, float("inf")
    for cfg in candidates:
        try:
            ms = do_bench(lambda cfg=cfg: run(cfg), warmup=5, rep=20, return_mode="median")
        except Exception:  # a candidate that does not fit (shared memory, registers) is skipped
            continue
        if ms < best_ms:
            best, best_ms = cfg, ms
    _TUNED[full] = best
    return best


# ------------------------------------------------------------------------------------- transform constants
@functools.lru_cache(maxsize=64)
def _si_constants(transform: LogitTransform, scale: float) -> dict[str, float]:
    """Constants of the log2-domain logits (see triton_kernels): b² = A2·log2(1 + t/τ) + K2, v = b·qk − γ·b²."""
    qk_scale = scale * LOG2E
    if transform.kind != "scale-invariant":
        return dict(qk_scale=qk_scale, inv_tau=0.0, A2=0.0, K2=0.0, NEG_GAMMA=0.0)
    tau, alpha, beta = transform.parameters
    kc = 2.0 * (beta / alpha - math.log(alpha))
    return dict(qk_scale=qk_scale, inv_tau=1.0 / tau, A2=qk_scale**2 * 2.0 * LN2, K2=qk_scale**2 * kc,
                NEG_GAMMA=-LOG2E / qk_scale**2)


def _a_of_t(t: np.ndarray, tau: float, alpha: float, beta: float) -> np.ndarray:
    return np.sqrt(2.0 * (np.log1p(t / tau) - math.log(alpha) + beta / alpha))


def _fit_matrix(window: int, order: int) -> np.ndarray:
    """Least-squares projector P ((order+1) × window): coefficients c = P·f for f at k = 0 .. window−1, in z."""
    half = (window - 1) / 2.0
    z = (np.arange(window) - half) / half
    return np.linalg.pinv(np.vander(z, order + 1, increasing=True))


@functools.lru_cache(maxsize=64)
def poly_thresholds(tau: float, alpha: float, beta: float, window: int) -> tuple[int, int, int]:
    """Smallest nearest-key distance (T1, T2, T3) from which the order-1/2/3 polynomial of a_t over ``window``
    consecutive distances keeps |Δa|·(POLY_SCORE_MAX + 2a) <= POLY_LOGIT_TOL (the logit error); NEVER if not
    reached below POLY_SEARCH_MAX."""
    n = POLY_SEARCH_MAX
    a = _a_of_t(np.arange(n + window, dtype=np.float64), tau, alpha, beta)
    windows = np.lib.stride_tricks.sliding_window_view(a, window)[:n]  # [i, k] = a(i + k)
    half = (window - 1) / 2.0
    z = (np.arange(window) - half) / half
    out = []
    for order in (1, 2, 3):
        fitted = windows @ _fit_matrix(window, order).T @ np.vander(z, order + 1, increasing=True).T
        err = (np.abs(fitted - windows) * (POLY_SCORE_MAX + 2.0 * windows)).max(axis=1)
        bad = np.nonzero(err > POLY_LOGIT_TOL)[0]
        first_ok = 0 if bad.size == 0 else int(bad[-1]) + 1
        out.append(first_ok if first_ok < n else NEVER)
    t1, t2, t3 = out
    # the kernels assume T1 >= T2 >= T3 (a higher order is accurate wherever a lower one is)
    t2 = min(t2, t1)
    t3 = min(t3, t2)
    return t1, t2, t3


_TABLES: dict[tuple, torch.Tensor] = {}


def coefficient_table(transform: LogitTransform, scale: float, window: int, length: int,
                      device: torch.device) -> torch.Tensor:
    """(9, L) float32, L >= length: rows [0:2], [2:5], [5:9] hold the order-1, 2, 3 least-squares
    coefficients (in z) of b(i + k) = scale·log2(e)·a_{i+k}, k = 0 .. window−1, for every nearest distance i."""
    tau, alpha, beta = transform.parameters
    key = (tau, alpha, beta, float(scale), window, str(device))
    table = _TABLES.get(key)
    if table is not None and table.shape[1] >= length:
        return table
    size = max(4096, _bucket(length))
    t = torch.arange(size + window, dtype=torch.float64)
    b = torch.from_numpy(_a_of_t(t.numpy(), tau, alpha, beta)) * (scale * LOG2E)
    windows = b.unfold(0, window, 1)[:size]  # [i, k]
    rows = [windows @ torch.from_numpy(_fit_matrix(window, order)).T for order in (1, 2, 3)]
    table = torch.cat(rows, dim=1).T.contiguous().to(device=device, dtype=torch.float32)
    _TABLES[key] = table
    return table


@functools.lru_cache(maxsize=32)
def _slopes(num_heads: int, device: str) -> torch.Tensor:
    return (alibi_slopes(num_heads) * LOG2E).to(device=device, dtype=torch.float32)


_MODES = {"none": 0, "scale-invariant": 1, "alibi": 2}


def _transform_args(transform, scale, window, length, num_heads, device, causal):
    """(COEF, SLOPES, constants, (T1, T2, T3)) for one launch."""
    consts = _si_constants(transform, scale)
    if transform.kind == "scale-invariant" and causal and POLY_ENABLED:
        coef = coefficient_table(transform, scale, window, length, device)
        thresholds = poly_thresholds(*transform.parameters, window)
    else:
        coef = torch.zeros(9, 1, device=device, dtype=torch.float32)
        thresholds = (NEVER, NEVER, NEVER)
    return coef, _head_slopes(transform, num_heads, device), consts, thresholds


def _head_slopes(transform: LogitTransform, num_heads: int, device) -> torch.Tensor:
    """ALiBi slopes·log2(e) per head (a dummy for the other transforms)."""
    return _slopes(num_heads if transform.kind == "alibi" else 1, str(device))


# ------------------------------------------------------------------------------------------- program order
def heads_per_section(n_tiles: int, n_heads: int, sms: int) -> int:
    """How many heads the kernels interleave (``_schedule`` in triton_kernels). Causal tiles differ up to 2× in
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
    (rows, D) tiles of one head (``triton_kernels._head_tile``); it is passed to the kernel as a launch argument,
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
    """The forward tiling used without autotuning: ``DEFAULT_FWD_SI`` for the scale-invariant transform where
    k and v can be read through TMA, else ``DEFAULT_FWD``."""
    if transform.kind == "scale-invariant" and tma_compatible(k, v) and not interpreted():
        return DEFAULT_FWD_SI
    return DEFAULT_FWD


def default_bwd_config(transform: LogitTransform) -> BwdConfig:
    """The backward tiling used without autotuning: ``DEFAULT_BWD_SI`` for the scale-invariant transform, else
    ``DEFAULT_BWD``."""
    return DEFAULT_BWD_SI if transform.kind == "scale-invariant" else DEFAULT_BWD


# ------------------------------------------------------------------------------------------------- forward
def _forward(q, k, v, transform, q_offset, causal, scale, cfg: FwdConfig | None = None,
             stats: dict | None = None):
    """(out, lse). ``stats``, if given, receives "recomputed": the fraction of query blocks the fixed-offset
    forward had to recompute online (0.0 when it was not used; reading it synchronises)."""
    batch, heads, tq, dim = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    out = torch.empty_like(q)
    lse = torch.empty(batch, heads, tq, device=q.device, dtype=torch.float32)

    def launch(c: FwdConfig):
        coef, slopes, consts, (t1, t2, t3) = _transform_args(transform, scale, c.block_n, q_offset + tq,
                                                              heads, q.device, causal)
        n_blocks = triton.cdiv(tq, c.block_m)
        grid = _grid(c.section, n_blocks, batch * heads, q.device)
        static = c.static and tk >= c.static_min_keys
        flags = torch.empty(n_blocks * batch * heads, device=q.device, dtype=torch.int32) if static else lse
        tma = c.tma_loads and tma_compatible(k, v)
        k_arg, v_arg = (_head_descriptor(k, c.block_n), _head_descriptor(v, c.block_n)) if tma else (k, v)
        args = (
            q, k_arg, v_arg, out, lse, coef, slopes, flags,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
            batch * heads, heads, heads // hkv, tq, tk, q_offset, coef.shape[1],
            consts["qk_scale"], consts["inv_tau"], consts["A2"], consts["K2"], consts["NEG_GAMMA"], t1, t2, t3,
        )
        const = dict(HEAD_DIM=dim, BLOCK_M=c.block_m, BLOCK_N=c.block_n, MODE=_MODES[transform.kind],
                     CAUSAL=causal, LAZY=c.lazy, BOUND=c.bound and transform.kind == "scale-invariant",
                     USE_ASM=_use_asm(), TMA_LOADS=tma, num_warps=c.num_warps, num_stages=c.num_stages)
        _k.fwd_kernel[grid](*args, STATIC=static, **const)
        if static:  # the blocks whose fixed offset overflowed, again with the online softmax
            _k.fwd_kernel[grid](*args, REDO=True, **const)
        if stats is not None:
            stats["recomputed"] = flags.float().mean().item() if static else 0.0

    if cfg is None:
        key = (dim, q.dtype, transform.kind, causal, heads // hkv, _bucket(tq), _bucket(tk))
        cfg = _pick("fwd", key, FWD_CANDIDATES, default_fwd_config(transform, k, v), launch)
    launch(cfg)
    return out, lse


def _backward(q, k, v, out, lse, dout, transform, q_offset, causal, scale, cfg: BwdConfig | None = None,
              parts: tuple[str, ...] = ("dkdv", "dq")):
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

    def launch_dkdv(c: BwdConfig, dq_acc: torch.Tensor | None = None, fused: int = 0):
        coef, slopes, _, th = _transform_args(transform, scale, c.dkdv_m, q_offset + tq, heads, q.device, causal)
        tma = c.dkdv_tma_loads and tma_compatible(q, dout)
        q_arg, do_arg = (_head_descriptor(q, c.dkdv_m), _head_descriptor(dout, c.dkdv_m)) if tma else (q, dout)
        if fused == 2:  # TMA reductions into the accumulator seen as (B·H·D, Tq): one head's dQᵀ is D rows
            dq_arg = TensorDescriptor(dq_acc.view(-1, dq_pitch), shape=[batch * heads * dim, tq], strides=[dq_pitch, 1],
                                      block_shape=[dim, c.dkdv_m])
        else:
            dq_arg = dq_acc if fused else delta
        _k.bwd_dkdv_kernel[_grid(c.section, triton.cdiv(tk, c.dkdv_n), batch * hkv, q.device)](
            q_arg, k, v, do_arg, lse, delta, dk, dv, dq_arg, coef, slopes,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), dout.stride(0), dout.stride(1), dout.stride(2),
            dk.stride(0), dk.stride(1), dk.stride(2), dv.stride(0), dv.stride(1), dv.stride(2),
            batch * hkv, hkv, groups, tq, tk, q_offset, coef.shape[1], dq_pitch,
            consts["qk_scale"], consts["inv_tau"], consts["A2"], consts["K2"], consts["NEG_GAMMA"], ds_scale,
            *th, HEAD_DIM=dim, BLOCK_M=c.dkdv_m, BLOCK_N=c.dkdv_n, MODE=mode, CAUSAL=causal,
            USE_ASM=_use_asm(), POLY=c.dkdv_poly, EARLY_DP=c.dkdv_early_dp, FUSED_DQ=fused, TMA_LOADS=tma,
            ORDER_DQ=FUSED_DQ_ORDERS[c.fused_dq_order],
            num_warps=c.dkdv_warps, num_stages=c.dkdv_stages,
        )

    def launch_dq(c: BwdConfig):
        coef, slopes, _, th = _transform_args(transform, scale, c.dq_n, q_offset + tq, heads, q.device, causal)
        _k.bwd_dq_kernel[_grid(c.section, triton.cdiv(tq, c.dq_m), batch * heads, q.device)](
            q, k, v, dout, lse, delta, dq, coef, slopes,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), dout.stride(0), dout.stride(1), dout.stride(2),
            dq.stride(0), dq.stride(1), dq.stride(2),
            batch * heads, heads, groups, tq, tk, q_offset, coef.shape[1],
            consts["qk_scale"], consts["inv_tau"], consts["A2"], consts["K2"], consts["NEG_GAMMA"], ds_scale,
            *th, HEAD_DIM=dim, BLOCK_M=c.dq_m, BLOCK_N=c.dq_n, MODE=mode, CAUSAL=causal,
            USE_ASM=_use_asm(), num_warps=c.dq_warps, num_stages=c.dq_stages,
        )

    key = (dim, q.dtype, transform.kind, causal, groups, _bucket(tq), _bucket(tk))
    fused = _fused_mode((cfg or DEFAULT_BWD).fused_dq, transform, parts)
    if fused:  # one kernel for dK, dV and dQ

        def launch_fused(c: BwdConfig):
            dq_acc = torch.empty(batch * heads, dim, dq_pitch, device=q.device, dtype=torch.float32)
            preprocess(dq_acc)  # zeroes dq_acc (every launch while tuning adds into a fresh one)
            launch_dkdv(c, dq_acc, fused)
            _k.dq_from_accumulator_kernel[(triton.cdiv(tq, 64), batch * heads)](
                dq_acc, dq, dq.stride(0), dq.stride(1), dq.stride(2), heads, tq, dq_pitch, ds_scale,
                HEAD_DIM=dim, BLOCK=64)

        launch_fused(cfg or _pick("fused", key, DKDV_CANDIDATES, default_bwd_config(transform), launch_fused))
        return dq, dk, dv
    preprocess()
    if "dkdv" in parts:
        launch_dkdv(cfg or _pick("dkdv", key, DKDV_CANDIDATES, DEFAULT_BWD, launch_dkdv))
    if "dq" in parts:
        launch_dq(cfg or _pick("dq", key, DQ_CANDIDATES, DEFAULT_BWD, launch_dq))
    return dq, dk, dv


def _fused_mode(setting: str, transform: LogitTransform, parts: tuple[str, ...]) -> int:
    """``BwdConfig.fused_dq`` resolved for one backward: 0 (separate dQ kernel), 1 (atomics) or 2 (TMA)."""
    whole = set(parts) == {"dkdv", "dq"}
    if setting == "auto":
        return 2 if transform.kind == "scale-invariant" and whole and not interpreted() else 0
    if setting != "off" and not whole:
        raise ValueError(f"fused_dq={setting!r} computes every gradient in one kernel; parts must be "
                         f"('dkdv', 'dq'), got {parts!r}")
    mode = FUSED_DQ_MODES[setting]
    return 1 if mode == 2 and interpreted() else mode  # the interpreter has no TMA reductions


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


def _contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def flash_attention(q, k, v, *, transform: LogitTransform, q_offset: int, causal: bool, scale: float,
                    fwd_config: FwdConfig | None = None, bwd_config: BwdConfig | None = None) -> torch.Tensor:
    """The FlashAttention-style kernels (forward + backward) for any query length."""
    q, k, v = _contiguous(q), _contiguous(k), _contiguous(v)
    return _TritonAttention.apply(q, k, v, transform, q_offset, causal, scale, fwd_config, bwd_config)


# -------------------------------------------------------------------------------------------------- decode
@functools.lru_cache(maxsize=8)
def _sm_count(device: str) -> int:
    if device.startswith("cuda"):
        return torch.cuda.get_device_properties(torch.device(device)).multi_processor_count
    return 4


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


# ------------------------------------------------------------------------------------------------ backend
def use_decode(q: torch.Tensor, k: torch.Tensor, needs_grad: bool) -> bool:
    """Whether the split-K decoding kernel serves these inputs (few queries, no gradient)."""
    groups = q.shape[1] // k.shape[1]
    return not needs_grad and q.shape[2] <= DECODE_MAX_QUERIES and groups * q.shape[2] <= DECODE_MAX_ROWS


def triton_attention(q, k, v, *, transform: LogitTransform, q_offset: int, causal: bool,
                     scale: float) -> torch.Tensor:
    """Backend entry point: split-K decoding for a few queries without gradients, else the fused kernels."""
    if v.shape[-1] != q.shape[-1]:
        raise ValueError(f"the triton backend needs v's head dim to equal q's ({q.shape[-1]}), got {v.shape[-1]}")
    needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v))
    if use_decode(q, k, needs_grad):
        return decode_attention(q, k, v, transform=transform, q_offset=q_offset, causal=causal, scale=scale)
    return flash_attention(q, k, v, transform=transform, q_offset=q_offset, causal=causal, scale=scale)


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
                         "fused Triton kernels (CUDA, fp16/bf16, head dim 64/128) + split-K decoding"))

if os.environ.get("SIATTN_TRITON_AUTOTUNE") == "1":
    set_autotune(True)
