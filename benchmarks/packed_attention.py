"""Packed documents on the fused Triton kernel: correctness against the documents run separately, and timings.

For each transform and packed length T, documents of random lengths (seeded; the lengths are written to the
result) are packed into one row and attended with ``cu_seqlens``; the same documents are also run one by one.
Reported, forward and backward (bf16, causal):
- errors: packed vs separate fused-kernel runs (max |Δ| and ‖Δ‖/‖ref‖ of out, dQ, dK, dV), and both vs the float32
  chunked backend on the packed input (the reference function, O(T) memory);
- timings (CUDA only, ``triton.testing.do_bench`` medians): packed, the documents one by one, and one unpacked
  causal call over the whole row (the work without document boundaries).

Run on a GPU machine from the repository root:
    PYTHONPATH=src python benchmarks/packed_attention.py --out results/packed-attention
Without CUDA it runs a tiny case through Triton's interpreter (TRITON_INTERPRET=1 is set here) as a smoke test.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from pathlib import Path

import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from siattn.backends import LogitTransform, run_backend  # noqa: E402
from siattn.backends.varlen import from_lengths  # noqa: E402

TRANSFORMS = {"si": LogitTransform("scale-invariant"), "none": LogitTransform("none"),
              "alibi": LogitTransform("alibi")}


def document_lengths(total: int, mean: int, seed: int) -> list[int]:
    """Random document lengths (1 .. 2·mean, a few one-token ones) summing to ``total``."""
    gen = torch.Generator().manual_seed(seed)
    lengths: list[int] = []
    while sum(lengths) < total:
        n = 1 if torch.rand((), generator=gen) < 0.05 else int(torch.randint(1, 2 * mean + 1, (), generator=gen))
        lengths.append(min(n, total - sum(lengths)))
    return lengths


def _errors(got: torch.Tensor, want: torch.Tensor) -> dict:
    diff = (got.float() - want.float())
    return {"max_abs": diff.abs().max().item(), "rel": (diff.norm() / want.float().norm().clamp_min(1e-30)).item()}


def run_case(kind: str, total: int, mean: int, heads: int, kv_heads: int, dim: int, seed: int, dtype: torch.dtype,
             device: str, timing: bool) -> dict:
    transform = TRANSFORMS[kind]
    lengths = document_lengths(total, mean, seed)
    cu = from_lengths(lengths, device=device)
    gen = torch.Generator(device=device).manual_seed(seed)

    def make(h: int) -> torch.Tensor:
        return torch.randn(1, h, total, dim, device=device, generator=gen).to(dtype).requires_grad_()

    q, k, v = make(heads), make(kv_heads), make(kv_heads)
    grad = torch.randn(1, heads, total, dim, device=device, generator=gen).to(dtype)
    inputs = (q, k, v)

    def packed():
        return run_backend(q, k, v, transform=transform, backend="triton", cu_seqlens=cu)

    def separate():
        return torch.cat([run_backend(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], transform=transform,
                                      backend="triton") for s, e in itertools.pairwise(cu.tolist())], dim=2)

    def unpacked():
        return run_backend(q, k, v, transform=transform, backend="triton")

    out_p = packed()
    grads_p = torch.autograd.grad(out_p, inputs, grad)
    out_s = separate()
    grads_s = torch.autograd.grad(out_s, inputs, grad)
    qf, kf, vf = (x.detach().float().requires_grad_() for x in inputs)
    out_r = run_backend(qf, kf, vf, transform=transform, backend="chunked", cu_seqlens=cu)
    grads_r = torch.autograd.grad(out_r, (qf, kf, vf), grad.float())
    result = {"transform": kind, "T": total, "documents": len(lengths), "lengths": lengths, "seed": seed,
              "heads": heads, "kv_heads": kv_heads, "dim": dim, "dtype": str(dtype).removeprefix("torch."),
              "packed_vs_separate": {}, "packed_vs_reference": {}, "separate_vs_reference": {}}
    for name, p, s, r in zip(("out", "dq", "dk", "dv"), (out_p, *grads_p), (out_s, *grads_s), (out_r, *grads_r)):
        result["packed_vs_separate"][name] = _errors(p, s)
        result["packed_vs_reference"][name] = _errors(p, r)
        result["separate_vs_reference"][name] = _errors(s, r)
    if timing and CUDA:
        from triton.testing import do_bench

        def fwd_bwd(fn):
            def step():
                torch.autograd.grad(fn(), inputs, grad)
            return step

        ms = {}
        for label, fn in (("packed", packed), ("separate", separate), ("unpacked", unpacked)):
            with torch.no_grad():
                ms[f"{label}_fwd"] = do_bench(fn, warmup=10, rep=100, return_mode="median")
            ms[f"{label}_fwd_bwd"] = do_bench(fwd_bwd(fn), warmup=10, rep=100, return_mode="median")
        result["ms"] = ms
    return result


def markdown(results: list[dict]) -> str:
    rows = ["| transform | T | docs | rel err out / dQ / dK / dV (packed vs separate) | rel err vs fp32 reference "
            "(packed; separate) out | fwd ms packed / separate / unpacked | fwd+bwd ms packed / separate / unpacked |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        ps = " / ".join(f"{r['packed_vs_separate'][n]['rel']:.1e}" for n in ("out", "dq", "dk", "dv"))
        ref = f"{r['packed_vs_reference']['out']['rel']:.1e}; {r['separate_vs_reference']['out']['rel']:.1e}"
        ms = r.get("ms")
        fwd = " / ".join(f"{ms[f'{x}_fwd']:.3f}" for x in ("packed", "separate", "unpacked")) if ms else "—"
        both = " / ".join(f"{ms[f'{x}_fwd_bwd']:.3f}" for x in ("packed", "separate", "unpacked")) if ms else "—"
        rows.append(f"| {r['transform']} | {r['T']} | {r['documents']} | {ps} | {ref} | {fwd} | {both} |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384] if CUDA else [48],
                        help="packed lengths T")
    parser.add_argument("--mean", type=int, default=None, help="mean document length (default T/16)")
    parser.add_argument("--transforms", nargs="+", default=list(TRANSFORMS), choices=list(TRANSFORMS))
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--kv-heads", type=int, default=None)
    parser.add_argument("--dim", type=int, default=128 if CUDA else 64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--out", type=Path, default=None, help="folder for packed_attention.json and README.md")
    args = parser.parse_args(argv)
    device = "cuda" if CUDA else "cpu"
    dtype = torch.bfloat16 if CUDA else torch.float16  # the interpreter's bf16 dot is wrong
    results = []
    for total in args.lengths:
        for kind in args.transforms:
            r = run_case(kind, total, args.mean or max(1, total // 16), args.heads, args.kv_heads or args.heads,
                         args.dim, args.seed, dtype, device, not args.no_timing)
            results.append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "lengths"}), flush=True)
    table = markdown(results)
    print(table)
    if args.out is not None:
        from siattn.provenance import environment

        args.out.mkdir(parents=True, exist_ok=True)
        meta = {"command": " ".join([Path(sys.argv[0]).as_posix(), *(argv or sys.argv[1:])]),
                "device": torch.cuda.get_device_name() if CUDA else "cpu (Triton interpreter)",
                **environment(torch.device("cuda" if CUDA else "cpu"))}
        (args.out / "packed_attention.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
        (args.out / "README.md").write_text("# Packed documents on the fused kernel\n\n"
                                            f"`{meta['command']}` on {meta['device']}.\n\n" + table)
    worst = max(r["packed_vs_separate"][n]["rel"] for r in results for n in ("out", "dq", "dk", "dv"))
    return 0 if worst < 2e-2 else 1


if __name__ == "__main__":
    sys.exit(main())
