"""The kernels' tiling and program-order choices: typed configurations, the defaults per GPU architecture
(measured on the H200 for sm_90), the small tiles the CPU interpreter runs, and the candidates the optional
autotuner times."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

LOG2E = 1.0 / math.log(2.0)
LN2 = math.log(2.0)
HEAD_DIMS = (64, 128)
DECODE_MAX_QUERIES = 16
DECODE_MAX_ROWS = 128  # G·Tq rows handled by one decoding program
POLY_LOGIT_TOL = 1e-4  # largest logit error (natural-log units) the polynomial tiles may add ...
POLY_SCORE_MAX = 8.0  # ... for scores |scale·q·k| up to this
POLY_SEARCH_MAX = 1 << 15  # thresholds are searched up to this distance (errors only shrink beyond it)
NEVER = 1 << 30


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
    uses atomics); "auto" is the architecture's ``ArchDefaults.fused_dq_si`` for the scale-invariant transform
    ("tma" on sm_90: H200, whole backward: −8.5% / −5% / −3% at 4k / 16k / 64k; "off" elsewhere) and "off"
    otherwise (the plain kernel was 4–5% slower fused). Float atomics add in no fixed order, so a fused dQ is not
    bitwise reproducible from run to run; "off" is (``KernelOptions(deterministic=True)`` turns "auto" to "off").
    ``section``: the program order of both kernels (see :func:`heads_per_section`; 0 picks it from the shape).
    ``dkdv_tma_loads``: the dK/dV kernel reads its query and dO tiles with TMA (as ``FwdConfig.tma_loads``).
    ``fused_dq_order``: where the fused kernel issues its dQᵀ product: "after-dk" (dV, dK, dQᵀ), "before-dk" (dV,
    dQᵀ, dK: the dK product then runs on during the reduction and the next step's loads, since Triton waits for the
    dQᵀ product, and every product issued before it, right away) or "before-dv" (dQᵀ, dV, dK: both accumulating
    products run on)."""

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

# any architecture without a row below: per-thread loads and a separate dQ kernel (no TMA descriptors or TMA
# reductions, which need sm_90)
GENERIC_FWD = DEFAULT_FWD
GENERIC_BWD = dataclasses.replace(DEFAULT_BWD, fused_dq="off")


@dataclass(frozen=True)
class ArchDefaults:
    """The tilings used without autotuning on one GPU architecture: ``fwd``/``bwd`` for plain and ALiBi logits,
    ``fwd_si``/``bwd_si`` for the scale-invariant transform; ``fused_dq_si``: what ``BwdConfig.fused_dq="auto"``
    means for the scale-invariant transform there (plain and ALiBi logits: "off")."""

    fwd: FwdConfig
    bwd: BwdConfig
    fwd_si: FwdConfig
    bwd_si: BwdConfig
    fused_dq_si: str = "off"

    def __post_init__(self) -> None:
        if self.fused_dq_si not in FUSED_DQ_MODES:
            raise ValueError(f"fused_dq_si must be one of {list(FUSED_DQ_MODES)}, got {self.fused_dq_si!r}")


# compute capability (major, minor) -> defaults; where each row was measured:
#   (9, 0): H200 (benchmarks/kernel_h200.py, results/kernel-h200/README.md)
#   GENERIC_DEFAULTS, every other capability (sm_80, sm_89, sm_100, ...) and the CPU interpreter: not measured
ARCH_DEFAULTS: dict[tuple[int, int], ArchDefaults] = {
    (9, 0): ArchDefaults(DEFAULT_FWD, DEFAULT_BWD, DEFAULT_FWD_SI, DEFAULT_BWD_SI, fused_dq_si="tma"),
}
GENERIC_DEFAULTS = ArchDefaults(GENERIC_FWD, GENERIC_BWD, GENERIC_FWD, GENERIC_BWD)


def arch_defaults(capability: tuple[int, int] | None) -> ArchDefaults:
    """The row of ``ARCH_DEFAULTS`` for compute ``capability`` (None: not a GPU, e.g. the interpreter), else the
    generic one."""
    return ARCH_DEFAULTS.get(tuple(capability), GENERIC_DEFAULTS) if capability is not None else GENERIC_DEFAULTS


def default_kernel_configs(capability: tuple[int, int] | None,
                           transform: str = "scale-invariant") -> tuple[FwdConfig, BwdConfig]:
    """(forward, backward) tilings for a GPU of compute ``capability`` (None: not a GPU, e.g. the interpreter)
    and a transform kind ("none", "alibi", "scale-invariant"): its row of ``ARCH_DEFAULTS``, else the generic
    configuration."""
    row = arch_defaults(capability)
    if transform == "scale-invariant":
        return row.fwd_si, row.bwd_si
    return row.fwd, row.bwd


# candidates tried by the optional autotuner (``KernelOptions(autotune=True)``; the benchmark turns it on); the
# dK/dV and dQ kernels are tuned separately (only the dkdv_* or dq_* fields of a candidate matter)
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
