"""``siattn train``: train the GPT with any attention method, from a preset plus overrides.

    siattn train --preset cpu-tiny --method si-p-rope          # ~5 min on 2 CPU cores, prepares the data
    siattn train --preset cpu-tiny --out runs/x --resume       # continue an interrupted run exactly
    torchrun --nproc_per_node 8 -m siattn train --preset paper-162m --method logn-p-rope
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from siattn.recipes.arguments import Command, config_values
from siattn.training.config import PRESETS, TrainConfig

HELP = "Train the GPT with any attention method (presets from 2 CPU cores to the paper's 162M/304M models)."


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``siattn train`` that are not part of the TrainConfig: where its values start from and how
    the run is carried out."""
    from siattn.recipes.arguments import integer

    g = parser.add_argument_group("run", "how the run starts and is carried out (not part of the TrainConfig)")
    g.add_argument("--preset", default="cpu-tiny", choices=sorted(PRESETS),
                   help="starting configuration: the options below default to its values")
    g.add_argument("--list-presets", action="store_true", help="print the presets as a table and exit")
    g.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                   help="continue from a checkpoint folder, or (no value) from the run folder's newest one")
    g.add_argument("--overwrite", action="store_true", help="start again in a run folder that holds checkpoints")
    g.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    g.add_argument("--threads", type=integer, default=None, help="torch CPU threads (default: torch's choice)")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="a progress bar")


def overrides(args: argparse.Namespace) -> dict[str, object]:
    """The TrainConfig and GPTConfig fields given on the command line or in ``--config`` (flat, by name)."""
    values = config_values(TrainConfig, args.as_dict())
    flat = {k: v for k, v in values.pop("model").items() if v is not None}
    return flat | {k: v for k, v in values.items() if v is not None}


def resolve(values: dict[str, object], args: argparse.Namespace) -> TrainConfig:
    """The preset with the given fields applied (:func:`siattn.training.config.resolve_config`)."""
    from siattn.errors import check_int
    from siattn.training.config import resolve_config

    if args.threads is not None:
        check_int("--threads", args.threads, min=1)
    return resolve_config(args.preset, **overrides(args))


def _print_presets() -> None:
    from siattn.training.config import describe_presets

    print("| preset | params | layers | width | heads × dim | vocab | seq | batch | steps | tokens | p-RoPE base |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in describe_presets():
        print(f"| {r['preset']} | {r['params'] / 1e6:.1f}M | {r['n_layer']} | {r['n_embd']} | {r['n_head']} × "
              f"{r['head_dim']} | {r['vocab']} | {r['seq_len']} | {r['batch_size']} | {r['steps']} | "
              f"{r['tokens'] / 1e6:.1f}M | {r['p_rope_base']:g} |")


def main(config: TrainConfig, args: argparse.Namespace) -> int:
    """Train ``config`` (``args``: the run options of :func:`add_run_arguments`)."""
    import torch

    from siattn.errors import check_output_folder
    from siattn.training.distributed import cleanup_distributed, init_distributed
    from siattn.training.trainer import RESUMABLE_OVERRIDES, find_checkpoint, resume_config, train

    if args.list_presets:
        _print_presets()
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    given = overrides(args)
    check_output_folder("--out", config.run_dir)
    resume = None
    if args.resume is not None:
        resume = Path(config.run_dir) if args.resume == "auto" else Path(args.resume)
        if args.resume == "auto" and find_checkpoint(resume) is None:
            print(f"--resume: {resume} holds no checkpoint yet; starting a new run there", file=sys.stderr)
            resume = None
        else:
            config, ignored = resume_config(resume, given)
            if ignored:
                print(f"--resume: keeping the checkpoint's {', '.join(ignored)} (only "
                      f"{', '.join(sorted(RESUMABLE_OVERRIDES))} may change on resume)", file=sys.stderr)
    info = init_distributed(args.device)
    try:
        result = train(config, info, resume=resume, overwrite=args.overwrite, progress=args.progress)
    finally:
        cleanup_distributed()
    if not info.is_main:
        return result.exit_code
    print()
    if result.stopped_by:
        print(f"stopped by {result.stopped_by} at step {result.step}/{result.steps}; continue with --resume")
    print(f"validation loss (nats/token) at step {result.step}:")
    for length, loss in result.final_val.items():
        print(f"  {length:>7} positions ({length // config.seq_len}× training length): {loss:.4f}")
    print(f"unigram entropy of the validation split: {result.unigram_entropy:.4f} nats/token "
          "(the loss of a model that ignores context)")
    print(f"training time {result.train_seconds:.1f} s, {result.tokens_per_s:,.0f} tokens/s")
    print(f"checkpoint: {result.checkpoint}")
    print(f"metrics:    {result.metrics_path}  (curve: {result.plot_path})")
    print(json.dumps({"final_val": {str(k): v for k, v in result.final_val.items()},
                      "unigram_entropy": result.unigram_entropy, "checkpoint": str(result.checkpoint)}))
    return result.exit_code


COMMAND = Command(HELP, TrainConfig, main, description=__doc__, options=add_run_arguments, resolve=resolve,
                  file_header=lambda args: {"preset": args.preset}, defaults=False)
