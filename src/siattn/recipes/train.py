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

from siattn.recipes.argtypes import POSITIVE_INT

HELP = "Train the GPT with any attention method (presets from 2 CPU cores to the paper's 162M/304M models)."

# the plain overrides: CLI flags named as the config fields they set (None = not given)
OVERRIDES = (
    "method", "steps", "seq_len", "batch_size", "micro_batch_size", "lr_muon", "lr_embed", "lr_head", "lr_scalar",
    "schedule", "cooldown_frac", "warmup_steps", "data", "data_source", "tokenizer", "out", "seed", "attn_backend",
    "dtype", "eval_every", "eval_tokens", "eval_multipliers", "log_every", "ckpt_every", "keep_checkpoints",
    "n_layer", "n_embd", "n_head", "n_kv_head", "head_dim", "tau", "p_rope_base", "grad_clip", "compile",
    "tensorboard",
)


def _multipliers(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,4,16, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"multipliers must be >= 1, got {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from siattn.backends import backend_names
    from siattn.methods import METHODS
    from siattn.precision import DTYPES
    from siattn.training.config import PRESETS, SCHEDULES

    parser.add_argument("--preset", default="cpu-tiny", choices=sorted(PRESETS), help="starting configuration")
    parser.add_argument("--method", choices=sorted(METHODS), default=None,
                        help="attention method (default: the preset's, si-p-rope)")
    parser.add_argument("--list-presets", action="store_true", help="print the presets as a table and exit")
    g = parser.add_argument_group("run")
    g.add_argument("--out", default=None, help="run folder (default: runs/PRESET-METHOD)")
    g.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CHECKPOINT",
                   help="continue from a checkpoint folder, or (no value) from the run folder's newest one")
    g.add_argument("--overwrite", action="store_true", help="start again in a run folder that holds checkpoints")
    g.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    g.add_argument("--dtype", choices=DTYPES, default=None,
                   help="autocast dtype (auto: bfloat16 on CUDA, float32 on CPU)")
    g.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    g.add_argument("--attn-backend", choices=backend_names(), default=None, help="attention backend")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--tensorboard", action="store_true", default=None,
                   help="also write the metrics as TensorBoard events in RUN/tensorboard "
                        "(needs pip install 'siattn[tensorboard]')")
    g.add_argument("--threads", type=POSITIVE_INT, default=None, help="torch CPU threads (default: torch's choice)")
    g = parser.add_argument_group("data")
    g.add_argument("--data", default=None, help="prepared dataset folder (or folder of .bin shards)")
    g.add_argument("--data-source", default=None,
                   help="what to prepare --data from when it does not exist (see `siattn data prepare -h`)")
    g.add_argument("--tokenizer", default=None, help="tokenizer for that preparation: bytes | bpe:N | hf:PATH")
    g = parser.add_argument_group("training")
    g.add_argument("--steps", type=int, default=None, help="optimiser steps")
    g.add_argument("--seq-len", type=int, default=None, help="training length (p-RoPE base follows it)")
    g.add_argument("--batch-size", type=int, default=None, help="sequences per optimiser step (all ranks)")
    g.add_argument("--micro-batch-size", type=int, default=None,
                   help="sequences per forward on one rank (gradient accumulation makes up the rest)")
    g.add_argument("--lr-muon", type=float, default=None, help="Muon lr for hidden matrices (paper 0.02)")
    g.add_argument("--lr-embed", type=float, default=None, help="Adam lr for the embedding (paper 0.3)")
    g.add_argument("--lr-head", type=float, default=None, help="Adam lr for the head (paper 0.002)")
    g.add_argument("--lr-scalar", type=float, default=None, help="Adam lr for LogN scales (paper 0.002)")
    g.add_argument("--schedule", choices=SCHEDULES, default=None)
    g.add_argument("--cooldown-frac", type=float, default=None, help="share of steps in the linear cool-down")
    g.add_argument("--warmup-steps", type=int, default=None)
    g.add_argument("--grad-clip", type=float, default=None, help="clip the gradient norm (default: no clipping)")
    g = parser.add_argument_group("model")
    g.add_argument("--n-layer", type=int, default=None)
    g.add_argument("--n-embd", type=int, default=None)
    g.add_argument("--n-head", type=int, default=None)
    g.add_argument("--n-kv-head", type=int, default=None, help="key/value heads (grouped-query attention)")
    g.add_argument("--head-dim", type=int, default=None)
    g.add_argument("--tau", type=float, default=None, help="scale-invariant τ (default 10)")
    g.add_argument("--p-rope-base", type=float, default=None, help="default: 1024 · seq_len / 4096")
    g = parser.add_argument_group("evaluation and logging")
    g.add_argument("--eval-every", type=int, default=None)
    g.add_argument("--eval-tokens", type=int, default=None, help="scored validation tokens at every length")
    g.add_argument("--eval-multipliers", type=_multipliers, default=None,
                   help="validation lengths as multiples of seq-len, e.g. 1,4,16")
    g.add_argument("--log-every", type=int, default=None)
    g.add_argument("--ckpt-every", type=int, default=None)
    g.add_argument("--keep-checkpoints", type=int, default=None, help="newest checkpoints kept")


def _print_presets() -> None:
    from siattn.training.config import describe_presets

    print("| preset | params | layers | width | heads × dim | vocab | seq | batch | steps | tokens | p-RoPE base |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in describe_presets():
        print(f"| {r['preset']} | {r['params'] / 1e6:.1f}M | {r['n_layer']} | {r['n_embd']} | {r['n_head']} × "
              f"{r['head_dim']} | {r['vocab']} | {r['seq_len']} | {r['batch_size']} | {r['steps']} | "
              f"{r['tokens'] / 1e6:.1f}M | {r['p_rope_base']:g} |")


def main(args: argparse.Namespace) -> int:
    import torch

    from siattn.errors import UsageError, check_output_folder
    from siattn.training.config import resolve_config
    from siattn.training.distributed import cleanup_distributed, init_distributed
    from siattn.training.trainer import RESUMABLE_OVERRIDES, find_checkpoint, resume_config, train

    if args.list_presets:
        _print_presets()
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {name: getattr(args, name) for name in OVERRIDES}
    try:
        config = resolve_config(args.preset, **overrides)
    except UsageError as err:  # name the flag that set the field: "steps must be ..." -> "--steps must be ..."
        name = str(err).split(" ", 1)[0]
        if name not in OVERRIDES:
            raise
        raise UsageError("--" + name.replace("_", "-") + str(err)[len(name):]) from None
    check_output_folder("--out", config.run_dir)
    resume = None
    if args.resume is not None:
        resume = Path(config.run_dir) if args.resume == "auto" else Path(args.resume)
        if args.resume == "auto" and find_checkpoint(resume) is None:
            print(f"--resume: {resume} holds no checkpoint yet; starting a new run there", file=sys.stderr)
            resume = None
        else:
            config, ignored = resume_config(resume, overrides)
            if ignored:
                print(f"--resume: keeping the checkpoint's {', '.join(ignored)} (only "
                      f"{', '.join(sorted(RESUMABLE_OVERRIDES))} may change on resume)", file=sys.stderr)
    info = init_distributed(args.device)
    try:
        result = train(config, info, resume=resume, overwrite=args.overwrite, progress=not args.no_progress)
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
