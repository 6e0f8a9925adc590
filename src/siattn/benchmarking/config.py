"""The options of ``siattn bench attention``: :class:`AttentionBenchConfig`, one field per option."""

from __future__ import annotations

from dataclasses import dataclass

from siattn.options import check_options, option
from siattn.schedule import DEFAULT_TAU

CUDA_SIZES = ((4096, 8), (16384, 2), (65536, 1))
DECODE_LENGTHS = (16384, 65536, 262144)
CPU_LENGTHS = (1024, 2048, 4096, 8192, 16384, 32768, 65536)
CUDA_BACKENDS = ("sdpa-flash", "sdpa-default", "flex-causal", "flex-si", "triton-si", "triton-none")
EXTRA_BACKENDS = ("triton-alibi",)


def parse_lengths(text: str) -> list[int]:
    """'4k,16384' -> [4096, 16384] (k = 1024; an empty string is an empty list)."""
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        try:
            out.append(int(float(part.rstrip("k")) * (1024 if part.endswith("k") else 1)))
        except ValueError:
            raise ValueError(f"expected lengths like 4k,16384, got {text!r}") from None
    return out


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """'4k×8,16k×2' or '4096x8,...' -> [(T, B), ...]."""
    sizes = []
    for part in text.replace("×", "x").split(","):
        if part.count("x") != 1:
            raise ValueError(f"expected sizes like 4kx8,16kx2 (T x B), got {text!r}")
        t, b = part.split("x")
        lengths = parse_lengths(t)
        try:
            sizes.append((lengths[0] if lengths else 0, int(b)))
        except ValueError:
            raise ValueError(f"expected sizes like 4kx8,16kx2 (T x B), got {text!r}") from None
    return sizes


@dataclass(kw_only=True)
class AttentionBenchConfig:
    """Attention kernels: time, TFLOP/s or GB/s, memory."""

    device: str = option("cuda", "where to run: the CUDA comparison or the CPU one", choices=("cuda", "cpu"))
    out: str | None = option(None, "write the results as JSON here")
    md: str | None = option(None, "write a Markdown table here")
    heads: int | None = option(None, "query heads (default 6 on CUDA, 4 on CPU)", min=1)
    kv_heads: int | None = option(None, "key/value heads (default: = heads)", min=1)
    head_dim: int | None = option(None, "head dim (default 128 on CUDA, 64 on CPU)", min=1)
    tau: float = option(DEFAULT_TAU, "τ of the scale-invariant transform", min=0.0, min_open=True)
    backward: bool = option(True, "also time forward+backward")
    sizes: list[tuple[int, int]] = option(default_factory=lambda: list(CUDA_SIZES), parse=parse_sizes, min=1,
                                          help="CUDA prefill sizes as TxB, comma separated (e.g. 4kx8,16kx2,64kx1)")
    backends: str = option(",".join(CUDA_BACKENDS),
                           f"CUDA backends to compare, comma separated, from {CUDA_BACKENDS + EXTRA_BACKENDS}")
    decode_lengths: list[int] = option(default_factory=lambda: list(DECODE_LENGTHS), parse=parse_lengths, min=1,
                                       help="KV-cache lengths of the decoding benchmark (empty string: skip)")
    decode_batch: int = option(1, "batch of the decoding benchmark", min=1)
    autotune: bool = option(True, "let the Triton backend time its candidate tile configurations first")
    rep_ms: int = option(200, "do_bench repetition time per measurement (ms)", min=1)
    lengths: list[int] = option(default_factory=lambda: list(CPU_LENGTHS), parse=parse_lengths, min=1,
                                help="CPU sequence lengths, comma separated")
    cpu_backends: str = option("reference,chunked,flex", "CPU backends, comma separated")
    backward_max_length: int = option(16384, "CPU: time forward+backward only up to this length", min=0)
    memory_cap_gb: float = option(4.0, "CPU: skip the reference backend where its score matrices would pass this",
                                  min=0.0, min_open=True)
    repeats: int = option(3, "CPU: timed calls per case (median)", min=1)
    timeout_s: float = option(1800.0, "CPU: give up on one case after this many seconds", min=0.0, min_open=True)

    def __post_init__(self) -> None:
        self.sizes = [tuple(s) for s in self.sizes]
        check_options(self)
        for t, b in self.sizes:
            if t < 1 or b < 1:
                raise ValueError(f"sizes must be T x B with T, B >= 1, got {t}x{b}")


ACCURACY_SUITES = ("peaked", "small")
ACCURACY_TRANSFORMS = ("scale-invariant", "none", "alibi")


@dataclass(kw_only=True)
class AccuracyBenchConfig:
    """Accuracy on peaked attention against the float64 formula (:mod:`siattn.benchmarking.accuracy`)."""

    device: str = option("cuda", "where the backends run", choices=("cuda", "cpu"))
    suite: str = option("peaked", "the cases: peaked (one and 16 queries over 9,000 keys, 1,024 queries GQA 8:2, "
                        "4,096 queries; the GPU suite) or small (CPU-sized versions of the same)",
                        choices=ACCURACY_SUITES)
    backends: str = option("triton,chunked", "backends to hold to the plain formula, comma separated")
    dtype: str = option("bfloat16", "input dtype of the backends and of the plain formula",
                        choices=("bfloat16", "float16"))
    transforms: str = option("scale-invariant,none", "logit transforms, comma separated, from "
                             f"{ACCURACY_TRANSFORMS}")
    seeds: int = option(3, "input seeds 0 .. N−1 per case", min=1)
    tau: float = option(DEFAULT_TAU, "τ of the scale-invariant transform", min=0.0, min_open=True)
    row_term: str = option("auto", "the triton backward's row term (siattn.KernelOptions.row_term)",
                           choices=("auto", "output", "exact"))
    factor: float = option(2.0, "a backend passes when its error is at most factor × the plain formula's (+ "
                           "float32 eps)", min=1.0)
    out: str | None = option(None, "write the rows as JSON here")
    md: str | None = option(None, "write a Markdown table here")

    def __post_init__(self) -> None:
        check_options(self)
        for name in self.transforms.split(","):
            if name.strip() not in ACCURACY_TRANSFORMS:
                raise ValueError(f"transforms must name some of {ACCURACY_TRANSFORMS}, got {name.strip()!r}")
