"""``siattn bench``: attention kernel benchmarks (the measuring code is :mod:`siattn.benchmarking`).

    siattn bench attention --device cuda --out results/kernel-h200.json    # Triton vs SDPA flash vs FlexAttention
    siattn bench attention --device cpu --out bench-cpu.json --md bench-cpu.md   # reference vs chunked vs flex

CUDA: causal bf16 attention at (T, B) = 4k×8, 16k×2, 64k×1 with H = 6, D = 128, forward and forward+backward,
timed with ``triton.testing.do_bench`` (median). FLOPs follow the FlashAttention convention: a causal forward
is 4·B·H·T²·D/2 (two matrix products over the lower triangle), forward+backward is 3.5× that (the backward's
five products count 2.5×; the recomputation of the scores is not counted). Decoding (one query against a
cache of 16k, 64k, 256k keys) reports GB/s of K and V read (2·B·Hkv·T·D·2 bytes; the query and output are
negligible), timed on a CUDA graph over enough cache copies to defeat the 60 MB L2, against the device's
copy bandwidth measured in the same run (a 2 GiB device-to-device copy, bytes read + written).

CPU: float32, B = 1, H = 4, D = 64, causal, scale-invariant transform. Every case runs in a fresh subprocess;
time is the median of ``--repeats`` calls after a warm-up call, and peak memory is the process's peak resident
set during the first call (Linux: VmHWM, reset through /proc/self/clear_refs just before the call) minus its
resident set just before it, with the inputs already allocated (elsewhere: growth of ``ru_maxrss``). For
``flex`` the compiled kernel comes from inductor's cache, filled by an earlier warm-up subprocess. The
reference backend is skipped where its score matrices would pass ``--memory-cap-gb``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from siattn.backends.options import KernelOptions
from siattn.benchmarking import accuracy as accuracy_module
from siattn.benchmarking.config import AccuracyBenchConfig, AttentionBenchConfig
from siattn.benchmarking.cpu import reference_bytes, run_case_subprocess
from siattn.benchmarking.cuda import add_ratios, copy_bandwidth, sdpa_default_kernels, time_decode, time_prefill
from siattn.io import write_text
from siattn.recipes.arguments import Command

HELP = "Benchmark the attention backends (CUDA: Triton vs SDPA vs FlexAttention; CPU: reference/chunked/flex)."


def _write(args: AttentionBenchConfig, result: dict, markdown: str) -> None:
    print(markdown)
    for path, text in ((args.out, json.dumps(result, indent=2)), (args.md, markdown)):
        if path is not None:
            write_text(path, text + "\n")
            print(f"wrote {path}")


def _attention_main(args: AttentionBenchConfig, _: argparse.Namespace | None = None) -> int:
    from siattn.errors import check_output_folder

    for flag, path in (("--out", args.out), ("--md", args.md)):
        check_output_folder(flag, None if path is None else Path(path).parent)
    if args.device == "cuda":
        result = run_cuda(args)
        _write(args, result, cuda_markdown(result))
    else:
        result = run_cpu(args)
        _write(args, result, cpu_markdown(result))
    return 0


# ---------------------------------------------------------------------------------------------------- CUDA
def run_cuda(args: AttentionBenchConfig) -> dict:
    import torch

    from siattn.provenance import environment

    if not torch.cuda.is_available():
        raise SystemExit("--device cuda needs a CUDA GPU (use --device cpu here)")
    import torch._dynamo

    # FlexAttention compiles once per shape and grad mode: more than dynamo's default 8 variants here
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                 "accumulated_cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(64, getattr(torch._dynamo.config, name)))
    heads = args.heads or 6
    kv_heads = args.kv_heads or heads
    dim = args.head_dim or 128
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    kernel = KernelOptions(autotune=bool(args.autotune))
    result = {"bench": "attention", "device": "cuda", **environment(torch.device("cuda")),
              "command": " ".join(sys.argv), "dtype": "bfloat16", "causal": True, "tau": args.tau,
              "flops_convention": "fwd = 4·B·H·T²·D/2 (causal); fwd+bwd = 3.5 × fwd",
              "timing": f"triton.testing.do_bench median, rep {args.rep_ms} ms", "prefill": [], "decode": []}
    result["copy"] = copy_bandwidth()
    result["sdpa_default_kernels"] = sdpa_default_kernels(heads, kv_heads, dim)
    print(f"device-to-device copy: {result['copy']['gbps']:.0f} GB/s (read + write)", flush=True)
    for t, b in args.sizes:
        for name in backends:
            row = time_prefill(name, t, b, heads, kv_heads, dim, args.tau, args.backward, args.rep_ms,
                               kernel=kernel)
            torch.cuda.empty_cache()
            result["prefill"].append(row)
            print(_prefill_line(row), flush=True)
    for length in args.decode_lengths:
        row = time_decode(length, args.decode_batch, heads, kv_heads, dim, args.tau)
        torch.cuda.empty_cache()
        row["copy_fraction"] = row.get("triton-si_gbps", 0.0) / result["copy"]["gbps"]
        result["decode"].append(row)
        print(_decode_line(row), flush=True)
    if args.autotune:
        from siattn.backends import triton as triton_backend

        result["triton_configs"] = triton_backend.tuned_configs()
    add_ratios(result)
    return result


def _prefill_line(row: dict) -> str:
    if "error" in row:
        return f"T={row['T']:>6} B={row['B']} {row['backend']:<12} ERROR {row['error']}"
    text = (f"T={row['T']:>6} B={row['B']} {row['backend']:<12} fwd {row['fwd_ms']:8.3f} ms "
            f"{row['fwd_tflops']:6.0f} TF/s")
    if "fwdbwd_ms" in row:
        text += f"   fwd+bwd {row['fwdbwd_ms']:8.3f} ms {row['fwdbwd_tflops']:6.0f} TF/s"
    return text


def _decode_line(row: dict) -> str:
    ours = row.get("triton-si_us")
    if ours is None:
        return f"decode T={row['T']}: {row}"
    return (f"decode T={row['T']:>7} B={row['B']}: triton-si {ours:7.1f} us {row['triton-si_gbps']:6.0f} GB/s "
            f"({100 * row['copy_fraction']:.0f}% of copy); sdpa {row.get('sdpa_us', float('nan')):7.1f} us")


def _fmt(x, spec=".3f"):
    return "—" if x is None else format(x, spec)


def cuda_markdown(result: dict) -> str:
    v = result["versions"]
    lines = [f"GPU: {result['hardware']}; torch {v['torch']}, triton {v.get('triton')}; commit {result['commit']}; "
             f"bf16, causal, τ = {result['tau']}; {result['timing']}; {result['flops_convention']}.", "",
             f"Device-to-device copy: {result['copy']['gbps']:.0f} GB/s (bytes read + written).", "",
             f"SDPA default (no backend forced) ran: {result.get('sdpa_default_kernels', '?')}.", "",
             "| T × B | backend | fwd ms | fwd TFLOP/s | fwd / SDPA flash | fwd / SDPA default | fwd+bwd ms "
             "| fwd+bwd TFLOP/s | fwd+bwd / SDPA flash | fwd+bwd / SDPA default | Flex+SI / this (fwd, fwd+bwd) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["prefill"]:
        size = f"{r['T'] // 1024}k × {r['B']}"
        if "error" in r:
            lines.append(f"| {size} | {r['backend']} | error: {r['error'][:80]} | | | | | | | | |")
            continue
        flex = ""
        if "fwd_speedup_vs_flex_si" in r:
            flex = f"{r['fwd_speedup_vs_flex_si']:.2f}×, {_fmt(r.get('fwdbwd_speedup_vs_flex_si'), '.2f')}×"
        lines.append(f"| {size} | {r['backend']} | {r['fwd_ms']:.3f} | {r['fwd_tflops']:.0f} | "
                     f"{_fmt(r.get('fwd_vs_sdpa'), '.2f')} | {_fmt(r.get('fwd_vs_sdpa_default'), '.2f')} | "
                     f"{_fmt(r.get('fwdbwd_ms'))} | {_fmt(r.get('fwdbwd_tflops'), '.0f')} | "
                     f"{_fmt(r.get('fwdbwd_vs_sdpa'), '.2f')} | {_fmt(r.get('fwdbwd_vs_sdpa_default'), '.2f')} | "
                     f"{flex} |")
    if result["decode"]:
        lines += ["", "Decoding (1 query, scale-invariant, q_offset = T − 1; CUDA-graph replay, K+V bytes read):",
                  "", "| cache T | B | KV MB | triton-si µs | GB/s | % of copy | SDPA µs | SDPA GB/s | eager µs |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in result["decode"]:
            lines.append(f"| {r['T'] // 1024}k | {r['B']} | {r['kv_bytes'] / 1e6:.0f} | "
                         f"{_fmt(r.get('triton-si_us'), '.1f')} | {_fmt(r.get('triton-si_gbps'), '.0f')} | "
                         f"{100 * r.get('copy_fraction', 0):.0f}% | {_fmt(r.get('sdpa_us'), '.1f')} | "
                         f"{_fmt(r.get('sdpa_gbps'), '.0f')} | {_fmt(r.get('triton-si_eager_us'), '.1f')} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------- CPU
def run_cpu(args: AttentionBenchConfig) -> dict:
    import torch
    from tqdm import tqdm

    from siattn.provenance import environment

    heads = args.heads or 4
    dim = args.head_dim or 64
    backends = [b.strip() for b in args.cpu_backends.split(",") if b.strip()]
    cases = []
    for length in args.lengths:
        for backend in backends:
            modes = ["fwd"] + (["fwd+bwd"] if args.backward and length <= args.backward_max_length else [])
            for mode in modes:
                cases.append((length, backend, mode))
    result = {"bench": "attention", "device": "cpu", **environment(torch.device("cpu")),
              "command": " ".join(sys.argv), "dtype": "float32", "B": 1, "H": heads, "D": dim, "tau": args.tau,
              "causal": True,
              "memory_method": "peak RSS during the first call minus RSS before it (VmHWM reset via "
                                "/proc/self/clear_refs; else ru_maxrss growth), fresh subprocess per case",
              "timing": f"wall clock, median of {args.repeats} calls after a warm-up call", "rows": []}
    bar = tqdm(cases, desc="cpu bench", unit="case")
    for length, backend, mode in bar:
        bar.set_postfix_str(f"{backend} {mode} T={length}")
        row = {"T": length, "backend": backend, "mode": mode}
        if backend == "reference" and reference_bytes(length, heads) > args.memory_cap_gb * 2**30:
            row["skipped"] = f"score matrices ≈ {reference_bytes(length, heads) / 2**30:.1f} GB > cap"
        elif backend == "flex" and mode == "fwd+bwd":
            row["skipped"] = "FlexAttention has no CPU backward"
        else:
            spec = dict(backend=backend, length=length, heads=heads, dim=dim, tau=args.tau,
                        backward=mode == "fwd+bwd", repeats=args.repeats)
            if backend == "flex":  # fill inductor's cache so the measured process does not compile
                run_case_subprocess(dict(spec, repeats=0), args.timeout_s)
            row.update(run_case_subprocess(spec, args.timeout_s))
        result["rows"].append(row)
        tqdm.write(_cpu_line(row))
    return result


def _cpu_line(row: dict) -> str:
    head = f"T={row['T']:>6} {row['backend']:<9} {row['mode']:<7}"
    if "skipped" in row:
        return f"{head} skipped: {row['skipped']}"
    if "error" in row:
        return f"{head} error: {row['error']}"
    return f"{head} {row['ms']:10.1f} ms  peak +{row['peak_mb']:8.1f} MB"


def cpu_markdown(result: dict) -> str:
    lines = [f"{result['hardware']}; torch {result['versions']['torch']}; commit {result['commit']}; float32, "
             f"B = 1, H = {result['H']}, D = {result['D']}, causal, scale-invariant τ = {result['tau']}. "
             f"Time: {result['timing']}. Memory: {result['memory_method']}.", "",
             "| T | backend | mode | ms | peak MB |", "| --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        if "skipped" in r or "error" in r:
            lines.append(f"| {r['T']} | {r['backend']} | {r['mode']} | {r.get('skipped') or r.get('error')} | |")
        else:
            lines.append(f"| {r['T']} | {r['backend']} | {r['mode']} | {r['ms']:.1f} | {r['peak_mb']:.0f} |")
    return "\n".join(lines)


def _accuracy_main(args: AccuracyBenchConfig, _: argparse.Namespace | None = None) -> int:
    import torch
    from tqdm import tqdm

    from siattn.backends import LogitTransform
    from siattn.errors import UsageError, check_output_folder
    from siattn.io import markdown_table
    from siattn.provenance import environment

    for name in ("out", "md"):
        check_output_folder(f"--{name}", Path(getattr(args, name)).parent if getattr(args, name) else None)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("device is cuda but CUDA is not available here; pass --device cpu (with --suite small)")
    cases = accuracy_module.PEAKED_CASES if args.suite == "peaked" else accuracy_module.SMALL_PEAKED_CASES
    transforms = [LogitTransform(t.strip(), tau=args.tau) for t in args.transforms.split(",")]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    dtype = getattr(torch, args.dtype)
    with tqdm(total=len(cases) * len(transforms) * args.seeds, desc="accuracy", unit="case") as bar:
        rows = accuracy_module.run_suite(cases, backends, dtype=dtype, seeds=range(args.seeds), transforms=transforms,
                                  device=args.device, kernel=KernelOptions(row_term=args.row_term),
                                  factor=args.factor, progress=lambda _: bar.update())
    table = accuracy_module.rows_table(rows)
    failed = [r for r in rows if r.failures]
    markdown = (f"{args.dtype} inputs on {args.device}; err = max|x − x64| / max|x64|; a row fails where err > "
                f"{args.factor} × err(plain {args.dtype} formula) + float32 eps; triton row term: {args.row_term}."
                f"\n\n{markdown_table(table[0], table[1:])}\n\n{len(rows) - len(failed)} of {len(rows)} rows "
                "within the bound.")
    result = {"config": dataclasses.asdict(args), **environment(torch.device(args.device)),
              "rows": [r.as_dict() for r in rows]}
    _write(args, result, markdown)
    return 0


SUBCOMMANDS: dict[str, Command] = {
    "attention": Command("attention kernels: time, TFLOP/s or GB/s, memory", AttentionBenchConfig, _attention_main,
                         description=__doc__),
    "accuracy": Command("accuracy on peaked attention: each backend's output and gradient errors against the "
                        "float64 formula, held to 2× those of the plain formula in the input dtype",
                        AccuracyBenchConfig, _accuracy_main, description=accuracy_module.__doc__),
}
