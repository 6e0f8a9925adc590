"""``siattn needle``: needle-in-a-haystack (the paper's task) or passkey retrieval; accuracy by length, depth.

    siattn needle --checkpoint runs/cpu-tiny-si-p-rope --out results/needle-cpu-tiny
    siattn needle --task passkey --checkpoint runs/cpu-tiny-si-p-rope --trials 50

needle: fine-tune each checkpoint on three-needle examples at its training length (haystacks from the
training split; 100 warm-up, 100 constant, 100 linear-decay steps with the model's own optimisers), then
decode greedily with the KV cache on ``--trials`` examples per length (haystacks from the validation split)
at 1×, 4×, 16× the training length. passkey: the same, zero-shot by default (``--finetune`` adds a
fine-tuned stage).
Writes ``{task}.json`` (every trial's output), ``{task}.md`` (accuracy, rows: checkpoints, columns: lengths)
and ``{task}-heatmap-{stage}.png`` (accuracy by needle depth × length); with ``--attention-trials``,
``{task}-attention-{label}-{stage}.png`` (attention mass on the needles per layer × head at each length).
Finished lengths in ``{task}.json`` with the same settings are kept (``--no-resume`` redoes them);
``--save-finetuned`` keeps the fine-tuned weights, which a resumed run reuses instead of fine-tuning again.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path
from typing import Any

from siattn.errors import UsageError
from siattn.evaluation.checkpoints import (
    Checkpoint,
    is_siattn_checkpoint,
    load_checkpoints,
    open_validation_data,
    resolve_device,
)
from siattn.evaluation.config import NeedleConfig
from siattn.evaluation.lengths import eval_lengths, length_label
from siattn.io import command_line, markdown_table, read_json, write_json, write_text
from siattn.recipes.arguments import Command

with contextlib.suppress(ImportError):  # Hugging Face model folders as checkpoints: siattn.hf registers the loader
    import siattn.hf  # noqa: F401

HELP = "Needle-in-a-haystack or passkey retrieval: accuracy by context length and needle depth."


def stage_settings(args: NeedleConfig, stage: str, ckpt: Checkpoint, batch: int) -> dict[str, Any]:
    """What a stage's numbers depend on: results kept for resume must have been made with the same."""
    s = {"trials": args.trial_count, "seed": args.seed, "margin": args.margin, "path": ckpt.path, "method": ckpt.method}
    if stage == "finetuned":
        s |= {"warmup": args.warmup, "constant": args.constant, "decay": args.decay, "batch_size": batch,
              "lr_scale": args.lr_scale}
    return s


def write_reports(out: Path, result: dict[str, Any], depth_bins: int) -> str:
    """{task}.md and the heat maps from the JSON contents; returns the accuracy table."""
    from siattn.analysis.needle_attention import plot_mass_maps
    from siattn.evaluation.needle import depth_accuracy
    from siattn.evaluation.plots import plot_depth_heatmaps

    task = result["task"]
    entries = result["checkpoints"]
    all_lengths = sorted({int(L) for e in entries.values() for st in e["stages"].values()
                          for L in st["lengths"]})
    train_lengths = {e["train_length"] for e in entries.values()}
    common = next(iter(train_lengths)) if len(train_lengths) == 1 else None
    cols = [length_label(L, common) for L in all_lengths]
    acc_rows, part_rows, loss_rows = [], [], []
    panels: dict[str, list[dict[str, Any]]] = {}
    for label, e in entries.items():
        for stage, st in e["stages"].items():
            cells = [st["lengths"].get(str(L)) for L in all_lengths]
            acc_rows.append([label, stage, *[c["accuracy"] if c else None for c in cells]])
            part_rows.append([label, stage, *[f"{c['key_accuracy']:.3f} / {c['value_accuracy']:.3f}"
                                              if c else None for c in cells]])
            loss_rows.append([label, stage, *[c.get("answer_loss") if c else None for c in cells]])
            if st["lengths"]:
                acc, _, lengths = depth_accuracy({int(L): r for L, r in st["lengths"].items()}, depth_bins)
                panels.setdefault(stage, []).append({"title": f"{label} ({stage})", "accuracy": acc,
                                                     "col_labels": [length_label(L) for L in lengths]})
    table = markdown_table(["checkpoint", "stage", *cols], acc_rows)
    what = ("a needle counts when its city and its number are both right" if task == "needle"
            else "exact match of the first integer in the greedy output")
    text = [f"# {task}: retrieval accuracy by context length\n",
            f"{result['trials']} examples per length, seed {result['seed']}; {what}.\n", table]
    if task == "needle":
        text += ["\nCity / number accuracy (each counted alone):\n",
                 markdown_table(["checkpoint", "stage", *cols], part_rows)]
    if any(v is not None for row in loss_rows for v in row[2:]):
        text += ["\nAnswer loss (nats/token, teacher-forced: the answer's mean cross-entropy given the prompt; "
                 "it still moves where accuracy sits at 0 or 1):\n",
                 markdown_table(["checkpoint", "stage", *cols], loss_rows)]
    text.append(f"\nCommand: `{result['command']}`  \nDevice: {result['device']}, dtype {result['dtype']}; "
                f"siattn {result['version']}; {result['date']}\n")
    write_text(out / f"{task}.md", "\n".join(text))
    for stage, ps in panels.items():
        plot_depth_heatmaps(ps, out / f"{task}-heatmap-{stage}.png",
                            title=f"{task}: accuracy by depth and length")
    for label, e in entries.items():
        for stage, st in e["stages"].items():
            if st.get("attention"):
                plot_mass_maps(st["attention"], out / f"{task}-attention-{label}-{stage}.png",
                               title=f"{label} ({stage}): attention mass on the {task} tokens")
    return table


def run_stage(args: NeedleConfig, stage: str, model: Any, *, ckpt: Checkpoint, task: Any,
              tokenizer: Any, lengths: list[int], entry: dict[str, Any], old: dict[str, Any],
              settings: dict[str, Any],
              extra: dict[str, Any], result: dict[str, Any], json_path: Path) -> None:
    """Evaluate ``model`` at every length not already in ``old`` (made with the same settings); record the
    results in ``entry["stages"][stage]`` and save ``result`` to ``json_path`` after each length."""
    from siattn.evaluation.needle import decoding_model, evaluate_retrieval

    done = ({int(L): r for L, r in old.get("lengths", {}).items()} if old.get("settings") == settings else {})
    st = {"settings": settings, **extra, "lengths": {str(L): r for L, r in sorted(done.items())}}
    entry["stages"][stage] = st
    kept = all(L in done for L in lengths)
    if kept:
        print(f"{ckpt.label} {stage}: every length kept from {json_path}")

    def save(length: int, res: dict[str, Any]) -> None:
        st["lengths"][str(length)] = res
        print(f"{ckpt.label} {stage} @ {length}: accuracy {res['accuracy']:.3f} "
              f"({res['needles']} needles in {res['trials']} trials)")
        write_json(json_path, result)

    if not kept:
        evaluate_retrieval(decoding_model(model, args.dtype), task, lengths, args.trial_count, done=done,
                           on_result=save, seed=args.seed, eod_id=tokenizer.eod_id, decode=tokenizer.decode,
                           margin=args.margin, progress=args.progress)
    if not args.attention_trials:
        return
    if kept:  # the stage's model may not be at hand (the fine-tuned weights are not rebuilt for nothing)
        if old.get("attention", {}).get("config", {}).get("trials") == args.attention_trials:
            st["attention"] = old["attention"]
        else:
            print(f"{ckpt.label} {stage}: no attention measurement kept; run with --no-resume to measure it")
    else:
        from siattn.analysis.needle_attention import NeedleAttentionConfig, needle_attention

        cfg = NeedleAttentionConfig(lengths=tuple(lengths), trials=args.attention_trials, seed=args.seed)
        st["attention"] = needle_attention(model, task, cfg)
        for length, cell in st["attention"]["lengths"].items():
            best = cell["best_head"]
            print(f"{ckpt.label} {stage} @ {length}: needle attention mass up to {best['mass']:.3f} (layer "
                  f"{best['layer']}, head {best['head']}; uniform {cell['uniform']:.4f})")
        write_json(json_path, result)


def main(args: NeedleConfig, _: argparse.Namespace | None = None) -> int:
    """Run the retrieval task as ``args`` says; writes {task}.json, {task}.md and the heat maps."""
    import siattn
    from siattn.data import load_tokenizer
    from siattn.errors import check_output_folder
    from siattn.evaluation.needle import finetune
    from siattn.evaluation.passkey import retrieval_task
    from siattn.training import TrainConfig, load_checkpoint, save_checkpoint

    check_output_folder("--out", args.out)
    task_name = args.task
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    json_path = out / f"{task_name}.json"
    previous = (read_json(json_path) or {}) if args.resume else {}
    if previous.get("task") != task_name:
        previous = {}
    result: dict[str, Any] = {
        "task": task_name, "command": command_line(args, "needle"), "trials": args.trial_count, "seed": args.seed,
        "device": str(device), "dtype": args.dtype, "version": siattn.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M"), "checkpoints": {},
    }
    tokenizer_override = load_tokenizer(args.tokenizer) if args.tokenizer else None
    foreign = [path for path in args.checkpoint if not is_siattn_checkpoint(path)] if args.attention_trials else []
    if foreign:  # refused before any checkpoint is loaded or evaluated
        raise UsageError(f"attention_trials needs siattn GPT checkpoints (the measurement hooks their layers); "
                         f"not one: {', '.join(map(str, foreign))}")

    for ckpt in load_checkpoints(args.checkpoint, device, args.labels, args.attn_backend, args.method):
        needs_data = task_name == "needle" or tokenizer_override is None
        ds = open_validation_data(args.data, ckpt) if needs_data else None
        tokenizer = tokenizer_override or ds.tokenizer
        if tokenizer.vocab_size > ckpt.config.vocab_size:
            raise SystemExit(f"tokenizer {tokenizer.spec!r} has {tokenizer.vocab_size} ids but {ckpt.label} "
                             f"was trained on {ckpt.config.vocab_size}: use the tokenizer of its data")
        lengths = eval_lengths(ckpt.train_length, args.multipliers, args.lengths)
        train_config = ckpt.train_config
        if train_config is None:
            print(f"{ckpt.label}: the checkpoint holds no training configuration; fine-tuning with the "
                  "paper's learning rates")
            train_config = TrainConfig(model=ckpt.config)
        batch = args.batch_size or train_config.batch_size
        micro = args.micro_batch_size or train_config.micro_batch_size or batch
        old = previous.get("checkpoints", {}).get(ckpt.label, {}).get("stages", {})
        entry: dict[str, Any] = {**ckpt.describe(), "stages": {}}
        result["checkpoints"][ckpt.label] = entry
        eval_task = retrieval_task(task_name, ds.val if ds else None, tokenizer)
        common = dict(ckpt=ckpt, task=eval_task, tokenizer=tokenizer, lengths=lengths, entry=entry,
                      result=result, json_path=json_path)

        if args.do_zero_shot:
            run_stage(args, "zero-shot", ckpt.model, old=old.get("zero-shot", {}),
                      settings=stage_settings(args, "zero-shot", ckpt, batch), extra={}, **common)
        if args.do_finetune:
            settings = stage_settings(args, "finetuned", ckpt, batch)
            prev = old.get("finetuned", {})
            same = prev.get("settings") == settings
            saved = out / f"finetuned-{task_name}" / ckpt.label
            model, ft = ckpt.model, prev.get("finetune", {})
            if same and all(str(L) in prev.get("lengths", {}) for L in lengths):
                pass  # every length is done: no need for the fine-tuned model
            elif same and (saved / "COMPLETE").exists():
                print(f"{ckpt.label}: reusing the fine-tuned weights in {saved}")
                model, _, _ = load_checkpoint(saved, device, attn_backend=args.attn_backend, method=args.method)
            else:
                ft_task = retrieval_task(task_name, ds.train if ds else None, tokenizer)
                ft = finetune(model, ft_task, length=ckpt.train_length, train_config=train_config,
                              warmup=args.warmup, constant=args.constant, decay=args.decay, batch_size=batch,
                              micro_batch_size=micro, lr_scale=args.lr_scale, seed=args.seed,
                              dtype=args.dtype, progress=args.progress, log=print)
                if args.save_finetuned:
                    save_checkpoint(saved, model=model, config=ckpt.config, train_config=train_config,
                                    step=ckpt.step, extra={"finetuned": task_name, "from": ckpt.path},
                                    save_rng=False)
            run_stage(args, "finetuned", model, old=prev, settings=settings, extra={"finetune": ft}, **common)
            del model
        write_json(json_path, result)
        del ckpt

    table = write_reports(out, result, args.depth_bins)
    print(f"\n{table}\nwrote {json_path}, {out / f'{task_name}.md'} and the heat maps in {out}")
    return 0


COMMAND = Command(HELP, NeedleConfig, main, description=__doc__)
