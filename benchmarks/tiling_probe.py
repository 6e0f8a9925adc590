"""H200 probe: forward and backward tilings of the Triton kernels, side by side with the defaults.

    PYTHONPATH=src python3 benchmarks/tiling_probe.py [--set tma|ctas|narrow|stages|order|poly]
        [--sizes 4096x8,16384x2,65536x1]
    (writes $OUT/tiling_probe.json)

Sets: ``tma`` (session 7, call 1): key/value and query/dO tiles read through TMA descriptors
(``FwdConfig.tma_loads``, ``BwdConfig.dkdv_tma_loads``); ``ctas`` (call 2): 4-warp programs of 64 queries
(forward) or 64 keys (dK/dV), two of which share an SM and, unlike the two warpgroups of one 8-warp program,
never wait for each other at a barrier; ``narrow`` (call 4): 64 × 32 forward tiles through TMA (167 registers:
three programs per SM) and a 4-stage dK/dV pipeline; ``stages``: 3 to 6 stages in the dK/dV kernel, then
forward+backward of FlexAttention with the transform and of this kernel (defaults) as ``siattn bench`` times them;
``order`` (session 8): where the fused kernel issues its dQᵀ product (``BwdConfig.fused_dq_order``), for the 8-warp
kernel and for 4-warp programs of 64 keys with TMA loads (two per SM), then as ``stages`` and a profile of each
(two interleaved rounds); ``poly`` (session 8): the scale-invariant default (polynomials, dP after P, dQᵀ
before dV) beside one change each, profiled in three rounds.

Compiles the variants in parallel processes while the Triton backend's GPU tests run; then checks each variant
against the float32 reference at 4k × 2 (scale-invariant), times the forward and the whole backward (delta with
the accumulator's zeroing, the kernels, the conversion) of every variant at the benchmark sizes, times
forward+backward through autograd at 4k × 8, and profiles it kernel by kernel.
"""

from __future__ import annotations

import argparse
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
SCALE = 128**-0.5


SET = {"name": "ctas"}


def fwd_variants(kind: str) -> dict:
    import siattn.backends.triton as tb

    base = tb.DEFAULT_FWD
    if SET["name"] == "tma":
        tma = dataclasses.replace(base, tma_loads=True)
        out = {"base": base, "tma": tma, "tma s4": dataclasses.replace(tma, num_stages=4),
               "tma 128x128 s2": dataclasses.replace(tma, block_n=128, num_stages=2),
               "tma 64x64 w4 s2": dataclasses.replace(tma, block_m=64, num_warps=4, num_stages=2)}
        if kind != "scale-invariant":
            del out["tma s4"]
        return out
    if SET["name"] in ("stages", "order", "poly"):
        return {"default": None}  # default_fwd_config
    if SET["name"] == "narrow":
        si = tb.DEFAULT_FWD_SI
        if kind != "scale-invariant":
            return {"base": base}
        return {"base": base, "64x64 w4 s2 tma": si,
                "64x32 w4 s3 tma": dataclasses.replace(si, block_n=32, num_stages=3),
                "64x32 w4 s4 tma": dataclasses.replace(si, block_n=32, num_stages=4),
                "64x32 w4 s2 tma": dataclasses.replace(si, block_n=32, num_stages=2)}
    small = dataclasses.replace(base, block_m=64, num_warps=4, num_stages=2)
    return {"base": base, "64x64 w4 s2": small, "tma 64x64 w4 s2": dataclasses.replace(small, tma_loads=True),
            "64x64 w4 s3": dataclasses.replace(small, num_stages=3)}


def bwd_variants(kind: str) -> dict:
    import siattn.backends.triton as tb

    base = tb.DEFAULT_BWD
    if SET["name"] == "tma":
        tma = dataclasses.replace(base, dkdv_tma_loads=True)
        out = {"base": base, "tma": tma,
               "tma s2": dataclasses.replace(tma, dkdv_stages=2),
               "tma 32x64 w4 s2": dataclasses.replace(tma, dkdv_n=64, dkdv_warps=4, dkdv_stages=2),
               "tma 32x64 w4 s3": dataclasses.replace(tma, dkdv_n=64, dkdv_warps=4, dkdv_stages=3)}
        if kind == "scale-invariant":  # the autotuner's choice at 16k and 64k in session 6, with and without TMA
            late = dataclasses.replace(base, dkdv_poly=3, dkdv_early_dp=False)
            out["poly3 late-dP"] = late
            out["tma poly3 late-dP"] = dataclasses.replace(late, dkdv_tma_loads=True)
        else:
            del out["tma s2"], out["tma 32x64 w4 s3"]
        return out
    if SET["name"] == "stages":
        return {"s3": base, **{f"s{n}": dataclasses.replace(base, dkdv_stages=n) for n in (4, 5, 6)}}
    if SET["name"] == "order":
        if kind != "scale-invariant":  # the plain backward is not fused: the dQ order does not apply
            return {"base": base}
        s4 = dataclasses.replace(base, dkdv_stages=4)
        w4 = dataclasses.replace(base, dkdv_n=64, dkdv_warps=4, dkdv_stages=3, dkdv_tma_loads=True)
        return {"w8 s4 dQ after-dk": s4, "w8 s4 dQ before-dv": dataclasses.replace(s4, fused_dq_order="before-dv"),
                "w8 s3 dQ after-dk": base,
                "w8 s3 poly3 late-dP": dataclasses.replace(base, dkdv_poly=3, dkdv_early_dp=False),
                "w8 s4 poly3 late-dP dQ before-dv": dataclasses.replace(s4, dkdv_poly=3, dkdv_early_dp=False,
                                                                        fused_dq_order="before-dv"),
                **{f"w4 tma s3 dQ {order}": dataclasses.replace(w4, fused_dq_order=order)
                   for order in tb.FUSED_DQ_ORDERS}}
    if SET["name"] == "poly":
        if kind != "scale-invariant":
            return {"base": base}
        si = tb.DEFAULT_BWD_SI
        variants = [si, dataclasses.replace(si, dkdv_stages=7 - si.dkdv_stages),  # the other of 3 and 4 stages
                    dataclasses.replace(si, dkdv_poly=0, dkdv_early_dp=True), dataclasses.replace(si, dkdv_poly=1),
                    dataclasses.replace(si, dkdv_early_dp=True)]
        return {("default: " if c == si else "") + _dkdv_label(c): c for c in variants}
    if SET["name"] == "narrow":
        s4 = dataclasses.replace(base, dkdv_stages=4)
        out = {"base": base, "s4": s4}
        if kind == "scale-invariant":
            out["s4 late-dP"] = dataclasses.replace(s4, dkdv_early_dp=False)
            out["s4 poly3 late-dP"] = dataclasses.replace(s4, dkdv_poly=3, dkdv_early_dp=False)
            out["poly3 late-dP"] = dataclasses.replace(base, dkdv_poly=3, dkdv_early_dp=False)
        return out
    small = dataclasses.replace(base, dkdv_n=64, dkdv_warps=4, dkdv_stages=3)
    out = {"base": base, "32x64 w4 s3": small, "32x64 w4 s2": dataclasses.replace(small, dkdv_stages=2)}
    if kind == "scale-invariant":
        out["poly3 late-dP"] = dataclasses.replace(base, dkdv_poly=3, dkdv_early_dp=False)
        out["32x64 w4 s3 late-dP"] = dataclasses.replace(small, dkdv_early_dp=False)
        out["32x64 w4 s3 poly3 late-dP"] = dataclasses.replace(small, dkdv_poly=3, dkdv_early_dp=False)
    return out


def _dkdv_label(c) -> str:
    """A short name of a fused dK/dV configuration: stages, far-tile polynomials, dP order, dQᵀ order."""
    return (f"s{c.dkdv_stages} " + (f"poly{c.dkdv_poly}" if c.dkdv_poly else "exact")
            + (" early-dP" if c.dkdv_early_dp else " late-dP") + f" dQ {c.fused_dq_order}")


def _compile_job(job):
    """Compile one (kind, fwd cfg, bwd cfg) on 1024 keys (long enough for the fixed-offset forward)."""
    import torch

    import siattn.backends.triton as tb
    from siattn.backends.transforms import LogitTransform

    kind, fwd, bwd = job
    start = time.time()
    try:
        q, k, v = (torch.randn(1, 6, 1024, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        tr = LogitTransform(kind)
        out, lse = tb._forward(q, k, v, tr, 0, True, SCALE, fwd)
        if bwd is not None:
            tb._backward(q, k, v, out, lse, torch.randn_like(out), tr, 0, True, SCALE, bwd)
        torch.cuda.synchronize()
        return f"ok {time.time() - start:5.1f}s {kind} {fwd} {bwd}"
    except Exception as err:
        return f"FAILED {kind} {fwd} {bwd}: {type(err).__name__}: {str(err)[:400]}"


def _accuracy():
    """Forward and gradients of every scale-invariant variant against the float32 reference at 4k × 2."""
    import torch

    import siattn.backends.triton as tb
    from siattn.backends.reference import reference_attention
    from siattn.backends.transforms import LogitTransform

    si = LogitTransform("scale-invariant")
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 6, 4096, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    qf, kf, vf = (x.float().requires_grad_(True) for x in (q, k, v))
    ref = reference_attention(qf, kf, vf, transform=si, q_offset=0, causal=True, scale=SCALE)
    g = torch.randn_like(ref)
    rg = torch.autograd.grad(ref, (qf, kf, vf), g)
    rows = []
    for name, cfg in fwd_variants("scale-invariant").items():
        out, lse = tb._forward(q, k, v, si, 0, True, SCALE, cfg)
        rows.append(dict(part="fwd", variant=name, out=kh._rel(out, ref)))
        kh.log("accuracy fwd", name, f"{rows[-1]['out']:.2e}")
    out, lse = tb._forward(q, k, v, si, 0, True, SCALE)
    bwd = kh.backward_errors(q, k, v, out, lse, g, rg, si, bwd_variants("scale-invariant"), "accuracy bwd")
    return rows + [dict(part="bwd", **row) for row in bwd]


def _time_at(t, b, rows):
    import torch

    import siattn.backends.triton as tb
    from siattn.backends.transforms import LogitTransform

    torch.manual_seed(t)
    q, k, v = (torch.randn(b, 6, t, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    for kind in ("scale-invariant", "none"):
        tr = LogitTransform(kind)
        for name, cfg in fwd_variants(kind).items():
            try:
                ms = kh._time(lambda cfg=cfg, tr=tr: tb._forward(q, k, v, tr, 0, True, SCALE, cfg), 100)
            except Exception as err:
                kh.log("failed fwd", t, kind, name, type(err).__name__, str(err)[:300])
                continue
            rows.append(dict(T=t, B=b, kind=kind, part="fwd", variant=name, ms=ms))
            kh.log(f"fwd T={t} {kind:16s} {name:20s} {ms:.3f} ms")
        kh.time_backward(q, k, v, tr, bwd_variants(kind), rows, part="bwd")


def _profile(fwd_cfg, bwd_cfg, label):
    """Forward+backward through autograd at 4k × 8, scale-invariant: its time (as ``siattn bench`` takes it) and
    the CUDA time of every kernel in it."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    import siattn.backends.triton as tb
    from siattn.backends.transforms import LogitTransform

    si = LogitTransform("scale-invariant")
    q, k, v = (torch.randn(8, 6, 4096, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    g = torch.randn_like(q)

    def step():
        out = tb.flash_attention(q, k, v, transform=si, q_offset=0, causal=True, scale=SCALE, fwd_config=fwd_cfg,
                                 bwd_config=bwd_cfg)
        return torch.autograd.grad(out, (q, k, v), g)

    ms = kh._time(step, 100)
    kh.log(f"fwd+bwd (autograd) T=4096 x 8 {label}: {ms:.3f} ms")
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            step()
        torch.cuda.synchronize()
    rows = []
    for ev in prof.key_averages():
        if ev.device_type.name == "CUDA" and ev.count:
            rows.append(dict(kernel=ev.key[:90], calls=ev.count, us_per_step=ev.device_time_total / 5))
    rows.sort(key=lambda r: -r["us_per_step"])
    total = sum(r["us_per_step"] for r in rows)
    kh.log(f"profile {label}: {total:.1f} us of kernels per fwd+bwd")
    for r in rows:
        kh.log(f"   {r['us_per_step']:8.1f} us  x{r['calls'] // 5}  {r['kernel']}")
    return dict(label=label, fwd_bwd_ms=ms, total_us=total, kernels=rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", choices=["tma", "ctas", "narrow", "stages", "order", "poly"], default="stages",
                        help="which variants (see above)")
    parser.add_argument("--sizes", default="4096x8,16384x2,65536x1", help="T x B pairs to time")
    parser.add_argument("--no-tests", action="store_true", help="skip the GPU tests")
    args = parser.parse_args(argv)
    SET["name"] = args.set
    sizes = [tuple(int(x) for x in s.split("x")) for s in args.sizes.split(",")]
    OUT.mkdir(parents=True, exist_ok=True)
    import siattn.backends.triton as tb

    jobs = []
    for kind in ("scale-invariant", "none"):
        jobs += [(kind, cfg, None) for cfg in fwd_variants(kind).values()]
        jobs += [(kind, tb.DEFAULT_FWD, cfg) for cfg in bwd_variants(kind).values()]
    pool = mp.get_context("spawn").Pool(processes=8)
    pending = [pool.apply_async(_compile_job, (job,)) for job in jobs]
    pool.close()
    res = {"pytest_rc": None}
    if not args.no_tests:
        tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "4",
                                "tests/backends/test_triton.py"], cwd=ROOT, capture_output=True, text=True,
                               timeout=400)
        kh.log("pytest exit", tests.returncode, tests.stdout.strip().splitlines()[-1] if tests.stdout else "")
        (OUT / "tiling-pytest.txt").write_text(tests.stdout + tests.stderr)
        res["pytest_rc"] = tests.returncode
    for r in pending:
        msg = r.get()
        kh.log(msg[:200])
    pool.join()
    kh.log("precompiled")
    res["accuracy"] = _accuracy()
    res["timing"] = []
    for t, b in sizes:
        _time_at(t, b, res["timing"])
        (OUT / "tiling_probe.json").write_text(json.dumps(res, indent=1))
    if SET["name"] in ("stages", "order", "poly"):  # fwd+bwd as `siattn bench` times them, with the defaults
        from siattn.benchmarking.cuda import time_prefill

        res["prefill_4k"] = [time_prefill(name, 4096, 8, 6, 6, 128, 10.0, True, 100)
                             for name in ("flex-si", "triton-si")]
        for row in res["prefill_4k"]:
            kh.log("prefill 4k x 8", row)
        res["profile"] = [_profile(None, None, "default")]
        if SET["name"] in ("order", "poly"):  # interleaved rounds, against drift within the call
            rounds = range(1, 4 if SET["name"] == "poly" else 3)
            res["profile"] += [_profile(None, cfg, f"{name} (round {r})") for r in rounds
                               for name, cfg in bwd_variants("scale-invariant").items()]
    elif SET["name"] == "narrow":
        fwd_narrow = dataclasses.replace(tb.DEFAULT_FWD_SI, block_n=32, num_stages=3)
        bwd_s4 = dataclasses.replace(tb.DEFAULT_BWD, dkdv_stages=4)
        res["profile"] = [_profile(None, None, "default"), _profile(None, bwd_s4, "dkdv s4"),
                          _profile(fwd_narrow, bwd_s4, "fwd 64x32 w4 s3 tma, dkdv s4")]
    else:
        fwd_small = dataclasses.replace(tb.DEFAULT_FWD, block_m=64, num_warps=4, num_stages=2)
        bwd_small = dataclasses.replace(tb.DEFAULT_BWD, dkdv_n=64, dkdv_warps=4, dkdv_stages=3)
        res["profile"] = [_profile(tb.DEFAULT_FWD, tb.DEFAULT_BWD, "default"),
                          _profile(fwd_small, tb.DEFAULT_BWD, "fwd 64x64 w4 s2"),
                          _profile(fwd_small, bwd_small, "fwd 64x64 w4 s2, dkdv 32x64 w4 s3")]
    (OUT / "tiling_probe.json").write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    kh.T0 = time.time()
    sys.exit(main())
