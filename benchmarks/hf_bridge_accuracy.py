"""The transformers bridge's fast path against the reference: logits and gradients of a converted Llama.

A random-initialised Llama (SmolLM2-135M's attention shape: width 576, 9 query and 3 key heads of 64; 4 layers,
seeded) is converted to si-p-rope three times from the same weights: the float64 model on the ``reference``
backend (the truth), and in ``--dtype`` on ``backend="auto"`` (on CUDA the fused Triton kernel) and on
``backend="reference"`` (the plain formula in the same dtype). For each batch layout the bridge handles — causal
rows, a left-padded batch (key windows per row), one packed row (position ids restarting per document, the
``cu_seqlens`` path) — it runs forward and backward of the mean next-token loss over real tokens and reports the
relative error ‖x − x64‖/‖x64‖ of the logits (real tokens) and of every parameter gradient (concatenated). The fast
path passes where its error is at most ``--factor`` × the plain formula's (+ 1e-6), FlashAttention's rule.

    PYTHONPATH=src python benchmarks/hf_bridge_accuracy.py --out results/hf-bridge-accuracy   # GPU
    PYTHONPATH=src python benchmarks/hf_bridge_accuracy.py --device cpu --length 96           # CPU smoke run
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import sys
from pathlib import Path

import torch


def build(seed: int, length: int, layers: int):
    """The seeded float32 Llama all variants are converted from."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=576, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                         intermediate_size=1536, num_hidden_layers=layers, vocab_size=4096,
                         max_position_embeddings=length, rope_theta=100000.0, bos_token_id=None, eos_token_id=None,
                         pad_token_id=0)
    return LlamaForCausalLM(config).eval()


def variant(base, backend: str, dtype: torch.dtype, device: str):
    import siattn.hf

    return siattn.hf.convert(copy.deepcopy(base), method="si-p-rope", backend=backend).to(device=device, dtype=dtype)


def batches(length: int, seed: int) -> dict[str, dict]:
    """Token ids and keyword arguments of each layout, with the mask of the real tokens."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 4096, (2, length), generator=gen)
    padded = torch.ones_like(ids)
    padded[1, : length // 3] = 0
    cuts = [0, length // 5, length // 5 + 1, length // 2, length]  # one single-token document
    positions = torch.cat([torch.arange(b - a) for a, b in itertools.pairwise(cuts)])[None]
    return {
        "causal": {"ids": ids, "kwargs": {}, "real": torch.ones_like(ids, dtype=torch.bool)},
        "left-padded": {"ids": ids, "kwargs": {"attention_mask": padded}, "real": padded.bool()},
        "packed": {"ids": ids[:1], "kwargs": {"position_ids": positions}, "real": torch.ones_like(ids[:1]).bool()},
    }


def forward_backward(model, case: dict, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits at real tokens (float64) and the concatenated parameter gradients of the mean next-token loss."""
    model.zero_grad(set_to_none=True)
    ids = case["ids"].to(device)
    kwargs = {k: v.to(device) for k, v in case["kwargs"].items()}
    logits = model(ids, **kwargs).logits
    real = case["real"].to(device)
    targets = ids[:, 1:].masked_fill(~(real[:, 1:] & real[:, :-1]), -100)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].float().flatten(0, 1), targets.flatten(),
                                             ignore_index=-100)
    loss.backward()
    grads = torch.cat([p.grad.double().flatten() for p in model.parameters() if p.grad is not None])
    return logits[real].double().detach(), grads


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("bfloat16", "float16"), default="bfloat16")
    parser.add_argument("--length", type=int, default=2048, help="tokens per row")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=2, help="weight and token seeds 0 .. N-1")
    parser.add_argument("--factor", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=None, help="folder for hf_bridge_accuracy.json and .md")
    args = parser.parse_args(argv)
    from siattn.backends import LogitTransform, choose_backend
    from siattn.io import markdown_table, write_json, write_text
    from siattn.provenance import environment

    dtype = getattr(torch, args.dtype)
    probe = torch.zeros(1, 9, 8, 64, device=args.device, dtype=dtype)
    auto = choose_backend(probe, probe[:, :3], probe[:, :3], LogitTransform("scale-invariant"), needs_grad=True)
    print(f"backend='auto' runs {auto!r} here")
    rows = []
    for seed in range(args.seeds):
        base = build(seed, args.length, args.layers)
        models = {"truth": variant(base, "reference", torch.float64, args.device),
                  "fast": variant(base, "auto", dtype, args.device),
                  "plain": variant(base, "reference", dtype, args.device)}
        for layout, case in batches(args.length, seed).items():
            out = {name: forward_backward(m, case, args.device) for name, m in models.items()}
            (lt, gt), (lf, gf), (lp, gp) = out["truth"], out["fast"], out["plain"]
            row = {"seed": seed, "layout": layout, "logits_fast": rel(lf, lt), "logits_plain": rel(lp, lt),
                   "grads_fast": rel(gf, gt), "grads_plain": rel(gp, gt)}
            row["pass"] = all(row[f"{w}_fast"] <= args.factor * row[f"{w}_plain"] + 1e-6 for w in ("logits", "grads"))
            rows.append(row)
            print(json.dumps(row), flush=True)
        del models
    table = markdown_table(["seed", "layout", "logits: fast", "logits: plain", "grads: fast", "grads: plain", "pass"],
                           [[r["seed"], r["layout"], f"{r['logits_fast']:.2e}", f"{r['logits_plain']:.2e}",
                             f"{r['grads_fast']:.2e}", f"{r['grads_plain']:.2e}", "yes" if r["pass"] else "NO"]
                            for r in rows])
    print(table)
    if args.out is not None:
        meta = {"command": " ".join(["benchmarks/hf_bridge_accuracy.py", *(argv or sys.argv[1:])]),
                "device": args.device, "auto_backend": auto, **environment(torch.device(args.device)),
                "settings": vars(args) | {"out": str(args.out)}}
        args.out.mkdir(parents=True, exist_ok=True)
        write_json(args.out / "hf_bridge_accuracy.json", meta | {"rows": rows})
        write_text(args.out / "hf_bridge_accuracy.md", table + "\n")
    return 0 if all(r["pass"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
