"""``KernelOptions``: the typed knobs of the fused Triton kernels, passed as ``kernel=`` to the public functions.

This module imports nothing from triton, so ``siattn.KernelOptions`` can be built on any machine; the tilings it
may carry (``FwdConfig``, ``BwdConfig``) live in :mod:`siattn.backends.triton.configs`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from siattn.backends.triton.configs import BwdConfig, FwdConfig


ROW_TERMS = ("auto", "output", "exact")
EXACT_ROW_TERM_QUERIES = 64
"""The largest number of query rows for which row_term="auto" sums the row term exactly."""


@dataclass(frozen=True)
class KernelOptions:
    """Options of the fused Triton kernels (``kernel=`` of :func:`siattn.scale_invariant_attention` and
    :func:`siattn.attention`). Only the triton backend reads them. ``deterministic`` needs nothing from the
    others on CPU (reference and chunked have no atomics anywhere); on CUDA, sdpa and flex follow torch's own
    setting (``torch.use_deterministic_algorithms``), which this option does not change.

    deterministic: no float atomics in the backward. The fused dQ path (dQ accumulated by the dK/dV kernel through
        atomics or TMA reductions, which add in no fixed order) is switched off (``fused_dq="off"``): a separate
        dQ kernel recomputes S and dP and owns its rows, so dQ is bitwise equal from run to run for the same
        inputs and tiling (the forward and dK/dV never use atomics). The fused path made the scale-invariant
        backward 8.5% / 5% / 3% faster at 4k / 16k / 64k on the H200, which this gives up. With ``autotune``
        the tiling is chosen by timing, so results are reproducible within a process, not across processes.
    autotune: time the candidate tilings on the first call of each shape class and keep the fastest
        (:mod:`siattn.backends.triton.autotune`); explicit ``forward``/``backward`` tilings are never tuned.
    far_tile_polynomials: evaluate the scale-invariant slope a_t on far tiles from per-row polynomials
        (logit error below 1e-4); False evaluates it exactly on every tile (slower; for measuring what the
        tables save).
    row_term: how the backward takes the row term Δ = Σ_j P_ij·dP_ij of dL = P∘(dP − Δ). "output" uses
        rowsum(dO∘O) from the stored output (FlashAttention's way, no extra pass); "exact" sums Σ_j P·dP from the
        backward's own P and dP (one more pass over the keys). The stored output is rounded to the input dtype,
        which in peaked attention (one key with P ≈ 1) swamps dP − Δ and costs dK and dQ their leading digits
        (the one-query case of :data:`siattn.benchmarking.accuracy.PEAKED_CASES`). "auto" (default) is "exact"
        for calls of at most ``EXACT_ROW_TERM_QUERIES`` query rows, where the extra pass is small in absolute
        terms and the error is largest (a gradient sums fewer rows), and "output" otherwise.
    forward, backward: explicit tilings (``FwdConfig``, ``BwdConfig``) overriding the per-architecture
        defaults (:func:`siattn.backends.triton.configs.default_kernel_configs`) and the autotuner.
    """

    deterministic: bool = False
    autotune: bool = False
    far_tile_polynomials: bool = True
    row_term: str = "auto"
    forward: FwdConfig | None = None
    backward: BwdConfig | None = None

    def __post_init__(self) -> None:
        if self.row_term not in ROW_TERMS:
            raise ValueError(f"KernelOptions.row_term must be one of {ROW_TERMS}, got {self.row_term!r}")
        for name in ("deterministic", "autotune", "far_tile_polynomials"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"KernelOptions.{name} must be True or False, got {getattr(self, name)!r}")
        if self.forward is not None or self.backward is not None:
            # a FwdConfig or BwdConfig exists only once the triton package was imported
            from siattn.backends.triton.configs import BwdConfig, FwdConfig

            if self.forward is not None and not isinstance(self.forward, FwdConfig):
                raise ValueError(f"KernelOptions.forward must be a FwdConfig or None, got {self.forward!r}")
            if self.backward is not None and not isinstance(self.backward, BwdConfig):
                raise ValueError(f"KernelOptions.backward must be a BwdConfig or None, got {self.backward!r}")
        if self.deterministic and self.backward is not None and self.backward.fused_dq not in ("off", "auto"):
            raise ValueError("KernelOptions.backward.fused_dq must be 'off' or 'auto' with deterministic=True "
                             f"(a fused dQ adds through float atomics), got {self.backward.fused_dq!r}")


    def exact_row_term(self, query_rows: int) -> bool:
        """Whether a backward of ``query_rows`` query rows per head sums the row term exactly (see row_term)."""
        if self.row_term == "auto":
            return query_rows <= EXACT_ROW_TERM_QUERIES
        return self.row_term == "exact"


DEFAULT_KERNEL_OPTIONS = KernelOptions()


def check_kernel_options(kernel: KernelOptions | None) -> KernelOptions:
    """``kernel`` itself, or the defaults for None; ValueError naming ``kernel`` for anything else."""
    if kernel is None:
        return DEFAULT_KERNEL_OPTIONS
    if not isinstance(kernel, KernelOptions):
        raise ValueError(f"kernel must be a siattn.KernelOptions or None, got {type(kernel).__name__}")
    return kernel
