"""``siattn generate``: continue a prompt with a trained checkpoint (KV cache; greedy or sampled)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from siattn.evaluation.config import GenerateConfig
from siattn.recipes.arguments import Command

HELP = "Generate text from a trained checkpoint (greedy or temperature/top-k sampling, KV cache)."


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


def main(args: GenerateConfig, _: argparse.Namespace | None = None) -> int:
    """Print ``args.num_samples`` continuations of the prompt."""
    import torch

    from siattn.evaluation.checkpoints import resolve_device
    from siattn.training.checkpointing import load_checkpoint

    prompt = args.prompt if args.prompt is not None else Path(args.prompt_file).read_text()
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


COMMAND = Command(HELP, GenerateConfig, main)
