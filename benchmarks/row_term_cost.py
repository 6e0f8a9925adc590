"""What the exact row term costs: fused-kernel forward+backward with ``KernelOptions(row_term="output")`` and
``row_term="exact"`` (one more pass of the dQ kernel that sums Δ = Σ_j P_ij·dP_ij), scale-invariant logits.

    PYTHONPATH=src python benchmarks/row_term_cost.py [--out results/peaked-accuracy/row-term-cost.json]

For each (query rows, keys) shape it times forward+backward with ``triton.testing.do_bench`` (median, bf16,
B = 1, H = 8, D = 128, queries at the end of the keys) under both settings and prints the ratio. The default
``"auto"`` takes the exact path for at most 64 query rows, so the small-query rows are the ones users pay for.
CUDA only.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from siattn.backends import KernelOptions, LogitTransform, run_backend
from siattn.io import write_text

SHAPES = ((1, 9000), (16, 9000), (64, 9000), (64, 65536), (1024, 9000), (4096, 4096))


def time_case(rows: int, keys: int, row_term: str, rep_ms: int) -> float:
    """Median forward+backward time (ms) of the fused kernel for ``rows`` queries over ``keys`` keys."""
    from triton.testing import do_bench

    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 8, n, 128, device="cuda", dtype=torch.bfloat16, generator=gen).requires_grad_()
               for n in (rows, keys, keys))
    grad = torch.randn(1, 8, rows, 128, device="cuda", dtype=torch.bfloat16, generator=gen)
    options = KernelOptions(row_term=row_term)

    def step() -> None:
        out = run_backend(q, k, v, transform=LogitTransform("scale-invariant"), q_offset=keys - rows,
                          backend="triton", kernel=options)
        torch.autograd.grad(out, (q, k, v), grad)

    return do_bench(step, rep=rep_ms)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the rows as JSON here")
    parser.add_argument("--rep-ms", type=int, default=200, help="do_bench repetition time per case (ms)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("error: row_term_cost needs CUDA", file=sys.stderr)
        return 2
    rows = []
    print("| query rows | keys | output (ms) | exact (ms) | exact / output |\n| --- | --- | --- | --- | --- |")
    for n_rows, keys in SHAPES:
        output, exact = (time_case(n_rows, keys, term, args.rep_ms) for term in ("output", "exact"))
        rows.append({"query_rows": n_rows, "keys": keys, "output_ms": output, "exact_ms": exact})
        print(f"| {n_rows} | {keys} | {output:.3f} | {exact:.3f} | {exact / output:.2f} |", flush=True)
    if args.out:
        write_text(args.out, json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                         "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
