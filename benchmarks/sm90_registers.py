"""Registers and spills of the Triton kernels for an H100/H200 (sm_90a), compiled here without a GPU.

    python benchmarks/sm90_registers.py [--kernels fwd,dkdv,dq] [--modes none,si] [--json OUT.json]

For every tuning candidate of ``siattn.backends.triton`` (D = 128, causal, bf16) this compiles the kernel for
sm_90a with Triton's own ptxas (``triton.compile`` with a GPUTarget; no device is touched) and prints what
ptxas reports: registers per thread, bytes of spill stores / loads and stack frame, and shared memory. It
compiles with the specialisation Triton applies at run time to contiguous tensors (16-byte-aligned pointers,
strides that are multiples of 16); without it every load compiles to scalar accesses. A
kernel at 255 registers with spill traffic in its inner loop pays for every spilled value on every tile; this
is the check to run before spending device time on a tiling. The numbers are those of the local Triton
(which may differ from the GPU machine's: put that version first on PYTHONPATH, e.g. ``pip install --no-deps
--target DIR triton==3.6.0`` and ``PYTHONPATH=DIR:src``), not timings. The spill bytes are kernel-wide: in the
dK/dV kernels much of that sits in the masked diagonal loop and the prologue (the SASS of the main loop, from
``cuobjdump -sass``, shows where).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

POINTERS = {"Q", "K", "V", "O", "DO", "DK", "DV", "DQ"}
FLOAT_POINTERS = {"LSE", "DELTA", "COEF", "SLOPES", "DQACC"}
FLOATS = {"qk_scale", "inv_tau", "A2", "K2", "NEG_GAMMA", "DS_SCALE"}
POINTERS_I32 = {"FLAGS", "DOC_START", "DOC_END"}
MODES = {"none": 0, "si": 1, "alibi": 2}


def is_stride(name: str) -> bool:
    """Stride arguments of the kernels: s + tensor letters + b/h/m/n (sqb, skn, sdom, sdqh, ...)."""
    return re.fullmatch(r"s(q|k|v|o|do|dk|dv|dq)[bhmn]", name) is not None


def ptxas_report(kernel, constexprs: dict, num_warps: int, num_stages: int) -> dict:
    """Compile ``kernel`` (a @triton.jit function) for sm_90a; return ptxas's resource report."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = inspect.signature(kernel.fn).parameters
    params = list(signature)
    # constexpr parameters left out take their defaults (else they would be compiled as run-time integers)
    constexprs = {**{p: d.default for p, d in signature.items()
                     if "constexpr" in str(d.annotation) and d.default is not inspect.Parameter.empty},
                  **constexprs}

    # arguments that are host-side TMA descriptors (see siattn.backends.triton.launch._head_descriptor)
    rows = constexprs.get("BLOCK_N") if kernel.fn.__name__ == "fwd_kernel" else constexprs.get("BLOCK_M")
    tiles = {"K", "V"} if kernel.fn.__name__ == "fwd_kernel" else {"Q", "DO"}

    def arg_type(name: str) -> str:
        if name == "DQACC" and constexprs.get("FUSED_DQ") == 2:  # the dQ accumulator, reduced into through TMA
            return f"tensordesc<fp32[{constexprs['HEAD_DIM']}, {constexprs['BLOCK_M']}]>"
        if name in tiles and constexprs.get("TMA_LOADS"):
            return f"tensordesc<bf16[1, 1, {rows}, {constexprs['HEAD_DIM']}]>"
        if name in constexprs:
            return "constexpr"
        if name in POINTERS:
            return "*bf16"
        if name in POINTERS_I32:
            return "*i32"
        if name in FLOAT_POINTERS:
            return "*fp32"
        return "fp32" if name in FLOATS else "i32"

    # as at run time on contiguous tensors: pointers 16-byte aligned and strides multiples of 16 elements (Triton
    # specialises such arguments with tt.divisibility = 16; without it every load compiles to scalar accesses)
    aligned = [p for p in params if p not in constexprs and (p in POINTERS or p in FLOAT_POINTERS or is_stride(p))
               and not arg_type(p).startswith("tensordesc")]
    source = ASTSource(fn=kernel, signature={p: arg_type(p) for p in params},
                       constexprs={(params.index(k),): v for k, v in constexprs.items()},
                       attrs={(params.index(p),): [["tt.divisibility", 16]] for p in aligned})
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 64),
                              options={"num_warps": num_warps, "num_stages": num_stages})
    with tempfile.TemporaryDirectory() as tmp:
        ptx = Path(tmp) / "kernel.ptx"
        ptx.write_text(compiled.asm["ptx"])
        done = subprocess.run([knobs.nvidia.ptxas_blackwell.path, "-v", "--gpu-name", "sm_90a", str(ptx), "-o",
                               str(ptx.with_suffix(".o"))], capture_output=True, text=True)
    text = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(f"ptxas failed: {text[-500:]}")

    def number(pattern: str, group: int = 1) -> int:
        m = re.search(pattern, text)
        return int(m.group(group)) if m else 0

    return {"registers": number(r"Used (\d+) registers"), "stack_frame": number(r"(\d+) bytes stack frame"),
            "spill_stores": number(r"(\d+) bytes spill stores"), "spill_loads": number(r"(\d+) bytes spill loads"),
            "shared_bytes": compiled.metadata.shared}


def jobs(kernels: list[str], modes: list[str]) -> list[tuple[str, str, dict, object, dict, int, int]]:
    from siattn.backends import triton as tb
    from siattn.backends.triton import kernels as tk

    out = []
    for mode in modes:
        common = dict(HEAD_DIM=128, MODE=MODES[mode], CAUSAL=True, USE_ASM=True)
        if "fwd" in kernels:
            for c in tb.FWD_CANDIDATES:
                const = dict(common, BLOCK_M=c.block_m, BLOCK_N=c.block_n, LAZY=c.lazy, BOUND=c.bound and mode == "si",
                             STATIC=c.static, TMA_LOADS=c.tma_loads)
                tiling = (f"{c.block_m}x{c.block_n} w{c.num_warps} s{c.num_stages}" + " lazy" * c.lazy
                          + " bound" * (c.bound and mode == "si") + " static" * c.static + " tma" * c.tma_loads)
                out.append(("fwd", mode, tiling, tk.fwd_kernel, const, c.num_warps, c.num_stages))
        if "dkdv" in kernels:
            for c in tb.DKDV_CANDIDATES:
                for fused in (0, 2) if mode == "si" else (0,):  # the fused dQ (TMA) is used for "si" only
                    order = tb.FUSED_DQ_ORDERS[c.fused_dq_order] if fused else 0
                    const = dict(common, BLOCK_M=c.dkdv_m, BLOCK_N=c.dkdv_n, POLY=c.dkdv_poly,
                                 EARLY_DP=c.dkdv_early_dp, FUSED_DQ=fused, TMA_LOADS=c.dkdv_tma_loads, ORDER_DQ=order)
                    tiling = (f"{c.dkdv_m}x{c.dkdv_n} w{c.dkdv_warps} s{c.dkdv_stages} poly{c.dkdv_poly}"
                              + " early-dP" * c.dkdv_early_dp + " fused-dQ" * bool(fused)
                              + f" dQ {c.fused_dq_order}" * (bool(fused) and order > 0))
                    out.append(("dkdv", mode, tiling, tk.bwd_dkdv_kernel, const, c.dkdv_warps, c.dkdv_stages))
        if "dq" in kernels:
            for c in tb.DQ_CANDIDATES:
                const = dict(common, BLOCK_M=c.dq_m, BLOCK_N=c.dq_n)
                tiling = f"{c.dq_m}x{c.dq_n} w{c.dq_warps} s{c.dq_stages}"
                out.append(("dq", mode, tiling, tk.bwd_dq_kernel, const, c.dq_warps, c.dq_stages))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--kernels", default="fwd,dkdv,dq", help="comma-separated: fwd, dkdv, dq")
    parser.add_argument("--modes", default="none,si", help="comma-separated logit modes: none, si, alibi")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    parser.add_argument("--md", type=Path, default=None, help="also write the table as Markdown here")
    args = parser.parse_args(argv)
    kernels = args.kernels.split(",")
    modes = args.modes.split(",")
    checks = (("--kernels", {"fwd", "dkdv", "dq"}, kernels), ("--modes", set(MODES), modes))
    for name, accepted, given in checks:
        if not set(given) <= accepted:
            parser.error(f"{name} accepts {sorted(accepted)}, got {given}")
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the same as the kernels get at run time
    import triton

    lines = [f"triton {triton.__version__}, sm_90a, D = 128, causal, bf16", "",
             "| kernel | mode | tiling | registers | spill stores (B) | spill loads (B) | stack (B) | shared (KB) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    print("\n".join(lines), flush=True)
    rows = []
    for name, mode, tiling, kernel, const, warps, stages in jobs(kernels, modes):
        r = ptxas_report(kernel, const, warps, stages)
        rows.append({"kernel": name, "mode": mode, "tiling": tiling, **r})
        lines.append(f"| {name} | {mode} | {tiling} | {r['registers']} | {r['spill_stores']} | {r['spill_loads']} | "
                     f"{r['stack_frame']} | {r['shared_bytes'] / 1024:.0f} |")
        print(lines[-1], flush=True)
    if args.json:
        args.json.write_text(json.dumps({"triton": triton.__version__, "target": "sm_90a", "rows": rows}, indent=1))
    if args.md:
        command = "python benchmarks/sm90_registers.py " + " ".join(argv if argv is not None else sys.argv[1:])
        args.md.write_text(f"# Registers and spills on sm_90a (compiled offline)\n\n{__doc__.split(chr(10) * 2)[2]}\n\n"
                           f"Command: `{command.strip()}`\n\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
