"""CPU attention timings and peak memory, one case per fresh subprocess.

Float32, B = 1, causal, scale-invariant transform. Time is the median of ``repeats`` calls after a warm-up call;
peak memory is the process's peak resident set during the first call (Linux: VmHWM, reset through
/proc/self/clear_refs just before the call) minus its resident set just before it, with the inputs already
allocated (elsewhere: growth of ``ru_maxrss``).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time


def cpu_case(backend: str, length: int, heads: int, dim: int, tau: float, backward: bool,
              repeats: int) -> dict:
    """Run in a fresh process: time and peak-RSS growth of one case (see the module docstring)."""
    import resource

    import torch

    from siattn.backends import run_backend
    from siattn.backends.transforms import LogitTransform

    torch.manual_seed(0)
    q, k, v = (torch.randn(1, heads, length, dim, requires_grad=backward) for _ in range(3))
    grad = torch.randn(1, heads, length, dim) if backward else None
    tr = LogitTransform("scale-invariant", tau=tau)

    def call():
        if backward:
            out = run_backend(q, k, v, transform=tr, backend=backend)
            return torch.autograd.grad(out, (q, k, v), grad)
        with torch.no_grad():
            return run_backend(q, k, v, transform=tr, backend=backend)

    reset = reset_peak_rss()
    base_kb = proc_status_kb("VmRSS") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    call()
    first = time.perf_counter() - start
    peak_kb = proc_status_kb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return {"first_call_s": first, "ms": 1e3 * statistics.median(times or [first]),
            "times_ms": [1e3 * x for x in times], "peak_mb": (peak_kb - base_kb) / 1024.0,
            "memory_method": "VmHWM after reset − VmRSS before" if reset else "ru_maxrss growth"}


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return proc_status_kb("VmHWM") > 0
    except OSError:
        return False


def proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def run_case_subprocess(spec: dict, timeout: float) -> dict:
    code = ("import json, sys; from siattn.benchmarking.cpu import cpu_case; "
            "print('RESULT ' + json.dumps(cpu_case(**json.loads(sys.argv[1]))))")
    try:
        proc = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"error": " / ".join(tail)[:300] or f"exit code {proc.returncode}"}


def reference_bytes(length: int, heads: int) -> float:
    """Rough peak of the reference backend: about four (heads, T, T) float32 matrices alive at once."""
    return 4.0 * heads * length * length * 4
