"""``siattn analyze``: attention statistics (entropy, range entropy, recent-token mass).

Sub-commands are listed in ``ANALYSES`` (name -> help, add_arguments, main); add a new one (e.g. ``model``,
the same metrics on a trained model's attention logits, reusing ``siattn.analysis.metrics``) by adding an
entry there.

    siattn analyze theory --out results/theory     # IID N(0,1) scores: no scaling vs LogN vs scale-invariant
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

HELP = "Attention statistics: entropy, range entropy and recent-token mass for IID Gaussian logits (theory)."


def _count(text: str) -> int:
    """An integer that may be written 1e6 or 1_000_000."""
    value = float(text)
    if value != int(value):
        raise argparse.ArgumentTypeError(f"expected an integer, got {text}")
    return int(value)


def _add_theory_arguments(p: argparse.ArgumentParser) -> None:
    from siattn.analysis.theory import TheoryConfig

    d = TheoryConfig()
    p.add_argument("--out", type=Path, default=Path("results/theory"),
                   help="output folder for theory.json, theory.md and the PNG figures")
    p.add_argument("--samples", type=_count, default=d.samples,
                   help="Monte-Carlo draws (mean ± standard error)")
    p.add_argument("--max-n", type=_count, default=d.max_n,
                   help="largest number of keys N (at 1e6: ~0.5 GB, ~100 CPU-seconds; "
                   "time ∝ samples · max_n)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the torch generator")
    p.add_argument("--tau", type=float, default=d.tau, help="τ of the scale-invariant schedule")
    p.add_argument("--logn-s", type=float, default=d.logn_s, help="s of the LogN scheme, logits × s·log N")


def _finite(obj):
    """JSON-safe copy: NaN/inf floats become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _theory_main(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from siattn.analysis.theory import TheoryConfig, plot_figures, run_theory, to_markdown

    try:
        cfg = TheoryConfig(samples=args.samples, max_n=args.max_n, seed=args.seed, tau=args.tau,
                           logn_s=args.logn_s)
    except ValueError as err:
        print(f"siattn analyze theory: {err}")
        return 2
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    with tqdm(total=cfg.samples, desc="IID Gaussian draws", unit="draw") as bar:
        results = run_theory(cfg, progress=bar.update)
    figures = plot_figures(results, out)
    results["runtime_s"] = time.perf_counter() - start
    results["cpu_s"] = time.process_time() - cpu_start  # all threads; wall time depends on machine load
    results["figures"] = [p.name for p in figures]
    (out / "theory.json").write_text(json.dumps(_finite(results), indent=1) + "\n")
    (out / "theory.md").write_text(to_markdown(results))
    print(f"wrote {out / 'theory.json'}, {out / 'theory.md'}, " + ", ".join(str(p) for p in figures)
          + f" in {results['runtime_s']:.1f} s ({results['cpu_s']:.1f} s CPU)")
    return 0


# name -> (one-line help, add_arguments, main). A `model` analysis (the metrics on a trained model's logits)
# goes here as a second entry.
AddArguments = Callable[[argparse.ArgumentParser], None]
Main = Callable[[argparse.Namespace], int]
ANALYSES: dict[str, tuple[str, AddArguments, Main]] = {
    "theory": ("IID N(0,1) scores under no scaling, LogN and scale-invariant logits: global entropy vs N, "
               "entropy within [t, tΔ) vs t, attention on the last 100 keys; fits, tables, figures.",
               _add_theory_arguments, _theory_main),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)
    for name, (help_, add, main_) in ANALYSES.items():
        p = sub.add_parser(name, help=help_, description=help_,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        add(p)
        p.set_defaults(_analysis=main_)


def main(args: argparse.Namespace) -> int:
    return int(args._analysis(args) or 0)
