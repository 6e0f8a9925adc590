"""``siattn analyze``: attention statistics (entropy, range entropy, recent-token mass).

Sub-commands are listed in ``SUBCOMMANDS`` (name -> Command); add a new one by adding an entry.

    siattn analyze theory --out results/theory     # IID N(0,1) scores: no scaling vs LogN vs scale-invariant
    siattn analyze model --checkpoint runs/cpu-tiny-si-p-rope runs/cpu-tiny-rope --length 4x
                                                   # the same metrics on trained models' logits, QQ plots
    siattn analyze needle --checkpoint runs/needle/finetuned-needle/si-p-rope --multipliers 1 16
                                                   # attention mass on the needle tokens, per layer and head
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from siattn.analysis.config import DEFAULT_DATA, ModelAnalysisConfig, NeedleAttentionRun, TheoryRun
from siattn.io import write_json, write_text
from siattn.recipes.arguments import Command

HELP = ("Attention statistics: entropy, range entropy and recent-token mass for IID Gaussian logits (theory) "
        "and for trained models' attention logits (model); attention on the needle tokens of retrieval "
        "prompts (needle).")


def _finite(obj):
    """JSON-safe copy: NaN/inf floats become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _theory_main(run: TheoryRun, _: argparse.Namespace | None = None) -> int:
    from tqdm import tqdm

    from siattn.analysis.theory import plot_figures, run_theory, to_markdown
    from siattn.errors import check_output_folder

    check_output_folder("--out", run.out)
    cfg = run.theory_config()
    out = Path(run.out)
    out.mkdir(parents=True, exist_ok=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    with tqdm(total=cfg.samples, desc="IID Gaussian draws", unit="draw") as bar:
        results = run_theory(cfg, progress=bar.update)
    figures = plot_figures(results, out)
    results["runtime_s"] = time.perf_counter() - start
    results["cpu_s"] = time.process_time() - cpu_start  # all threads; wall time depends on machine load
    results["figures"] = [p.name for p in figures]
    write_json(out / "theory.json", _finite(results))
    write_text(out / "theory.md", to_markdown(results))
    print(f"wrote {out / 'theory.json'}, {out / 'theory.md'}, " + ", ".join(str(p) for p in figures)
          + f" in {results['runtime_s']:.1f} s ({results['cpu_s']:.1f} s CPU)")
    return 0


def _made_by(record: dict) -> str:
    """The Markdown line under a report: the command, and the commit, hardware and date it ran at."""
    return f"\nCommand: `{record['command']}`  \nCommit {record['commit']}; {record['hardware']}; {record['date']}\n"


def _model_main(args: ModelAnalysisConfig, _: argparse.Namespace | None = None) -> int:
    from tqdm import tqdm

    from siattn.analysis import model_report, model_stats
    from siattn.data import DataError, validation_windows
    from siattn.errors import check_output_folder
    from siattn.evaluation.checkpoints import load_checkpoints, open_validation_data, resolve_device
    from siattn.io import command_line
    from siattn.provenance import environment
    from siattn.training import CheckpointError

    check_output_folder("--out", args.out)
    out = Path(args.out)
    everything: list[dict] = []
    start = time.perf_counter()
    try:
        device = resolve_device(args.device)
        # before anything is written: a tracked result file rewritten would mark the commit "+dirty"
        made_by = {"command": command_line(args, "analyze model"), **environment(device)}
        for ckpt in load_checkpoints(args.checkpoint, device):
            cfg = args.stats_config(ckpt.train_length)
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
            write_json(folder / "model.json", _finite(results))
            write_text(folder / "model.md", model_report.to_markdown(results, title))
            everything.append(results)
    except (CheckpointError, DataError, ValueError) as err:
        print(f"siattn analyze model: error: {err}")
        return 2
    figures = model_report.plot_comparison(everything, out) if len(everything) > 1 else []
    summary = {"checkpoints": [r["checkpoint"] | {"details": f"{r['checkpoint']['label']}/model.json",
                                                  "data": r["data"], "length": r["config"]["length"],
                                                  "sampled_n": r["sampled_n"], "mean": r["mean"]}
                               for r in everything],
               "runtime_s": time.perf_counter() - start, "figures": [p.name for p in figures], **made_by}
    write_json(out / "model.json", _finite(summary))
    md = model_report.summary_markdown(everything)
    md += "\nPer checkpoint: " + ", ".join(f"`{r['checkpoint']['label']}/model.md`" for r in everything)
    md += (". Comparison figures: " + ", ".join(f"`{p.name}`" for p in figures) + ".\n") if figures else ".\n"
    md += _made_by(summary)
    write_text(out / "model.md", md)
    print(f"wrote {out / 'model.json'}, {out / 'model.md'} and figures under {out} in "
          f"{summary['runtime_s']:.1f} s")
    return 0


def _needle_main(args: NeedleAttentionRun, _: argparse.Namespace | None = None) -> int:
    from tqdm import tqdm

    from siattn.analysis.needle_attention import best_head_mass, needle_attention, plot_mass_by_length, plot_mass_maps
    from siattn.errors import UsageError, check_output_folder
    from siattn.evaluation.checkpoints import (
        is_siattn_checkpoint,
        load_checkpoints,
        open_validation_data,
        resolve_device,
    )
    from siattn.evaluation.lengths import eval_lengths, length_label
    from siattn.evaluation.passkey import retrieval_task
    from siattn.io import command_line, markdown_table
    from siattn.provenance import environment

    check_output_folder("--out", args.out)
    foreign = [path for path in args.checkpoint if Path(path).exists() and not is_siattn_checkpoint(path)]
    if foreign:
        raise UsageError(f"checkpoint must be siattn GPT checkpoints (the measurement hooks their layers); not one: "
                         f"{', '.join(foreign)}")
    out = Path(args.out)
    device = resolve_device(args.device)
    summary = {"task": args.task, "command": command_line(args, "analyze needle"), **environment(device),
               "checkpoints": {}}
    for ckpt in load_checkpoints(args.checkpoint, device, method=args.method):
        ds = open_validation_data(args.data, ckpt)
        lengths = eval_lengths(ckpt.train_length, args.multipliers, args.lengths)
        cfg = args.attention_config(lengths)
        with tqdm(total=len(lengths) * cfg.trials, desc=f"{ckpt.label}: {args.task} attention",
                  unit="example") as bar:
            result = needle_attention(ckpt.model, retrieval_task(args.task, ds.val, ds.tokenizer), cfg,
                                      progress=bar.update)
        result |= {"checkpoint": ckpt.describe(), "data": str(ds.path), "train_length": ckpt.train_length}
        folder = out / ckpt.label
        write_json(folder / f"{args.task}-attention.json", result)
        plot_mass_maps(result, folder / f"{args.task}-attention-maps.png",
                       title=f"{ckpt.label} (step {ckpt.step}): attention mass on the {args.task} tokens")
        summary["checkpoints"][ckpt.label] = result
        del ckpt
    lengths = sorted({int(n) for r in summary["checkpoints"].values() for n in r["lengths"]})
    trains = {r["train_length"] for r in summary["checkpoints"].values()}
    common = next(iter(trains)) if len(trains) == 1 else None
    masses = {label: best_head_mass(r) for label, r in summary["checkpoints"].items()}
    body = [[label, *[mass.get(n) for n in lengths]] for label, mass in masses.items()]
    uniform = [next((r["lengths"][str(n)]["uniform"] for r in summary["checkpoints"].values()
                     if str(n) in r["lengths"]), None) for n in lengths]
    table = markdown_table(["checkpoint", *[length_label(n, common) for n in lengths]],
                           [*body, ["uniform share", *uniform]])
    write_json(out / f"{args.task}-attention.json", summary)
    write_text(out / f"{args.task}-attention.md", "\n".join([
        f"# Attention on the {args.task} tokens\n", table,
        f"\nThe best head's attention mass on the {args.task} sentence tokens (the largest over layers and heads "
        f"of the mean over {args.trials} examples per length, seed {args.seed}), while the model reads the answer "
        "teacher-forced; uniform share: what attention spread evenly over the keys would give. Per layer and "
        "head: each checkpoint's folder.", _made_by(summary)]))
    series = [{"label": label, "lengths": sorted(mass), "mass": [mass[n] for n in sorted(mass)]}
              for label, mass in masses.items()]
    plot_mass_by_length([{"title": args.task, "series": series,
                          "uniform": {n: u for n, u in zip(lengths, uniform) if u is not None}}],
                        out / f"{args.task}-attention.png", title="the best head's attention on the needle tokens")
    print(f"{table}\nwrote {out / f'{args.task}-attention.md'}, .json, .png and a folder per checkpoint")
    return 0


SUBCOMMANDS: dict[str, Command] = {
    # the analyses report their own checks on stdout
    "theory": Command("IID N(0,1) scores under no scaling, LogN and scale-invariant logits: global entropy vs N, "
                      "entropy within [t, tΔ) vs t, attention on the last 100 keys; fits, tables, figures.",
                      TheoryRun, _theory_main, report_on_stdout=True),
    "model": Command("The same metrics on trained checkpoints' real attention logits (per layer and the mean over "
                     "layers and heads) and QQ plots of their raw scores against N(0, 1).",
                     ModelAnalysisConfig, _model_main, report_on_stdout=True),
    "needle": Command("Attention mass on the needle tokens of retrieval prompts (needle or passkey), per layer "
                      "and head, at each length, for trained or fine-tuned checkpoints; tables, heat maps and the "
                      "best head's mass against the length.", NeedleAttentionRun, _needle_main),
}
