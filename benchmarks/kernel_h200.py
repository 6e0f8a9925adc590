"""One H200 session for the Triton kernels: tests, accuracy at benchmark shapes, variants, full comparison.

    PYTHONPATH=src PYTHONUNBUFFERED=1 python3 benchmarks/kernel_h200.py [--stages tests,accuracy,variants,bench]

Stages (each logs to stdout and writes under $OUT, default ./bench_out):
  precompile  compile every kernel variant used below in parallel processes (Triton's disk cache), and warm
              inductor's cache for FlexAttention at the benchmark shapes, while the tests run
  tests       pytest tests/backends/test_triton.py and test_backends.py on the GPU (xdist workers)
  accuracy    relative error of forward and gradients against the float32 reference at benchmark-like shapes
  fwd-variants  every forward tile configuration only (plain, scale-invariant, ALiBi) -> summary.json
  order       the program order (heads per section: 1 = head by head, 0 = chosen from the shape, all heads) and
              the backward's early dP, default tiles, forward / dK/dV / dQ -> order.json
  variants    forward / backward tile configurations, lazy vs eager rescaling, polynomial tiles on/off,
              plain and ALiBi kernels, decoding configurations -> variants.json
  bench       ``siattn bench attention --device cuda`` -> kernel-h200.json / kernel-h200.md
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

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(os.environ.get("OUT", ROOT / "bench_out"))
SIZES = ((4096, 8), (16384, 2), (65536, 1))
T0 = time.time()


def log(*args):
    print(f"[{time.time() - T0:6.1f}s]", *args, flush=True)


# ------------------------------------------------------------------------------------------------ precompile
def _precompile_job(job):
    """Compile one (mode, causal, dim, dtype, fwd cfg, bwd cfg) combination on tiny inputs."""
    import torch

    import siattn.backends.triton as tb
    from siattn.backends.transforms import LogitTransform

    kind, causal, dim, dtype_name, fwd, bwd, decode, parts = job
    dtype = getattr(torch, dtype_name)
    start = time.time()
    try:
        q = torch.randn(1, 6, 256, dim, device="cuda", dtype=dtype)
        k, v = torch.randn_like(q), torch.randn_like(q)
        tr = LogitTransform(kind)
        if decode is not None:
            qd = torch.randn(1, 6, 1, dim, device="cuda", dtype=dtype)
            tb.decode_attention(qd, k, v, transform=tr, q_offset=255, causal=causal, scale=dim**-0.5,
                                config=decode)
        if fwd is not None:
            out, lse = tb._forward(q, k, v, tr, 0, causal, dim**-0.5, fwd)
            if bwd is not None:
                tb._backward(q, k, v, out, lse, torch.randn_like(out), tr, 0, causal, dim**-0.5, bwd,
                             parts=parts)
        torch.cuda.synchronize()
        return f"ok {time.time() - start:5.1f}s {job}"
    except Exception as err:
        return f"FAILED {job}: {type(err).__name__}: {str(err)[:400]}"


def precompile_jobs():
    import siattn.backends.triton as tb

    jobs, seen = [], set()
    for fwd in tb.FWD_CANDIDATES:
        jobs.append(("scale-invariant", True, 128, "bfloat16", fwd, None, None, ()))
        plain = (fwd.block_m, fwd.block_n, fwd.num_warps, fwd.num_stages, fwd.lazy, fwd.static)
        if plain not in seen:  # ``bound`` does not change the plain kernel
            seen.add(plain)
            jobs.append(("none", True, 128, "bfloat16", fwd, None, None, ()))
    for bwd in tb.DKDV_CANDIDATES:
        jobs.append(("scale-invariant", True, 128, "bfloat16", tb.DEFAULT_FWD, bwd, None, ("dkdv",)))
        # the same tiling with the fused dQ (the default for scale-invariant attention; the autotuner tries each)
        jobs.append(("scale-invariant", True, 128, "bfloat16", tb.DEFAULT_FWD, bwd, None, ("dkdv", "dq")))
    for bwd in tb.DQ_CANDIDATES:
        jobs.append(("scale-invariant", True, 128, "bfloat16", tb.DEFAULT_FWD, bwd, None, ("dq",)))
    jobs.append(("none", True, 128, "bfloat16", tb.DEFAULT_FWD, tb.DEFAULT_BWD, None, ("dkdv", "dq")))
    late_dp = dataclasses.replace(tb.DEFAULT_BWD, dkdv_early_dp=False)
    jobs.append(("none", True, 128, "bfloat16", tb.DEFAULT_FWD, late_dp, None, ("dkdv", "dq")))
    jobs.append(("alibi", True, 128, "bfloat16", tb.DEFAULT_FWD, tb.DEFAULT_BWD, None, ("dkdv", "dq")))
    for dec in DECODE_VARIANTS:
        jobs.append(("scale-invariant", True, 128, "bfloat16", None, None, dec, ()))
    return jobs


def _flex_warm(size):
    """Run FlexAttention (causal, SI) forward+backward once at a benchmark shape to fill inductor's cache."""
    import torch

    from siattn.backends.flex import flex_attention
    from siattn.backends.transforms import LogitTransform

    t, b = size
    start = time.time()
    try:
        q, k, v = (torch.randn(b, 6, t, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))
        for tr in (LogitTransform("none"), LogitTransform("scale-invariant")):
            out = flex_attention(q, k, v, transform=tr, q_offset=0, causal=True, scale=128**-0.5)
            torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
        torch.cuda.synchronize()
        return f"flex ok {time.time() - start:5.1f}s {size}"
    except Exception as err:
        return f"flex FAILED {size}: {type(err).__name__}: {str(err)[:300]}"


def start_precompile(flex: bool):
    ctx = mp.get_context("spawn")
    pool = ctx.Pool(processes=min(8, os.cpu_count() or 4))
    results = [pool.apply_async(_precompile_job, (job,)) for job in precompile_jobs()]
    if flex:
        results += [pool.apply_async(_flex_warm, (size,)) for size in SIZES]
    pool.close()
    return pool, results


# ------------------------------------------------------------------------------------------------ stages
def stage_tests():
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "6", "tests/backends/test_triton.py",
           "tests/backends/test_backends.py"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    text = proc.stdout + proc.stderr
    (OUT / "pytest.txt").write_text(text)
    log("pytest exit", proc.returncode)
    print("\n".join(text.strip().splitlines()[-25:]), flush=True)
    return proc.returncode


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def stage_accuracy():
    import torch

    import siattn.backends.triton as tb
    from siattn.backends.reference import reference_attention
    from siattn.backends.transforms import LogitTransform

    rows = []
    # (B, H, Tq, Tk, q_offset): full 4k, and the last rows of 16k / 64k prefixes (far tiles at large t)
    cases = [(2, 6, 4096, 4096, 0), (1, 6, 1024, 16384, 15360), (1, 6, 512, 65536, 65024)]
    for kind in ("scale-invariant", "none", "alibi"):
        tr = LogitTransform(kind)
        for b, h, tq, tk, off in cases:
            torch.manual_seed(tq + tk)
            q = torch.randn(b, h, tq, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            k = torch.randn(b, h, tk, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            v = torch.randn(b, h, tk, 128, device="cuda", dtype=torch.bfloat16, requires_grad=True)
            kw = dict(transform=tr, q_offset=off, causal=True, scale=128**-0.5)
            qf, kf, vf = (x.detach().float().requires_grad_(True) for x in (q, k, v))
            ref = reference_attention(qf, kf, vf, **kw)
            g = torch.randn_like(ref)
            rg = torch.autograd.grad(ref, (qf, kf, vf), g)
            out = tb.flash_attention(q, k, v, **kw)
            gr = torch.autograd.grad(out, (q, k, v), g.bfloat16())
            row = dict(kind=kind, B=b, H=h, Tq=tq, Tk=tk, q_offset=off, fwd=_rel(out, ref),
                       dq=_rel(gr[0], rg[0]), dk=_rel(gr[1], rg[1]), dv=_rel(gr[2], rg[2]))
            with torch.no_grad():
                dec = tb.decode_attention(q[:, :, -1:].detach(), k.detach(), v.detach(), transform=tr,
                                          q_offset=off + tq - 1, causal=True, scale=128**-0.5)
            row["decode"] = _rel(dec, ref[:, :, -1:])
            rows.append(row)
            log("accuracy", {k_: (f"{v_:.2e}" if isinstance(v_, float) else v_) for k_, v_ in row.items()})
            del q, k, v, qf, kf, vf, ref, rg, out, gr, g
            torch.cuda.empty_cache()
    return rows


DECODE_VARIANTS = []


def _decode_variants():
    import siattn.backends.triton as tb

    return [tb.DecodeConfig(64, 4, 3, 2), tb.DecodeConfig(64, 4, 4, 4)]


def _time(fn, rep_ms, graph=False):
    from triton.testing import do_bench, do_bench_cudagraph

    fn()
    if graph:
        return do_bench_cudagraph(fn, rep=rep_ms, return_mode="median")
    return do_bench(fn, warmup=10, rep=rep_ms, return_mode="median")


def backward_errors(q, k, v, out, lse, g, ref_grads, transform, variants: dict, label="accuracy") -> list[dict]:
    """Relative error of dq, dk, dv of every named backward config (causal, D = 128 scale) against ``ref_grads``
    (float32 reference gradients for the output gradient ``g``), one row per variant."""
    import siattn.backends.triton as tb

    rows = []
    for name, cfg in variants.items():
        grads = tb._backward(q, k, v, out, lse, g.bfloat16(), transform, 0, True, 128**-0.5, cfg)
        errs = {f"d{n}": _rel(a, r) for n, a, r in zip("qkv", grads, ref_grads)}
        rows.append(dict(variant=name, **errs))
        log(label, name, {k_: f"{v_:.2e}" for k_, v_ in errs.items()})
    return rows


def time_backward(q, k, v, transform, variants: dict, rows: list, **extra) -> None:
    """The whole backward (``_backward``: delta, the kernels, the dQ accumulator's zeroing and conversion) of every
    named config on the default forward's output, causal; appends {T, B, kind, variant, ms, **extra} to rows."""
    import torch

    import siattn.backends.triton as tb

    b, t, kind = q.shape[0], q.shape[2], transform.kind
    out, lse = tb._forward(q, k, v, transform, 0, True, 128**-0.5)
    dout = torch.randn_like(out)
    for name, cfg in variants.items():
        def fn(cfg=cfg):
            return tb._backward(q, k, v, out, lse, dout, transform, 0, True, 128**-0.5, cfg)
        try:
            ms = _time(fn, 100)
        except Exception as err:
            log("failed bwd", t, kind, name, type(err).__name__, str(err)[:300])
            continue
        rows.append(dict(T=t, B=b, kind=kind, **extra, variant=name, ms=ms))
        log(f"bwd T={t} {kind:16s} {name:22s} {ms:.3f} ms")


def _candidate_accuracy(res):
    """Every tuning candidate against the float32 reference (the autotuner may pick any of them)."""
    import torch

    import siattn.backends.triton as tb
    from siattn.backends.reference import reference_attention
    from siattn.backends.transforms import LogitTransform

    tr = LogitTransform("scale-invariant")
    for b, tq, tk, off in ((1, 2048, 2048, 0), (1, 384, 9000, 8616)):
        torch.manual_seed(tk)
        q, k, v = (torch.randn(b, 6, n, 128, device="cuda", dtype=torch.bfloat16) for n in (tq, tk, tk))
        kw = dict(transform=tr, q_offset=off, causal=True, scale=128**-0.5)
        qf, kf, vf = (x.float().requires_grad_(True) for x in (q, k, v))
        ref = reference_attention(qf, kf, vf, **kw)
        g = torch.randn_like(ref)
        rq, rk, rv = torch.autograd.grad(ref, (qf, kf, vf), g)
        _, lse = tb._forward(q, k, v, tr, off, True, 128**-0.5, tb.DEFAULT_FWD)
        for cfg in tb.FWD_CANDIDATES:
            try:
                out, _ = tb._forward(q, k, v, tr, off, True, 128**-0.5, cfg)
            except Exception as err:  # e.g. out of shared memory: the autotuner skips such candidates too
                log("candidate failed", cfg, type(err).__name__)
                continue
            res.append(dict(Tq=tq, Tk=tk, part="fwd", cfg=repr(cfg), err=_rel(out, ref)))
        out = ref.detach().bfloat16()
        for part, cands in (("dkdv", tb.DKDV_CANDIDATES), ("dq", tb.DQ_CANDIDATES)):
            for cfg in cands:
                try:
                    dq, dk, dv = tb._backward(q, k, v, out, lse, g.bfloat16(), tr, off, True, 128**-0.5, cfg,
                                              parts=(part,))
                except Exception as err:
                    log("candidate failed", cfg, type(err).__name__)
                    continue
                errs = {"dq": _rel(dq, rq)} if part == "dq" else {"dk": _rel(dk, rk), "dv": _rel(dv, rv)}
                res.append(dict(Tq=tq, Tk=tk, part=part, cfg=repr(cfg), **errs))
    worst = {}
    for r in res:
        for key in ("err", "dq", "dk", "dv"):
            if key in r:
                worst[r["part"] + ":" + key] = max(worst.get(r["part"] + ":" + key, 0.0), r[key])
    log("candidate accuracy, worst relative error per part:", {k_: f"{v_:.2e}" for k_, v_ in worst.items()})


def _variants_at(t, b, res, rep_ms, forward_only=False):
    import torch

    import siattn.backends.triton as tb
    from siattn.backends.transforms import LogitTransform
    from siattn.benchmarking.cuda import causal_flops

    torch.manual_seed(t)
    q, k, v = (torch.randn(b, 6, t, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    flops = causal_flops(b, 6, t, 128)
    scale = 128**-0.5
    for kind in ("scale-invariant", "none", "alibi"):
        tr = LogitTransform(kind)
        alibi_cfgs = [dataclasses.replace(tb.DEFAULT_FWD, static=static) for static in (False, True)]
        for cfg in tb.FWD_CANDIDATES if kind != "alibi" else alibi_cfgs:
            if kind != "scale-invariant" and cfg.bound != tb.DEFAULT_FWD.bound:
                continue
            try:
                ms = _time(lambda cfg=cfg, tr=tr: tb._forward(q, k, v, tr, 0, True, scale, cfg), rep_ms)
            except Exception as err:
                log("fwd variant failed", kind, cfg, err)
                continue
            res["fwd"].append(dict(T=t, B=b, kind=kind, cfg=repr(cfg), ms=ms, tflops=flops / ms / 1e9))
            log(f"fwd T={t} {kind:16s} {cfg}: {ms:.3f} ms {flops / ms / 1e9:.0f} TF/s")
    if forward_only:
        return
    si = LogitTransform("scale-invariant")
    for enabled in (False, True):
        opts = tb.KernelOptions(far_tile_polynomials=enabled)
        ms = _time(lambda opts=opts: tb._forward(q, k, v, si, 0, True, scale, tb.DEFAULT_FWD, options=opts), rep_ms)
        res["poly"].append(dict(T=t, B=b, poly=enabled, ms=ms))
        log(f"fwd T={t} SI default cfg, polynomial tiles {'on' if enabled else 'off'}: {ms:.3f} ms")
    for kind in ("scale-invariant", "none"):
        tr = LogitTransform(kind)
        out, lse = tb._forward(q, k, v, tr, 0, True, scale, tb.DEFAULT_FWD)
        dout = torch.randn_like(out)
        parts = (("dkdv", tb.DKDV_CANDIDATES), ("dq", tb.DQ_CANDIDATES))
        for part, cands in parts:
            for cfg in cands if kind == "scale-invariant" else (tb.DEFAULT_BWD,):
                def fn(cfg=cfg, tr=tr, out=out, lse=lse, dout=dout, part=part):
                    return tb._backward(q, k, v, out, lse, dout, tr, 0, True, scale, cfg, parts=(part,))
                try:
                    ms = _time(fn, rep_ms)
                except Exception as err:
                    log("bwd variant failed", kind, part, cfg, err)
                    continue
                res["bwd"].append(dict(T=t, B=b, kind=kind, part=part, cfg=repr(cfg), ms=ms))
                log(f"bwd T={t} {kind:16s} {part:4s} {cfg}: {ms:.3f} ms")


def _decode_variants_at(length, res):
    import torch

    import siattn.backends.triton as tb
    from siattn.backends.transforms import LogitTransform

    si = LogitTransform("scale-invariant")
    kv = 2 * 6 * length * 128 * 2
    copies = max(1, -(-(240 << 20) // kv))
    caches = [(torch.randn(1, 6, length, 128, device="cuda", dtype=torch.bfloat16),
               torch.randn(1, 6, length, 128, device="cuda", dtype=torch.bfloat16)) for _ in range(copies)]
    qd = torch.randn(1, 6, 1, 128, device="cuda", dtype=torch.bfloat16)
    for cfg in _decode_variants():
        def fn(cfg=cfg):
            for kc, vc in caches:
                tb.decode_attention(qd, kc, vc, transform=si, q_offset=length - 1, causal=True,
                                    scale=128**-0.5, config=cfg)
        try:
            us = _time(fn, 100, graph=True) * 1e3 / copies
        except Exception as err:
            log("decode variant failed", cfg, err)
            continue
        res["decode"].append(dict(T=length, cfg=repr(cfg), us=us, gbps=kv / us / 1e3))
        log(f"decode T={length} {cfg}: {us:.1f} us {kv / us / 1e3:.0f} GB/s")


def stage_variants(rep_ms=100, forward_only=False):
    """Every tile configuration at the three sizes; ``forward_only``: the forward ones alone (plain,
    scale-invariant, ALiBi), without the candidate accuracy, backward and decoding parts."""
    import torch

    if forward_only:
        res = {"fwd": []}
    else:
        res = {"fwd": [], "bwd": [], "poly": [], "decode": [], "candidate_accuracy": []}
        _candidate_accuracy(res["candidate_accuracy"])
    for t, b in SIZES:
        _variants_at(t, b, res, rep_ms, forward_only)
        torch.cuda.empty_cache()
    if forward_only:
        return res
    for length in (65536,):
        _decode_variants_at(length, res)
        torch.cuda.empty_cache()
    return res


def _order_at(t, b, record, rep_ms):
    import torch

    import siattn.backends.triton as tb
    from siattn.backends.transforms import LogitTransform

    torch.manual_seed(t)
    q, k, v = (torch.randn(b, 6, t, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    scale = 128**-0.5
    sections = (1, 0, b * 6)
    for kind in ("scale-invariant", "none"):
        tr = LogitTransform(kind)
        fwd_cfgs = [(dataclasses.replace(tb.DEFAULT_FWD, section=sec), sec, True) for sec in sections]
        fwd_cfgs.append((dataclasses.replace(tb.DEFAULT_FWD, static=False), 0, False))
        for cfg, sec, static in fwd_cfgs:
            ms = _time(lambda cfg=cfg, tr=tr: tb._forward(q, k, v, tr, 0, True, scale, cfg), rep_ms)
            record(T=t, B=b, kind=kind, part="fwd", section=sec, static=static, ms=ms)
        out, lse = tb._forward(q, k, v, tr, 0, True, scale, tb.DEFAULT_FWD)
        dout = torch.randn_like(out)
        for early in (False, True):
            for sec in sections:
                cfg = dataclasses.replace(tb.DEFAULT_BWD, dkdv_early_dp=early, section=sec)
                for part in ("dkdv", "dq"):
                    def fn(cfg=cfg, part=part, out=out, lse=lse, dout=dout, tr=tr):
                        return tb._backward(q, k, v, out, lse, dout, tr, 0, True, scale, cfg, parts=(part,))
                    record(T=t, B=b, kind=kind, part=part, section=sec, early_dp=early, ms=_time(fn, rep_ms))


def stage_order(rep_ms=100):
    """Forward, dK/dV and dQ times with the default tiles under each program order (``section``) and, for the
    backward, with dP issued early or after P. Rows of ``section`` 1 with late dP are the
    baseline: the order and the backward before the interleaved program order and early dP were introduced."""
    import torch

    rows = []

    def record(**row):
        rows.append(row)
        log("order", " ".join(f"{k_}={v_:.3f}" if isinstance(v_, float) else f"{k_}={v_}" for k_, v_ in row.items()))

    for t, b in SIZES:
        _order_at(t, b, record, rep_ms)
        torch.cuda.empty_cache()
        (OUT / "order.json").write_text(json.dumps(rows, indent=1))
    return rows


def stage_bench(extra_args):
    cmd = [sys.executable, "-m", "siattn", "bench", "attention", "--device", "cuda",
           "--out", str(OUT / "kernel-h200.json"), "--md", str(OUT / "kernel-h200.md"), *extra_args]
    log("running", " ".join(cmd))
    proc = subprocess.run(cmd, cwd=ROOT, text=True, timeout=500)
    return proc.returncode


def main():
    global DECODE_VARIANTS
    p = argparse.ArgumentParser()
    p.add_argument("--stages", default="precompile,tests,accuracy,variants,bench")
    p.add_argument("--bench-args", default="", help="extra arguments for siattn bench attention")
    args = p.parse_args()
    stages = args.stages.split(",")
    OUT.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYTHONPATH", str(ROOT / "src"))
    DECODE_VARIANTS = _decode_variants()
    subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu",
                    "--format=csv"], check=False)
    import torch
    import triton

    log("torch", torch.__version__, "triton", triton.__version__, torch.cuda.get_device_name())
    summary = {"torch": torch.__version__, "triton": triton.__version__, "gpu": torch.cuda.get_device_name()}
    pool = None
    if "precompile" in stages:
        pool, pending = start_precompile(flex="bench" in stages)
        log(f"precompiling {len(pending)} jobs in the background")
    if "tests" in stages:
        summary["pytest_rc"] = stage_tests()
    if pool is not None:
        for r in pending:
            msg = r.get()
            if "FAILED" in msg:
                log(msg)
        pool.join()
        log("precompile done")
    if "accuracy" in stages:
        summary["accuracy"] = stage_accuracy()
        (OUT / "summary.json").write_text(json.dumps(summary, indent=1))
    if "fwd-variants" in stages:
        summary["fwd_variants"] = stage_variants(forward_only=True)
        (OUT / "summary.json").write_text(json.dumps(summary, indent=1))
    if "order" in stages:
        summary["order"] = stage_order()
        (OUT / "summary.json").write_text(json.dumps(summary, indent=1))
    if "variants" in stages:
        summary["variants"] = stage_variants()
        (OUT / "summary.json").write_text(json.dumps(summary, indent=1))
    if "bench" in stages:
        summary["bench_rc"] = stage_bench(args.bench_args.split())
    (OUT / "summary.json").write_text(json.dumps(summary, indent=1))
    log("done")


if __name__ == "__main__":
    main()
