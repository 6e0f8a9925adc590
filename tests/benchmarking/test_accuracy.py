"""The accuracy yardstick: errors against the float64 formula, and backends held to the plain formula's."""

import pytest
import torch

from siattn.backends import LogitTransform
from siattn.benchmarking.accuracy import (
    FLOOR,
    QUANTITIES,
    SMALL_PEAKED_CASES,
    AccuracyCase,
    AccuracyRow,
    case_inputs,
    measure_case,
    output_and_gradients,
    reference_fn,
    relative_error,
)

SI = LogitTransform("scale-invariant", tau=10.0)


def test_relative_error_is_the_largest_difference_over_the_largest_exact_value():
    exact = torch.tensor([4.0, -2.0, 0.5])
    assert relative_error(exact + torch.tensor([0.0, 0.1, -0.2]), exact) == pytest.approx(0.2 / 4.0)
    assert relative_error(torch.zeros(3), torch.zeros(3)) == 0.0


def test_peaked_inputs_are_peaked_and_replayable():
    case = AccuracyCase("one query", q_len=1, k_len=500)
    q, k, v, g = case_inputs(case, seed=3)
    again = case_inputs(case, seed=3)
    assert all(torch.equal(a, b) for a, b in zip((q, k, v, g), again))
    probs = torch.softmax((q @ k.transpose(-1, -2)) * case.head_dim ** -0.5, -1)
    assert probs.amax().item() > 0.5  # a single key takes most of the weight of some head


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", SMALL_PEAKED_CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("transform", [SI, LogitTransform("none"), LogitTransform("alibi")], ids=lambda t: t.kind)
def test_chunked_is_as_accurate_as_plain_pytorch_on_peaked_attention(case, dtype, transform):
    """Half-precision inputs, as FlashAttention's convention has it. (With float32 inputs the recomputed
    P = e^(L − lse) carries about eps·|lse| of error that plain softmax does not, so the 2x rule is no
    yardstick there; tests/backends/test_backends.py bounds float32 against float64 directly.)"""
    seed = torch.randint(0, 2**31, ()).item()
    print("input seed", seed)
    row, = measure_case(case, ["chunked"], dtype=dtype, seed=seed, transform=transform)
    assert row.failures == [], row.as_dict()


def test_the_rule_fails_a_backward_that_rounds_its_row_term():
    """A backward whose gradients carry a relative error of 1 % fails the bound that float32 math passes."""
    case = SMALL_PEAKED_CASES[0]
    q, k, v, g = case_inputs(case, seed=0)
    exact = output_and_gradients(reference_fn(SI, case.k_len - case.q_len), q, k, v, g)
    plain = output_and_gradients(reference_fn(SI, case.k_len - case.q_len, math_dtype=torch.float32),
                                 *(x.float() for x in (q, k, v, g)))
    noisy = {name: x + 0.01 * x.abs().amax() for name, x in plain.items()}
    row = AccuracyRow(case=case.name, transform="scale-invariant", dtype="float32", seed=0, backend="noisy",
                      errors={n: relative_error(noisy[n], exact[n]) for n in QUANTITIES},
                      plain_errors={n: relative_error(plain[n], exact[n]) for n in QUANTITIES},
                      floor=FLOOR, factor=2.0)
    assert row.failures == list(QUANTITIES)
