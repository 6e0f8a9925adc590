"""``siattn generate``: continue a prompt with a trained checkpoint (KV cache; greedy or sampled)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from siattn.recipes.argtypes import NONNEGATIVE, NONNEGATIVE_INT, POSITIVE_INT, SEED

HELP = "Generate text from a trained checkpoint (greedy or temperature/top-k sampling, KV cache)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="checkpoint folder, or a run folder (its newest checkpoint)")
    parser.add_argument("--prompt", default=None, help="text to continue")
    parser.add_argument("--prompt-file", type=Path, default=None, help="read the prompt from a file")
    parser.add_argument("--max-new-tokens", type=NONNEGATIVE_INT, default=200)
    parser.add_argument("--temperature", type=NONNEGATIVE, default=0.8, help="0 means greedy")
    parser.add_argument("--greedy", action="store_true", help="same as --temperature 0")
    parser.add_argument("--top-k", type=POSITIVE_INT, default=None, help="sample among the k most likely tokens")
    parser.add_argument("--num-samples", type=POSITIVE_INT, default=1)
    parser.add_argument("--seed", type=SEED, default=0)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--tokenizer", default=None,
                        help="override the checkpoint's tokenizer (spec or prepared dataset folder)")
    parser.add_argument("--attn-backend", default=None, help="attention backend (default: auto)")
    parser.add_argument("--stop-at-eod", action="store_true", help="stop a sample at the end-of-document token")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of plain text")


def checkpoint_tokenizer(folder: str | Path, extra: dict[str, Any], override: str | None = None) -> Any:
    """The tokenizer a checkpoint was trained with (saved in it), or ``override``."""
    from siattn.data import load_tokenizer
    from siattn.data.tokenizer import tokenizer_from_manifest

    if override:
        return load_tokenizer(override)
    info = (extra.get("extra") or {}).get("tokenizer") or {}
    if info.get("type"):
        return tokenizer_from_manifest(info, folder)
    if info.get("spec"):
        return load_tokenizer(info["spec"])
    data = (extra.get("extra") or {}).get("data") or (extra.get("train_config") or {}).get("data")
    if data:
        return load_tokenizer(data)
    raise ValueError(f"{folder}: the checkpoint does not say which tokenizer it used; pass --tokenizer")


def main(args: argparse.Namespace) -> int:
    import torch

    from siattn.errors import UsageError
    from siattn.evaluation.checkpoints import resolve_device
    from siattn.training.checkpointing import load_checkpoint

    if (args.prompt is None) == (args.prompt_file is None):
        raise UsageError("give exactly one of --prompt and --prompt-file")
    prompt = args.prompt if args.prompt is not None else args.prompt_file.read_text()
    device = resolve_device(args.device or "auto")
    model, config, extra = load_checkpoint(args.checkpoint, device, attn_backend=args.attn_backend)
    tok = checkpoint_tokenizer(extra["path"], extra, args.tokenizer)
    ids = [tok.eod_id, *tok.encode(prompt)]  # documents start with the end-of-document token in training
    idx = torch.tensor([ids] * args.num_samples, dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    temperature = 0.0 if args.greedy else args.temperature
    out = model.generate(idx, args.max_new_tokens, temperature=temperature, top_k=args.top_k,
                         eod_id=tok.eod_id if args.stop_at_eod else None, generator=generator)
    samples = []
    for row in out.tolist():
        new = row[len(ids):]
        if args.stop_at_eod and tok.eod_id in new:
            new = new[:new.index(tok.eod_id)]
        samples.append(tok.decode(new))
    if args.json:
        print(json.dumps({"checkpoint": extra["path"], "step": extra.get("step"), "method": config.method,
                          "prompt": prompt, "temperature": temperature, "top_k": args.top_k, "samples": samples}))
    else:
        for i, text in enumerate(samples):
            if len(samples) > 1:
                print(f"--- sample {i + 1} ---")
            print(prompt + text)
    return 0
