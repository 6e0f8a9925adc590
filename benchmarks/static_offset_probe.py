"""When does the fixed-offset forward (``FwdConfig.static``) recompute blocks, and what does that cost? (CUDA)

    PYTHONPATH=src python3 benchmarks/static_offset_probe.py [--out DIR]

The fixed offset is the running maximum of a block's near tiles and its farthest tile; a block is recomputed
with the online softmax when some other far logit exceeds it by so much that p = 2^(v − m) overflows (an inf or
nan in the row sum or the accumulator). This sharpens the logits of random inputs by a factor s (q scaled by s:
logit standard deviation s nats) and adds an adversarial case (every query aligned with one key of the second
tile, about 100 log2 units above the rest at D = 128), and prints, per case, the fraction of blocks recomputed,
the forward time with fixed offsets and with the online softmax on every tile, and the relative difference of
their outputs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from pathlib import Path

import torch
import triton

from siattn.backends import triton as tri
from siattn.backends.transforms import NO_TRANSFORM, LogitTransform


def cases(b: int, t: int, d: int = 128, h: int = 6):
    torch.manual_seed(t)
    q, k, v = (torch.randn(b, h, t, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    for s in (1, 4, 16, 64):
        yield f"random, logits x{s}", (q * s).to(torch.bfloat16), k, v
    e = torch.zeros(d, device="cuda", dtype=torch.bfloat16)
    e[0] = 1
    k_adv = k.clone()
    k_adv[:, :, tri.DEFAULT_FWD.block_n + 1] = 100 * e  # in the second tile: the first one is sampled online
    yield "one key ~100 log2 units up", (0.3 * q + 8 * e).to(torch.bfloat16), k_adv, v


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "static-probe"))
    args = parser.parse_args()
    static = tri.DEFAULT_FWD
    online = dataclasses.replace(tri.DEFAULT_FWD, static=False)
    rows = []
    for t, b in ((4096, 8), (16384, 2), (65536, 1)):
        for transform in (LogitTransform("scale-invariant"), NO_TRANSFORM):
            for name, q, k, v in list(cases(b, t))[: 1 if t > 16384 else None]:
                scale = 1 / math.sqrt(q.shape[-1])
                stats: dict = {}
                out_s, _ = tri._forward(q, k, v, transform, 0, True, scale, static, stats=stats)
                out_o, _ = tri._forward(q, k, v, transform, 0, True, scale, online)
                row = dict(T=t, B=b, transform=transform.kind, case=name, recomputed=stats["recomputed"],
                           rel_diff=((out_s.float() - out_o.float()).norm() / out_o.float().norm()).item(),
                           finite=bool(torch.isfinite(out_s).all()),
                           static_ms=triton.testing.do_bench(
                               lambda q=q, k=k, v=v, tr=transform, sc=scale: tri._forward(q, k, v, tr, 0, True, sc,
                                                                                         static), rep=100),
                           online_ms=triton.testing.do_bench(
                               lambda q=q, k=k, v=v, tr=transform, sc=scale: tri._forward(q, k, v, tr, 0, True, sc,
                                                                                         online), rep=100))
                rows.append(row)
                print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "static-offset-probe.json").write_text(json.dumps(dict(torch=torch.__version__,
                                                                  triton=triton.__version__,
                                                                  gpu=torch.cuda.get_device_name(), rows=rows),
                                                             indent=1))


if __name__ == "__main__":
    main()
