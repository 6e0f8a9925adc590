"""``siattn analyze``: attention statistics (entropy, range entropy, recent-token mass).

Sub-commands are listed in ``ANALYSES`` (name -> help, add_arguments, main); add a new one by adding an entry.

    siattn analyze theory --out results/theory     # IID N(0,1) scores: no scaling vs LogN vs scale-invariant
    siattn analyze model --checkpoint runs/cpu-tiny-si-p-rope runs/cpu-tiny-rope --length 4x
                                                   # the same metrics on trained models' logits, QQ plots
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

from siattn.recipes.argtypes import NONNEGATIVE_INT, POSITIVE, SEED

HELP = ("Attention statistics: entropy, range entropy and recent-token mass for IID Gaussian logits (theory) "
        "and for trained models' attention logits (model).")


def _count(text: str) -> int:
    """An integer that may be written 1e6 or 1_000_000."""
    value = float(text)
    if value != int(value):
        raise argparse.ArgumentTypeError(f"expected an integer, got {text}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
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
    p.add_argument("--seed", type=SEED, default=d.seed, help="seed of the torch generator")
    p.add_argument("--tau", type=POSITIVE, default=d.tau, help="τ of the scale-invariant schedule")
    p.add_argument("--logn-s", type=POSITIVE, default=d.logn_s, help="s of the LogN scheme, logits × s·log N")


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
        print(f"siattn analyze theory: error: {err}")
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


DEFAULT_DATA = "data_cache/stdlib-bytes"


def _length(text: str) -> str:
    """A window length: tokens (4096, 1e4) or a multiple of the training length (4x)."""
    try:
        value = float(text[:-1]) if text.lower().endswith("x") else _count(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of tokens or a multiple like 4x, got {text}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"length must be positive, got {text}")
    return text


def _resolve_length(text: str | None, train_length: int) -> int:
    if text is None:
        return train_length
    if text.lower().endswith("x"):
        return round(float(text[:-1]) * train_length)
    return _count(text)


def _add_model_arguments(p: argparse.ArgumentParser) -> None:
    from siattn.analysis.model_stats import ModelStatsConfig

    d = ModelStatsConfig(length=4096)
    p.add_argument("--checkpoint", nargs="+", required=True, metavar="DIR",
                   help="checkpoint folders or run folders (their newest checkpoint)")
    p.add_argument("--data", metavar="PATH", default=None,
                   help=f"prepared dataset whose validation split is read (None: the checkpoint's training data, "
                   f"else {DEFAULT_DATA})")
    p.add_argument("--length", type=_length, default=None, metavar="T|Mx",
                   help="tokens per window, or a multiple of the training length such as 4x (None: the training "
                   "length)")
    p.add_argument("--queries", type=_count, default=d.queries,
                   help="random query rows per window, from its last tenth (N large)")
    p.add_argument("--windows", type=_count, default=d.windows, help="validation windows (one forward each)")
    p.add_argument("--layers", type=NONNEGATIVE_INT, nargs="+", default=None, metavar="L",
                   help="layers to analyse, negative from the end (None: all)")
    p.add_argument("--out", type=Path, default=Path("results/analysis-model"),
                   help="output folder: model.json, model.md, a folder of figures per checkpoint")
    p.add_argument("--seed", type=SEED, default=d.seed, help="seed of the query-row and QQ sampling")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, ...")


def _model_main(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from siattn.analysis import model_report, model_stats
    from siattn.data import DataError, validation_windows
    from siattn.evaluation.checkpoints import load_checkpoints, open_validation_data, resolve_device
    from siattn.training import CheckpointError

    out: Path = args.out
    everything: list[dict] = []
    start = time.perf_counter()
    try:
        device = resolve_device(args.device)
        for ckpt in load_checkpoints(args.checkpoint, device):
            cfg = model_stats.ModelStatsConfig(
                length=_resolve_length(args.length, ckpt.train_length), queries=args.queries,
                windows=args.windows, layers=tuple(args.layers) if args.layers else None, seed=args.seed)
            data = args.data or (ckpt.train_config.data if ckpt.train_config is not None else None) or DEFAULT_DATA
            ds = open_validation_data(data, ckpt)
            fit = min(cfg.windows, (len(ds.val) - 1) // cfg.length)
            if fit < 1:
                raise DataError(f"{ds.path}: the validation split has {len(ds.val)} tokens, fewer than one "
                                f"window of {cfg.length + 1}; lower --length or use a larger dataset")
            if fit < cfg.windows:
                print(f"{ds.path}: room for {fit} validation windows of {cfg.length} tokens, not {cfg.windows}")
            windows = [w[:, :-1] for w in validation_windows(ds.val, cfg.length, fit * cfg.length)]
            top = max(int(w.max()) for w in windows)
            if top >= ckpt.config.vocab_size:
                raise ValueError(f"{ds.path} holds token id {top}, outside the vocabulary of {ckpt.path} "
                                 f"({ckpt.config.vocab_size}); pass the --data it was trained on")
            with tqdm(total=len(windows), desc=f"{ckpt.label}: windows of {cfg.length}", unit="window") as bar:
                results = model_stats.analyze_model(ckpt.model, windows, cfg, progress=bar.update)
            results["checkpoint"] = ckpt.describe()
            results["data"] = str(ds.path)
            folder = out / ckpt.label
            title = f"{ckpt.label} (step {ckpt.step}), T = {cfg.length}"
            results["figures"] = [p.name for p in model_report.plot_figures(results, folder, title)]
            (folder / "model.json").write_text(json.dumps(_finite(results), indent=1) + "\n")
            (folder / "model.md").write_text(model_report.to_markdown(results, title))
            everything.append(results)
    except (CheckpointError, DataError, ValueError) as err:
        print(f"siattn analyze model: error: {err}")
        return 2
    figures = model_report.plot_comparison(everything, out) if len(everything) > 1 else []
    summary = {"checkpoints": [r["checkpoint"] | {"details": f"{r['checkpoint']['label']}/model.json",
                                                  "data": r["data"], "length": r["config"]["length"],
                                                  "sampled_n": r["sampled_n"], "mean": r["mean"]}
                               for r in everything],
               "runtime_s": time.perf_counter() - start, "figures": [p.name for p in figures]}
    (out / "model.json").write_text(json.dumps(_finite(summary), indent=1) + "\n")
    md = model_report.summary_markdown(everything)
    md += "\nPer checkpoint: " + ", ".join(f"`{r['checkpoint']['label']}/model.md`" for r in everything)
    md += (". Comparison figures: " + ", ".join(f"`{p.name}`" for p in figures) + ".\n") if figures else ".\n"
    (out / "model.md").write_text(md)
    print(f"wrote {out / 'model.json'}, {out / 'model.md'} and figures under {out} in "
          f"{summary['runtime_s']:.1f} s")
    return 0


# name -> (one-line help, add_arguments, main).
AddArguments = Callable[[argparse.ArgumentParser], None]
Main = Callable[[argparse.Namespace], int]
ANALYSES: dict[str, tuple[str, AddArguments, Main]] = {
    "theory": ("IID N(0,1) scores under no scaling, LogN and scale-invariant logits: global entropy vs N, "
               "entropy within [t, tΔ) vs t, attention on the last 100 keys; fits, tables, figures.",
               _add_theory_arguments, _theory_main),
    "model": ("The same metrics on trained checkpoints' real attention logits (per layer and the mean over "
              "layers and heads) and QQ plots of their raw scores against N(0, 1).",
              _add_model_arguments, _model_main),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)
    for name, (help_, add, main_) in ANALYSES.items():
        p = sub.add_parser(name, help=help_, description=help_,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        add(p)
        p.set_defaults(_analysis=main_)


def main(args: argparse.Namespace) -> int:
    from siattn.errors import check_output_folder

    check_output_folder("--out", getattr(args, "out", None))
    return int(args._analysis(args) or 0)
