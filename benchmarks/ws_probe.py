"""Probe: does Triton's automatic warp specialisation for Hopper help a causal attention forward? (H200 only)

    PYTHONPATH=src python3 benchmarks/ws_probe.py [--out DIR]

Triton's Hopper pass (``tl.range(..., warp_specialize=True)``; a producer warp group issuing TMA loads and two
consumer warp groups, each with half of the query rows) only accepts a kernel whose one loop holds every dot
product (checked offline with triton 3.9: a second loop, a dot after the loop, or an ``if`` in the loop makes it
fail or silently not specialise). So these probe kernels walk every causal key tile in one loop and apply the
causal mask on every tile, and the scale-invariant variant uses the exact transform (lg2 + sqrt) on every tile.
They are compared, in one run, with the same loops without specialisation and with the project's kernels
(plain and scale-invariant, which split the tiles into far / near / diagonal loops). Correctness: the plain
probe against SDPA, the scale-invariant probe against the project's Triton kernel (bf16 outputs).
"""

from __future__ import annotations

import argparse
import json
import math
import os
from functools import partial
from pathlib import Path

import torch
import triton
import triton.language as tl

from siattn.backends import triton as tri
from siattn.backends.transforms import NO_TRANSFORM, LogitTransform


@triton.jit
def probe_fwd(Q, K, V, O, T, qk_scale, inv_tau, A2, K2, NEG_GAMMA,
              D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, SI: tl.constexpr, WS: tl.constexpr):
    pid = tl.num_programs(0) - 1 - tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    m0 = pid * BM
    qd = tl.make_tensor_descriptor(Q + bh * T * D, [T, D], [D, 1], [BM, D])
    kd = tl.make_tensor_descriptor(K + bh * T * D, [T, D], [D, 1], [BN, D])
    vd = tl.make_tensor_descriptor(V + bh * T * D, [T, D], [D, 1], [BN, D])
    od = tl.make_tensor_descriptor(O + bh * T * D, [T, D], [D, 1], [BM, D])
    q = qd.load([m0, 0])
    rows = (m0 + tl.arange(0, BM)).to(tl.float32)
    cols = tl.arange(0, BN).to(tl.float32)
    m_i = tl.full([BM], float("-inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, D], tl.float32)
    for i in tl.range(0, (m0 + BM) // BN, warp_specialize=WS):
        k = kd.load([i * BN, 0])
        qk = tl.dot(q, k.T)
        t = rows[:, None] - (cols[None, :] + i * BN)
        if SI:
            b = tl.sqrt(A2 * tl.log2(tl.maximum(t, 0.0) * inv_tau + 1.0) + K2)
            s = b * (qk + NEG_GAMMA * b)
        else:
            s = qk * qk_scale
        s = tl.where(t >= 0, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        v = vd.load([i * BN, 0])
        acc = tl.dot(p.to(tl.bfloat16), v, acc)
        m_i = m_new
    od.store([m0, 0], (acc / l_i[:, None]).to(tl.bfloat16))


def run_probe(q, k, v, consts, bm, bn, si, ws, warps, stages):
    """One launch of the probe kernel; returns (output, Triton's compiled kernel)."""
    b, h, t, d = q.shape
    out = torch.empty_like(q)
    compiled = probe_fwd[(t // bm, b * h)](q, k, v, out, t, consts["qk_scale"], consts["inv_tau"], consts["A2"],
                                           consts["K2"], consts["NEG_GAMMA"], D=d, BM=bm, BN=bn, SI=si, WS=ws,
                                           num_warps=warps, num_stages=stages)
    return out, compiled


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


PROBES = [(128, 64, True, 4, 2), (128, 128, True, 4, 2), (128, 64, True, 4, 3), (128, 64, False, 8, 3),
          (128, 128, False, 8, 2)]


def measure(t: int, b: int, h: int = 6, d: int = 128) -> list[dict]:
    q, k, v = (torch.randn(b, h, t, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    scale = 1 / math.sqrt(d)
    si = LogitTransform("scale-invariant", tau=10.0)
    project = {"plain": partial(tri.flash_attention, q, k, v, transform=NO_TRANSFORM, q_offset=0, causal=True,
                                scale=scale),
               "SI": partial(tri.flash_attention, q, k, v, transform=si, q_offset=0, causal=True, scale=scale)}
    sdpa = partial(torch.nn.functional.scaled_dot_product_attention, q, k, v, is_causal=True)
    refs = {"plain": sdpa(), "SI": project["SI"]()}
    rows = []
    for name, fn in [("project plain", project["plain"]), ("project SI", project["SI"]), ("sdpa default", sdpa)]:
        rows.append(dict(T=t, B=b, kernel=name, ms=triton.testing.do_bench(fn, rep=100)))
        print(rows[-1], flush=True)
    for mode in ("plain", "SI"):
        consts = tri._si_constants(si if mode == "SI" else NO_TRANSFORM, scale)
        for bm, bn, ws, warps, stages in PROBES:
            row = dict(T=t, B=b, kernel=f"probe {mode}", BM=bm, BN=bn, ws=ws, warps=warps, stages=stages)
            launch = partial(run_probe, q, k, v, consts, bm, bn, mode == "SI", ws, warps, stages)
            try:
                out, compiled = launch()
                row["compiled_warps"] = compiled.metadata.num_warps
                row["rel_err_vs_" + ("sdpa" if mode == "plain" else "project")] = rel(out, refs[mode])
                row["ms"] = triton.testing.do_bench(launch, rep=100)
            except Exception as e:  # a probe: record the failure and go on
                row["error"] = f"{type(e).__name__}: {str(e)[-300:]}"
            rows.append(row)
            print(row, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "ws-probe"))
    args = parser.parse_args()
    # the probe kernels build TMA descriptors on the device, which needs Triton's scratch allocator (per thread)
    triton.set_allocator(lambda size, alignment, stream: torch.empty(size, device="cuda", dtype=torch.int8))
    torch.manual_seed(0)
    rows = measure(4096, 8) + measure(16384, 2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(torch=torch.__version__, triton=triton.__version__, gpu=torch.cuda.get_device_name())
    (out / "ws-probe.json").write_text(json.dumps(dict(meta, rows=rows), indent=1))


if __name__ == "__main__":
    main()
