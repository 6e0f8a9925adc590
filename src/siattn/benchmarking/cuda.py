"""CUDA attention timings: prefill (forward, forward + backward) and decoding, against SDPA and FlexAttention.

Causal bf16 attention timed with ``triton.testing.do_bench`` (median). FLOPs follow the FlashAttention
convention: a causal forward is 4·B·H·T²·D/2 (two matrix products over the lower triangle), forward+backward is
3.5× that (the backward's five products count 2.5×; the recomputation of the scores is not counted). Decoding
(one query against a long cache) reports GB/s of K and V read (2·B·Hkv·T·D·2 bytes; the query and output are
negligible), timed on a CUDA graph over enough cache copies to defeat the L2 cache, against the device's copy
bandwidth (:func:`copy_bandwidth`, bytes read + written).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any


def causal_flops(batch: int, heads: int, length: int, dim: int) -> float:
    """Forward FLOPs of causal attention (two products over the lower triangle)."""
    return 4.0 * batch * heads * length * length * dim / 2.0


FWD_BWD_FACTOR = 3.5


def copy_bandwidth(nbytes: int = 2 << 30) -> dict:
    """Device-to-device copy of ``nbytes``: GB/s counting bytes read + written."""
    import torch
    from triton.testing import do_bench

    src = torch.empty(nbytes // 4, device="cuda", dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=25, rep=200, return_mode="median")
    return {"bytes": nbytes, "ms": ms, "gbps": 2 * nbytes / ms / 1e6}


def attention_fn(name: str, q: Any, k: Any, v: Any, tau: float, kernel: Any = None) -> Callable[[], Any]:
    """A callable computing attention with backend ``name`` on (q, k, v) (causal, q_offset 0); names: sdpa-flash,
    sdpa-default, flex-causal, flex-si, triton-si, triton-none, triton-alibi. ``kernel``: the triton backends'
    ``KernelOptions`` (None: the defaults)."""
    import torch.nn.functional as F

    from siattn.backends.transforms import LogitTransform

    scale = q.shape[-1] ** -0.5
    si = LogitTransform("scale-invariant", tau=tau)
    if name.startswith("sdpa-"):  # sdpa-flash: FlashAttention backend forced; sdpa-default: torch's choice
        from torch.nn.attention import SDPBackend, sdpa_kernel

        gqa = q.shape[1] != k.shape[1]

        def fn():
            if name == "sdpa-default":
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)

        return fn
    if name.startswith("flex-"):
        from siattn.backends.flex import flex_attention

        tr = si if name == "flex-si" else LogitTransform("none")
        return lambda: flex_attention(q, k, v, transform=tr, q_offset=0, causal=True, scale=scale)
    if name.startswith("triton-"):
        from siattn.backends.triton import flash_attention

        kind = {"triton-si": "scale-invariant", "triton-none": "none", "triton-alibi": "alibi"}[name]
        tr = si if kind == "scale-invariant" else LogitTransform(kind)
        return lambda: flash_attention(q, k, v, transform=tr, q_offset=0, causal=True, scale=scale, kernel=kernel)
    raise ValueError(f"unknown backend {name!r}")


def time_prefill(name: str, t: int, b: int, heads: int, kv_heads: int, dim: int, tau: float, backward: bool,
                 rep_ms: int, kernel: Any = None) -> dict:
    """Forward (and with ``backward`` forward+backward) time in ms and TFLOP/s of backend ``name`` on causal bf16
    inputs (B = ``b``, T = ``t``; ``kernel``: the triton backends' ``KernelOptions``); an ``error`` entry instead
    when the backend fails."""
    import torch
    from triton.testing import do_bench

    gen = torch.Generator(device="cuda").manual_seed(t + b)
    make = lambda h: torch.randn(b, h, t, dim, device="cuda", dtype=torch.bfloat16, generator=gen)  # noqa: E731
    q, k, v = make(heads), make(kv_heads), make(kv_heads)
    row = {"backend": name, "T": t, "B": b, "H": heads, "Hkv": kv_heads, "D": dim}
    flops = causal_flops(b, heads, t, dim)
    try:
        fwd = attention_fn(name, q, k, v, tau, kernel)
        with torch.no_grad():
            fwd()
            torch.cuda.synchronize()
            ms = do_bench(fwd, warmup=25, rep=rep_ms, return_mode="median")
        row.update(fwd_ms=ms, fwd_tflops=flops / ms / 1e9)
        if backward:
            for x in (q, k, v):
                x.requires_grad_(True)
            grad = torch.randn(b, heads, t, dim, device="cuda", dtype=torch.bfloat16, generator=gen)
            fn = attention_fn(name, q, k, v, tau, kernel)

            def step():
                return torch.autograd.grad(fn(), (q, k, v), grad)

            step()
            torch.cuda.synchronize()
            ms = do_bench(step, warmup=25, rep=rep_ms, return_mode="median")
            row.update(fwdbwd_ms=ms, fwdbwd_tflops=FWD_BWD_FACTOR * flops / ms / 1e9)
    except Exception as err:  # one failing backend must not lose the others' numbers
        row["error"] = f"{type(err).__name__}: {str(err)[:300]}"
    return row


def time_decode(length: int, batch: int, heads: int, kv_heads: int, dim: int, tau: float,
                l2_bytes: int = 60 << 20) -> dict:
    """Decode one query (q_offset = length − 1) against a cache of ``length`` keys."""
    import torch
    import torch.nn.functional as F
    from triton.testing import do_bench, do_bench_cudagraph

    from siattn.backends.transforms import LogitTransform
    from siattn.backends.triton import decode_attention

    kv_bytes = 2 * batch * kv_heads * length * dim * 2
    copies = max(1, math.ceil(4 * l2_bytes / kv_bytes))
    gen = torch.Generator(device="cuda").manual_seed(length)
    caches = [(torch.randn(batch, kv_heads, length, dim, device="cuda", dtype=torch.bfloat16, generator=gen),
               torch.randn(batch, kv_heads, length, dim, device="cuda", dtype=torch.bfloat16, generator=gen))
              for _ in range(copies)]
    q = torch.randn(batch, heads, 1, dim, device="cuda", dtype=torch.bfloat16, generator=gen)
    si = LogitTransform("scale-invariant", tau=tau)
    scale = dim**-0.5

    def ours():
        for k, v in caches:
            decode_attention(q, k, v, transform=si, q_offset=length - 1, causal=True, scale=scale)

    def sdpa():
        for k, v in caches:
            F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=heads != kv_heads)

    row = {"T": length, "B": batch, "H": heads, "Hkv": kv_heads, "D": dim, "kv_bytes": kv_bytes,
           "cache_copies": copies}
    with torch.no_grad():
        for name, fn in (("triton-si", ours), ("sdpa", sdpa)):
            try:
                fn()
                torch.cuda.synchronize()
                ms = do_bench_cudagraph(fn, rep=100, return_mode="median") / copies
                row[f"{name}_us"] = ms * 1e3
                row[f"{name}_gbps"] = kv_bytes / ms / 1e6
                if name == "triton-si":
                    eager = do_bench(fn, warmup=10, rep=100, return_mode="median") / copies
                    row["triton-si_eager_us"] = eager * 1e3
            except Exception as err:
                row[f"{name}_error"] = f"{type(err).__name__}: {str(err)[:300]}"
    return row


def sdpa_default_kernels(heads: int, kv_heads: int, dim: int) -> str:
    """Names of the CUDA kernels torch's SDPA runs by default (which backend it picked), forward + backward."""
    import torch
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    q, k, v = (torch.randn(1, h, 1024, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for h in (heads, kv_heads, kv_heads))
    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=heads != kv_heads)
            out.sum().backward()
            torch.cuda.synchronize()
        names = {e.key for e in prof.key_averages() if e.device_type.name == "CUDA"}
        keep = [n for n in names if any(w in n.lower() for w in ("flash", "fmha", "cudnn", "attention", "sdpa"))]
        return "; ".join(sorted(n[:90] for n in keep)) or "; ".join(sorted(n[:60] for n in names))[:400]
    except Exception as err:
        return f"unknown ({type(err).__name__}: {err})"[:200]


def add_ratios(result: dict) -> None:
    """time / SDPA time (flash forced, and torch's default choice) for every row, and Flex+SI time / Triton-SI
    time per size."""
    by = {(r["T"], r["B"], r["backend"]): r for r in result["prefill"]}
    for r in result["prefill"]:
        for ref, suffix in (("sdpa-flash", "_vs_sdpa"), ("sdpa-default", "_vs_sdpa_default")):
            base = by.get((r["T"], r["B"], ref), {})
            for key in ("fwd_ms", "fwdbwd_ms"):
                if key in r and key in base:
                    r[key.replace("_ms", suffix)] = r[key] / base[key]
        if r["backend"] == "triton-si":
            flex = by.get((r["T"], r["B"], "flex-si"), {})
            for key in ("fwd_ms", "fwdbwd_ms"):
                if key in r and key in flex:
                    r[key.replace("_ms", "_speedup_vs_flex_si")] = flex[key] / r[key]
