"""Generation of a left-padded batch through the transformers bridge against its longest row alone.

A random-initialised Llama (no hub: SmolLM2-135M's shape by default — 30 layers, width 576, 9 query and 3 key
heads of 64) converted to si-p-rope; ``--batch`` prompts with lengths spread evenly over [--min-len, --max-len]
(the last one the longest), left-padded into one batch, generate ``--new-tokens`` greedy tokens. Times (median of
``--repeats`` after one warm-up, CUDA synchronised) of: the padded batch; the longest row alone; every row alone
one after another. The issue's target: batch / longest alone <= 1.5 on the GPU.

The three are timed in turn within each repeat (after one warm-up of each), so that a slow spell of the host
falls on all of them alike; the ratio reported is the median over repeats of each repeat's batch / longest alone,
with the share of repeats within the target beside it.

    PYTHONPATH=src python benchmarks/hf_padded_batch.py                      # GPU, writes runs/bench-hf-padded/...
    PYTHONPATH=src python benchmarks/hf_padded_batch.py --tiny --device cpu  # a CPU sanity run in seconds

Writes JSON (settings, versions, device, timings, ratio) to ``--out`` (default
``runs/bench-hf-padded/<date>-<device>.json``) and prints a one-line summary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default=None,
                   help="model dtype (default: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--min-len", type=int, default=100)
    p.add_argument("--max-len", type=int, default=2000)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=10, help="timed rounds, each timing every case once")
    p.add_argument("--method", default="si-p-rope")
    p.add_argument("--tiny", action="store_true", help="a 2-layer width-64 model and prompts of 10–60 tokens")
    p.add_argument("--out", default=None, help="JSON file to write")
    args = p.parse_args(argv)
    if args.batch < 1 or args.min_len < 1 or args.max_len < args.min_len or args.new_tokens < 1 or args.repeats < 1:
        p.error("--batch, --min-len, --new-tokens and --repeats must be >= 1 and --max-len >= --min-len")
    if args.tiny:
        args.min_len, args.max_len = min(args.min_len, 10), min(args.max_len, 60)
    return args


def build_model(args: argparse.Namespace, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    import siattn.hf

    shape = (dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=128,
                  num_hidden_layers=2, vocab_size=1000) if args.tiny else
             dict(hidden_size=576, num_attention_heads=9, num_key_value_heads=3, head_dim=64, intermediate_size=1536,
                  num_hidden_layers=30, vocab_size=49152))
    torch.manual_seed(0)
    config = LlamaConfig(**shape, max_position_embeddings=max(2048, args.max_len + args.new_tokens),
                         bos_token_id=None, eos_token_id=None, pad_token_id=0)
    model = LlamaForCausalLM(config).to(device=args.device, dtype=dtype).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return siattn.hf.convert(model, method=args.method), config.vocab_size


def prompts(args: argparse.Namespace, vocab: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    n = args.batch
    lengths = [args.min_len + (args.max_len - args.min_len) * i // max(n - 1, 1) for i in range(n)]
    return [torch.randint(3, vocab, (length,), generator=gen) for length in lengths]


def left_padded(rows: list[torch.Tensor], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, r in enumerate(rows):
        ids[b, width - len(r):] = r
        mask[b, width - len(r):] = 1
    return ids.to(device), mask.to(device)


TARGET = 1.5  # the bound on batch / longest row alone


def timed_in_turn(cases: dict[str, Callable[[], object]], repeats: int, device: str) -> dict[str, list[float]]:
    """Seconds of each case in each of ``repeats`` rounds; a round times every case once, in turn, after one
    warm-up call of each (kernel compilation, autotuning, allocator)."""
    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for fn in cases.values():
        fn()
    out: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            out[name].append(time.perf_counter() - start)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if args.device.startswith("cuda")
                                                           else torch.float32)
    model, vocab = build_model(args, dtype)
    rows = prompts(args, vocab)
    ids, mask = left_padded(rows, args.device)
    kw = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens, "do_sample": False}

    @torch.no_grad()
    def batch():
        return model.generate(ids, attention_mask=mask, **kw)

    @torch.no_grad()
    def longest():
        return model.generate(rows[-1][None].to(args.device), **kw)

    @torch.no_grad()
    def one_by_one():
        for r in rows:
            model.generate(r[None].to(args.device), **kw)

    with torch.no_grad():  # the padded batch gives each row's own greedy tokens (checked on the longest row)
        same = torch.equal(batch()[-1, -args.new_tokens:], longest()[0, -args.new_tokens:])
    times = timed_in_turn({"batch": batch, "longest_alone": longest, "rows_one_by_one": one_by_one}, args.repeats,
                          args.device)
    median = {k: statistics.median(v) for k, v in times.items()}
    ratios = [b / a for b, a in zip(times["batch"], times["longest_alone"], strict=True)]
    import transformers

    import siattn

    device_name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu"
    result = {
        "benchmark": "hf-padded-batch", "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
        "date": time.strftime("%Y-%m-%d %H:%M"), "device": device_name, "dtype": str(dtype).removeprefix("torch."),
        "versions": {"siattn": siattn.__version__, "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "settings": {"batch": args.batch, "prompt_lengths": [len(r) for r in rows], "new_tokens": args.new_tokens,
                     "repeats": args.repeats, "method": args.method, "tiny": args.tiny},
        "seconds": times, "median_seconds": median,
        "batch_over_longest": statistics.median(ratios),
        "batch_over_longest_each_round": [round(r, 4) for r in ratios],
        "rounds_within_target": sum(r <= TARGET for r in ratios),
        "batch_over_longest_of_medians": median["batch"] / median["longest_alone"],
        "batch_over_one_by_one": median["batch"] / median["rows_one_by_one"],
        "longest_row_tokens_equal": same,
    }
    out = Path(args.out) if args.out else (Path("runs/bench-hf-padded")
                                           / f"{time.strftime('%Y%m%d-%H%M%S')}-{device_name.replace(' ', '_')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"batch {median['batch']:.3f} s, longest alone {median['longest_alone']:.3f} s, rows one by one "
          f"{median['rows_one_by_one']:.3f} s: batch / longest = {result['batch_over_longest']:.2f} (median of "
          f"{args.repeats} rounds, range {min(ratios):.2f}-{max(ratios):.2f}, {result['rounds_within_target']} "
          f"within {TARGET}; same tokens on the longest row: {same}); wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
