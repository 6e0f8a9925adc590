"""``siattn reproduce``: the paper's comparison in one command — train every method, then evaluate them together.

For each method: ``siattn train`` into ``RUNS/<preset>-<method>`` (resumed, not restarted, when a checkpoint is
there; a finished run is not trained again), then one ``siattn eval`` over all checkpoints (loss at 1×, 4×, 16×
the training length and by position), ``siattn needle`` (fine-tuned needle retrieval) and ``siattn needle --task
passkey`` (zero-shot), and a summary table in the layout of the paper's results table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from siattn.methods import METHODS

HELP = "Reproduce the comparison: train each method on a preset, then loss by length, needle and passkey."

PAPER_METHODS = ["rope", "p-rope", "nope", "rope-ntk", "yarn", "logn-rope", "logn-p-rope", "logn-ntk", "alibi",
                 "si-p-rope"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="cpu-tiny", help="training preset (see `siattn train --list-presets`)")
    parser.add_argument("--methods", nargs="+", default=PAPER_METHODS, choices=sorted(METHODS), metavar="METHOD",
                        help="methods to compare (default: the paper's ten rows)")
    parser.add_argument("--runs", default=None, help="folder for the training runs (default: runs/reproduce-PRESET)")
    parser.add_argument("--out", default=None, help="results folder (default: results/reproduce-PRESET)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--data", default=None, help="prepared dataset folder (default: the preset's)")
    parser.add_argument("--steps", type=int, default=None, help="override the preset's training steps")
    parser.add_argument("--seed", type=int, default=None, help="training seed (default: the preset's)")
    parser.add_argument("--eval-tokens", type=int, default=None,
                        help="scored tokens per evaluation length (default: the checkpoints' eval_tokens)")
    parser.add_argument("--needle-trials", type=int, default=100, help="needle examples per length (0: skip)")
    parser.add_argument("--passkey-trials", type=int, default=50, help="passkey trials per length (0: skip)")
    parser.add_argument("--finetune-steps", type=int, nargs=3, default=None, metavar=("WARMUP", "CONSTANT", "DECAY"),
                        help="needle fine-tuning schedule (default: 100 100 100, as the paper)")
    parser.add_argument("--passkey-finetune", type=int, nargs=3, default=None,
                        metavar=("WARMUP", "CONSTANT", "DECAY"),
                        help="fine-tune for passkey with this schedule, then evaluate (default: zero-shot; small "
                             "models need ~2000 steps, see results/passkey-cpu-tiny)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _schedule(steps: list[int] | None) -> list[str]:
    """``--warmup W --constant C --decay D`` for a fine-tuning schedule (nothing for the default)."""
    if not steps:
        return []
    warm, const, decay = steps
    return ["--warmup", str(warm), "--constant", str(const), "--decay", str(decay)]


def _run(argv: list[str]) -> None:
    from siattn.cli import main as cli_main

    print("\n$ siattn " + " ".join(argv), flush=True)
    code = cli_main(argv)
    if code:
        raise SystemExit(f"`siattn {' '.join(argv)}` failed with exit code {code}")


def summarize(out: Path, methods: list[str]) -> str:
    """The paper-style table: validation loss and needle / passkey accuracy at 1×, 4×, 16× per method."""
    from siattn.io import markdown_table, read_json

    evaluation = read_json(out / "eval" / "eval.json") or {"checkpoints": {}}
    needle = read_json(out / "needle" / "needle.json") or {"checkpoints": {}}
    passkey = read_json(out / "passkey" / "passkey.json") or {"checkpoints": {}}
    rows, header_lengths = [], None
    for method in methods:
        ev = evaluation["checkpoints"].get(method)
        if ev is None:
            continue
        lengths = sorted(ev.get("results", {}), key=int)
        header_lengths = header_lengths or lengths
        row = [method] + [ev["results"][n]["loss"] for n in lengths]
        for source, stages in ((needle, ("finetuned",)), (passkey, ("finetuned", "zero-shot"))):
            found = source["checkpoints"].get(method, {}).get("stages", {})
            stage = next((st for st in stages if st in found), stages[0])
            result = found.get(stage, {}).get("lengths", {})
            row += [result[n]["accuracy"] if n in result else None for n in lengths]
        rows.append(row)
    if not rows:
        return "no results yet\n"
    train_length = int(header_lengths[0])
    names = [f"{int(n) // train_length}×" for n in header_lengths]
    header = ["method"] + [f"val@{n}" for n in names] + [f"needle@{n}" for n in names] + \
        [f"passkey@{n}" for n in names]
    return markdown_table(header, rows)


def main(args: argparse.Namespace) -> int:
    runs = Path(args.runs or f"runs/reproduce-{args.preset}")
    out = Path(args.out or f"results/reproduce-{args.preset}")
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    common = [] if args.device is None else ["--device", args.device]
    progress = ["--no-progress"] if args.no_progress else []
    checkpoints = []
    for method in args.methods:
        run_dir = runs / f"{args.preset}-{method}"
        argv = ["train", "--preset", args.preset, "--method", method, "--out", str(run_dir), *common, *progress]
        argv += [] if args.data is None else ["--data", args.data]
        argv += [] if args.steps is None else ["--steps", str(args.steps)]
        argv += [] if args.seed is None else ["--seed", str(args.seed)]
        if (run_dir / "checkpoints").exists():
            argv.append("--resume")
        _run(argv)
        checkpoints.append(str(run_dir))
    evaluate = ["--checkpoint", *checkpoints, "--labels", *args.methods, *common]
    tokens = [] if args.eval_tokens is None else ["--tokens", str(args.eval_tokens)]
    _run(["eval", *evaluate, *tokens, "--out", str(out / "eval"), *progress])
    if args.needle_trials:
        _run(["needle", "--task", "needle", *evaluate, "--trials", str(args.needle_trials),
              *_schedule(args.finetune_steps), "--out", str(out / "needle"), *progress])
    if args.passkey_trials:
        finetune = ["--finetune", "--no-zero-shot", *_schedule(args.passkey_finetune)] if args.passkey_finetune else []
        _run(["needle", "--task", "passkey", *evaluate, "--trials", str(args.passkey_trials), *finetune,
              "--out", str(out / "passkey"), *progress])
    table = summarize(out, args.methods)
    minutes = (time.time() - started) / 60
    (out / "README.md").write_text(
        f"# Comparison on `{args.preset}`\n\n{table}\nval: validation loss (nats/token) at multiples of the training "
        "length; needle: fraction of needles whose city and number are both right after fine-tuning; passkey: "
        f"{'exact match after fine-tuning' if args.passkey_finetune else 'zero-shot exact match'}.\n\n"
        f"Details: `eval/`, `needle/`, `passkey/`. This run took {minutes:.1f} minutes.\n")
    print("\n" + table + f"\nwritten to {out}/README.md")
    return 0
