"""``siattn eval``: validation loss of checkpoints at several context lengths and by position.

    siattn eval --checkpoint runs/cpu-tiny-rope runs/cpu-tiny-si-p-rope --out results/eval-cpu-tiny

For each checkpoint (a checkpoint folder, or a run folder: its newest checkpoint) and each length (default 1×,
4×, 16× its training length), the mean loss over the same ``--tokens`` targets at the start of the validation
split, in non-overlapping windows. Writes ``eval.json`` (everything, per-position bins included), ``eval.md``
(rows: checkpoints, columns: lengths), ``loss-by-position.png`` (log x, each checkpoint at its longest length)
and ``loss-by-length.png``. Lengths already in ``eval.json`` for the same checkpoint and token count are kept
(``--no-resume`` recomputes them).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from siattn.evaluation.checkpoints import checkpoint_state, load_checkpoints, open_validation_data, resolve_device
from siattn.evaluation.config import DEFAULT_TOKENS, EvalConfig
from siattn.evaluation.lengths import eval_lengths, length_label
from siattn.io import command_line, markdown_table, read_json, write_json, write_text
from siattn.recipes.arguments import Command

with contextlib.suppress(ImportError):  # Hugging Face model folders as checkpoints: siattn.hf registers the loader
    import siattn.hf  # noqa: F401

HELP = "Validation loss at 1×, 4×, 16× the training length (and by position) for one or more checkpoints."


@dataclass
class Plan:
    """What state.json says about a checkpoint (no weights loaded)."""

    method: str
    train_length: int
    eval_tokens: int | None
    eval_batch_tokens: int | None
    data: str | None


def plan_checkpoints(paths: list[str]) -> dict[str, Plan]:
    out = {}
    for path in paths:
        state = checkpoint_state(path)
        tc = state.get("train_config") or {}
        out[path] = Plan(state["model_config"]["method"], int(state["model_config"]["train_length"]),
                         tc.get("eval_tokens"), tc.get("eval_batch_tokens"), tc.get("data"))
    return out


def validation_size(path: str | None) -> int | None:
    """Tokens in the validation split of the dataset at ``path`` (None if there is none to open)."""
    from siattn.data import TokenDataset

    if not path or not Path(path).expanduser().exists():
        return None
    return len(TokenDataset(path).val)


def write_reports(out: Path, result: dict[str, Any]) -> str:
    """eval.md, loss-by-position.png and loss-by-length.png from the eval.json contents; returns the table."""
    from siattn.evaluation.plots import plot_loss_by_length, plot_loss_by_position

    entries = result["checkpoints"]
    all_lengths = sorted({int(L) for e in entries.values() for L in e["results"]})
    train_lengths = {e["train_length"] for e in entries.values()}
    common = next(iter(train_lengths)) if len(train_lengths) == 1 else None
    header = ["checkpoint", "method", "train length", *[length_label(L, common) for L in all_lengths]]
    rows = [[label, e["method"], e["train_length"],
             *[e["results"].get(str(L), {}).get("loss") for L in all_lengths]]
            for label, e in entries.items()]
    table = markdown_table(header, rows)
    text = ["# Validation loss by context length\n",
            f"Mean loss (nats/token) over the same {result['tokens']:,} validation tokens at every length "
            "(non-overlapping windows from the start of the validation split).\n",
            table,
            f"\nCommand: `{result['command']}`  \nData: {', '.join(sorted(result['data']))}  \n"
            f"Device: {result['device']}, dtype {result['dtype']}; siattn {result['version']}; "
            f"{result['date']}\n"]
    write_text(out / "eval.md", "\n".join(text))
    curves, by_length = [], []
    for label, e in entries.items():
        if not e["results"]:
            continue
        longest = e["results"][str(max(int(L) for L in e["results"]))]
        curves.append({"label": f"{label} (at {longest['length']})", "center": longest["positions"]["center"],
                       "loss": longest["positions"]["loss"], "train_length": e["train_length"]})
        lengths = sorted(int(L) for L in e["results"])
        by_length.append({"label": label, "lengths": lengths, "train_length": e["train_length"],
                          "losses": [e["results"][str(L)]["loss"] for L in lengths]})
    if curves:
        plot_loss_by_position(curves, out / "loss-by-position.png")
        plot_loss_by_length(by_length, out / "loss-by-length.png")
    return table


def main(args: EvalConfig, _: argparse.Namespace | None = None) -> int:
    """Evaluate as ``args`` says; writes eval.json, eval.md and the plots into ``args.out``."""
    import siattn
    from siattn.errors import check_output_folder
    from siattn.evaluation.loss_by_length import loss_at_length, scored_tokens

    check_output_folder("--out", args.out)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    plan = plan_checkpoints(args.checkpoint)
    lengths_of = {p: eval_lengths(pl.train_length, args.multipliers, args.lengths) for p, pl in plan.items()}
    all_lengths = sorted({L for ls in lengths_of.values() for L in ls})
    if args.tokens is not None:
        requested = args.tokens
    else:  # the checkpoints' own eval_tokens, within every validation split, at least one longest window
        known = [pl.eval_tokens for pl in plan.values() if pl.eval_tokens]
        requested = min(known) if known else DEFAULT_TOKENS
        sizes = [validation_size(args.data or pl.data) for pl in plan.values()]
        requested = min([requested] + [n - 1 for n in sizes if n])
        requested = max(requested, math.lcm(*all_lengths))
    n_tokens = scored_tokens(requested, all_lengths)
    if n_tokens != requested:
        print(f"scoring {n_tokens:,} tokens per length (a multiple of every length; asked for {requested:,})")
    batch_tokens = args.batch_tokens
    if batch_tokens is None:
        known = [pl.eval_batch_tokens for pl in plan.values() if pl.eval_batch_tokens]
        batch_tokens = min(known) if known else 0

    json_path = out / "eval.json"
    previous = (read_json(json_path) or {}) if args.resume else {}
    result: dict[str, Any] = {
        "command": command_line(args, "eval"),
        "tokens": n_tokens, "device": str(device), "dtype": args.dtype, "version": siattn.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M"), "data": [], "checkpoints": {},
    }
    checkpoints = load_checkpoints(args.checkpoint, device, args.labels, args.attn_backend, args.method)
    for path, ckpt in zip(args.checkpoint, checkpoints):
        ds = open_validation_data(args.data, ckpt)
        old = previous.get("checkpoints", {}).get(ckpt.label, {})
        keep = (old.get("path") == ckpt.path and previous.get("tokens") == n_tokens
                and old.get("data") == str(ds.path) and old.get("bins_per_decade") == args.bins_per_decade)
        entry = {**ckpt.describe(), "data": str(ds.path), "bins_per_decade": args.bins_per_decade,
                 "results": dict(old.get("results", {})) if keep else {}}
        result["checkpoints"][ckpt.label] = entry
        if str(ds.path) not in result["data"]:
            result["data"].append(str(ds.path))
        for length in lengths_of[path]:
            if str(length) in entry["results"]:
                kept = entry["results"][str(length)]["loss"]
                print(f"{ckpt.label} @ {length}: {kept:.4f} (kept from {json_path})")
                continue
            batch = max(1, batch_tokens // length) if batch_tokens else 1
            t0 = time.perf_counter()
            res = loss_at_length(ckpt.model, ds.val, length, n_tokens, batch_size=batch, dtype=args.dtype,
                                 head_chunk=args.head_chunk, progress=args.progress,
                                 desc=f"{ckpt.label}@{length}")
            entry["results"][str(length)] = {**res.to_dict(args.bins_per_decade),
                                             "seconds": round(time.perf_counter() - t0, 2)}
            print(f"{ckpt.label} @ {length}: loss {res.loss:.4f} over {res.tokens:,} tokens "
                  f"({res.windows} windows, {time.perf_counter() - t0:.1f} s)")
            write_json(json_path, result)
        del ckpt
    write_json(json_path, result)
    table = write_reports(out, result)
    print(f"\n{table}\nwrote {json_path}, {out / 'eval.md'}, {out / 'loss-by-position.png'}, "
          f"{out / 'loss-by-length.png'}")
    return 0


COMMAND = Command(HELP, EvalConfig, main, description=__doc__)
