"""Accuracy of the attention backends against the float64 formula (FlashAttention's test convention).

For the output and each gradient x of a backend, the error is

    err(x) = max|x − x₆₄| / max|x₆₄|

where x₆₄ is the reference formula (:func:`siattn.backends.reference.reference_attention`) run in float64 on the
same inputs and the same upstream gradient. The yardstick is the plain formula run in the input's own dtype
(``math_dtype=dtype``: scores, transform, softmax and values all rounded to that dtype, as plain PyTorch code
would): a backend is as accurate as plain PyTorch when

    err(backend) ≤ factor · err(plain) + floor,   factor = 2, floor = float32's machine epsilon (1.2e-7)

(the floor only matters where the plain formula happens to be almost exact). The rule is meant for half-precision
inputs, where rounding the inputs and P dominates: with float32 inputs a FlashAttention-style backward's
recomputed P = e^(L − lse) carries about eps·|lse| of error that a plain softmax does not.

Peaked attention (queries scaled up so a few keys take almost all the weight) is where the backward's
cancellations show: dS = P·(dP − Δ), Δ = Σ_j P·dP, is small where P ≈ 1 (see KernelOptions.row_term).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch

from siattn.backends import KernelOptions, LogitTransform, run_backend
from siattn.backends.reference import reference_attention

QUANTITIES = ("out", "dq", "dk", "dv")
FLOOR = torch.finfo(torch.float32).eps
AttentionFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class AccuracyCase:
    """One input shape. q: (batch, heads, q_len, head_dim), k/v: (batch, kv_heads, k_len, head_dim); the queries
    are the last q_len positions (q_offset = k_len − q_len) and are multiplied by ``q_gain`` (8 makes the logits
    peaked: a few keys take nearly all the weight)."""

    name: str
    batch: int = 1
    heads: int = 4
    kv_heads: int = 4
    q_len: int = 1
    k_len: int = 1024
    head_dim: int = 64
    q_gain: float = 8.0


PEAKED_CASES: tuple[AccuracyCase, ...] = (
    AccuracyCase("one query, 9000 keys", q_len=1, k_len=9000),
    AccuracyCase("16 queries, 9000 keys", q_len=16, k_len=9000),
    AccuracyCase("1024 queries, GQA 8:2", heads=8, kv_heads=2, q_len=1024, k_len=1024),
    AccuracyCase("4096 queries, long keys", heads=2, kv_heads=2, q_len=4096, k_len=4096),
)
"""The suite run on the GPU machine (one and many queries, GQA, long keys), all with peaked logits."""

SMALL_PEAKED_CASES: tuple[AccuracyCase, ...] = (
    AccuracyCase("one query, 700 keys", heads=2, kv_heads=2, q_len=1, k_len=700, head_dim=64),
    AccuracyCase("16 queries, 700 keys", heads=2, kv_heads=1, q_len=16, k_len=700, head_dim=64),
    AccuracyCase("96 queries, GQA 4:2", heads=4, kv_heads=2, q_len=96, k_len=96, head_dim=64),
)
"""A CPU-sized version of the same shapes (the tests and the CPU column of the study)."""


def relative_error(x: torch.Tensor, exact: torch.Tensor) -> float:
    """max|x − exact| / max|exact| in float64 (0 when both are all zero)."""
    scale = exact.abs().max().item()
    diff = (x.double() - exact.double()).abs().max().item()
    return diff / scale if scale > 0 else diff


def case_inputs(case: AccuracyCase, *, seed: int, device: str | torch.device = "cpu"
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """float64 (q, k, v, grad_out) of ``case`` drawn from N(0, 1) with ``seed`` (q already multiplied by q_gain)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)

    def draw(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(device)

    q = draw(case.batch, case.heads, case.q_len, case.head_dim) * case.q_gain
    k = draw(case.batch, case.kv_heads, case.k_len, case.head_dim)
    v = draw(case.batch, case.kv_heads, case.k_len, case.head_dim)
    grad_out = draw(case.batch, case.heads, case.q_len, case.head_dim)
    return q, k, v, grad_out


def output_and_gradients(fn: AttentionFn, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         grad_out: torch.Tensor) -> dict[str, torch.Tensor]:
    """{"out", "dq", "dk", "dv"} of ``fn(q, k, v)`` for the upstream gradient ``grad_out`` (fresh leaves)."""
    leaves = [x.detach().clone().requires_grad_(True) for x in (q, k, v)]
    out = fn(*leaves)
    grads = torch.autograd.grad(out, leaves, grad_out.to(out.dtype))
    return dict(zip(QUANTITIES, (out.detach(), *grads), strict=True))


def reference_fn(transform: LogitTransform, q_offset: int, *, math_dtype: torch.dtype | None = None
                 ) -> AttentionFn:
    """The reference formula as a function of (q, k, v); ``math_dtype`` as in reference_attention."""
    def fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return reference_attention(q, k, v, transform=transform, q_offset=q_offset, causal=True,
                                   scale=q.shape[-1] ** -0.5, math_dtype=math_dtype)
    return fn


def backend_fn(backend: str, transform: LogitTransform, q_offset: int, kernel: KernelOptions | None = None
               ) -> AttentionFn:
    """Backend ``backend`` (:func:`siattn.backends.run_backend`) as a function of (q, k, v)."""
    def fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return run_backend(q, k, v, transform=transform, q_offset=q_offset, causal=True, backend=backend,
                           kernel=kernel)
    return fn


@dataclass(frozen=True)
class AccuracyRow:
    """The errors of one backend on one case and seed, beside the plain formula's (err as defined above)."""

    case: str
    transform: str
    dtype: str
    seed: int
    backend: str
    errors: dict[str, float]
    plain_errors: dict[str, float]
    floor: float
    factor: float

    def bound(self, quantity: str) -> float:
        """factor · err(plain) + floor for ``quantity``."""
        return self.factor * self.plain_errors[quantity] + self.floor

    @property
    def failures(self) -> list[str]:
        """The quantities whose error exceeds the bound."""
        return [name for name in QUANTITIES if not self.errors[name] <= self.bound(name)]

    def as_dict(self) -> dict:
        return {**asdict(self), "failures": self.failures}


def measure_case(case: AccuracyCase, backends: Iterable[str], *, dtype: torch.dtype, seed: int,
                 transform: LogitTransform, device: str | torch.device = "cpu", factor: float = 2.0,
                 kernel: KernelOptions | None = None) -> list[AccuracyRow]:
    """One row per backend: its errors and the plain formula's on ``case`` (inputs rounded to ``dtype``);
    ``kernel``: options of the triton backend."""
    q64, k64, v64, g64 = case_inputs(case, seed=seed, device=device)
    q, k, v, g = (x.to(dtype) for x in (q64, k64, v64, g64))
    q_offset = case.k_len - case.q_len
    # the exact values are those of the rounded inputs: only the computation's own error is measured
    exact = output_and_gradients(reference_fn(transform, q_offset), q.double(), k.double(), v.double(), g.double())
    plain = output_and_gradients(reference_fn(transform, q_offset, math_dtype=dtype), q, k, v, g)
    plain_errors = {name: relative_error(plain[name], exact[name]) for name in QUANTITIES}
    rows = []
    for backend in backends:
        got = output_and_gradients(backend_fn(backend, transform, q_offset, kernel), q, k, v, g)
        rows.append(AccuracyRow(
            case=case.name, transform=transform.kind, dtype=str(dtype).removeprefix("torch."), seed=seed,
            backend=backend, errors={name: relative_error(got[name], exact[name]) for name in QUANTITIES},
            plain_errors=plain_errors, floor=FLOOR, factor=factor))
    return rows


def run_suite(cases: Iterable[AccuracyCase], backends: Iterable[str], *, dtype: torch.dtype,
              seeds: Iterable[int], transforms: Iterable[LogitTransform], device: str | torch.device = "cpu",
              kernel: KernelOptions | None = None, factor: float = 2.0,
              progress: Callable[[str], None] | None = None) -> list[AccuracyRow]:
    """:func:`measure_case` over every case × transform × seed; ``progress`` is told each case as it starts."""
    rows: list[AccuracyRow] = []
    backends, seeds, transforms = list(backends), list(seeds), list(transforms)
    for case in cases:
        for transform in transforms:
            for seed in seeds:
                if progress is not None:
                    progress(f"{case.name} · {transform.kind} · seed {seed}")
                rows += measure_case(case, backends, dtype=dtype, seed=seed, transform=transform, device=device,
                                     kernel=kernel, factor=factor)
    return rows


def rows_table(rows: Iterable[AccuracyRow]) -> list[list[str]]:
    """Markdown-ready rows: case, transform, seed, backend, then err(backend) / err(plain) for each quantity and
    the quantities that break the bound."""
    table = [["case", "transform", "seed", "backend", *(f"{q} err / plain" for q in QUANTITIES), "fails"]]
    for row in rows:
        table.append([row.case, row.transform, str(row.seed), row.backend,
                      *(f"{row.errors[q]:.1e} / {row.plain_errors[q]:.1e}" for q in QUANTITIES),
                      ", ".join(row.failures) or "—"])
    return table
