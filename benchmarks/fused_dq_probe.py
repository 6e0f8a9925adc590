"""H200 probe: dQ fused into the dK/dV kernel (``BwdConfig.fused_dq``) against the separate dQ kernel.

    PYTHONPATH=src python3 benchmarks/fused_dq_probe.py   (writes $OUT/fused_dq_probe.json)

Compiles the variants in parallel processes while the GPU tests of the fused path run, then checks the gradients
of each variant against the float32 reference at 4k × 2 (scale-invariant) and times the whole backward
(``_backward``: delta, the kernels, the float32 accumulator's zeroing and conversion) at the benchmark sizes.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kernel_h200 as kh

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(os.environ.get("OUT", ROOT / "bench_out"))


def variants():
    import siattn.backends.triton as tb

    base = tb.DEFAULT_BWD
    return {
        "split": base,
        "split poly0": dataclasses.replace(base, dkdv_poly=0),
        "fused tma": dataclasses.replace(base, fused_dq="tma"),
        "fused tma poly0": dataclasses.replace(base, fused_dq="tma", dkdv_poly=0),
        "fused atomics poly0": dataclasses.replace(base, fused_dq="atomics", dkdv_poly=0),
    }


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    import siattn.backends.triton as tb

    jobs = [(kind, True, 128, "bfloat16", tb.DEFAULT_FWD, cfg, None, ("dkdv", "dq"))
            for kind in ("scale-invariant", "none") for cfg in variants().values()]
    pool = mp.get_context("spawn").Pool(processes=8)
    pending = [pool.apply_async(kh._precompile_job, (job,)) for job in jobs]
    pool.close()
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "4",
                            "tests/backends/test_triton.py", "-k", "fused or program_order or dp_after or heads_per"],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    kh.log("pytest exit", tests.returncode, tests.stdout.strip().splitlines()[-1] if tests.stdout else "")
    (OUT / "fused-pytest.txt").write_text(tests.stdout + tests.stderr)
    for r in pending:
        msg = r.get()
        if "FAILED" in msg:
            kh.log(msg)
    pool.join()
    kh.log("precompiled")

    res = {"pytest_rc": tests.returncode, "accuracy": _accuracy(), "timing": []}
    for t, b in kh.SIZES:
        _time_at(t, b, res["timing"])
        (OUT / "fused_dq_probe.json").write_text(json.dumps(res, indent=1))
    return 0


def _accuracy():
    """Gradients of every variant against the float32 reference at 4k × 2 (scale-invariant)."""
    import torch

    import siattn.backends.triton as tb
    from siattn.backends.reference import reference_attention
    from siattn.backends.transforms import LogitTransform

    si = LogitTransform("scale-invariant")
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 6, 4096, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    qf, kf, vf = (x.float().requires_grad_(True) for x in (q, k, v))
    ref = reference_attention(qf, kf, vf, transform=si, q_offset=0, causal=True, scale=128**-0.5)
    g = torch.randn_like(ref)
    rg = torch.autograd.grad(ref, (qf, kf, vf), g)
    out, lse = tb._forward(q, k, v, si, 0, True, 128**-0.5)
    return kh.backward_errors(q, k, v, out, lse, g, rg, si, variants())


def _time_at(t, b, rows):
    """The whole backward of every variant at (T, B), H = 6, D = 128."""
    import torch

    from siattn.backends.transforms import LogitTransform

    torch.manual_seed(t)
    q, k, v = (torch.randn(b, 6, t, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    for kind in ("scale-invariant", "none"):
        kh.time_backward(q, k, v, LogitTransform(kind), variants(), rows)


if __name__ == "__main__":
    kh.T0 = time.time()
    sys.exit(main())
