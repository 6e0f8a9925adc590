"""The optional autotuner: on the first launch of each shape class it times the candidate configurations and
keeps the fastest (off by default; ``KernelOptions(autotune=True)``)."""

from __future__ import annotations

from siattn.backends.triton.configs import INTERPRETER_BWD, INTERPRETER_FWD
from siattn.backends.triton.runtime import interpreted

_TUNED: dict[tuple, object] = {}  # the tilings picked so far, by kernel and shape class


def tuned_configs() -> dict[str, str]:
    """The configurations the autotuner picked so far (for benchmark reports)."""
    return {repr(key): repr(cfg) for key, cfg in _TUNED.items()}


def _bucket(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _pick(kind: str, key: tuple, candidates, default, run, enabled: bool):
    """The tiling of one launch: ``default`` unless ``enabled`` (``KernelOptions.autotune``), then the tuned one for
    ``key``, timing the candidates on the first call (``run(cfg)`` launches one). The interpreter's small tiles
    under the interpreter."""
    if interpreted():
        return INTERPRETER_FWD if kind == "fwd" else INTERPRETER_BWD
    if not enabled:
        return default
    full = (kind, *key)
    if full in _TUNED:
        return _TUNED[full]
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
