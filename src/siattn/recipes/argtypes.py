"""argparse ``type=`` converters with bounds: a bad value is reported by argparse after the usage line, as
``argument --trials: must be >= 1, got 0``, before any work starts. The bounds are the same checks
(:mod:`siattn.errors`) that the API applies, so both give the same message."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from siattn.errors import UsageError, check_float, check_int


def _converter(name: str, parse: Callable[[str], float], check: Callable[[float], float]) -> Callable[[str], float]:
    def convert(text: str) -> float:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if name == 'int' else 'a number'}, "
                                             f"got {text!r}") from None
        try:
            return check(value)
        except UsageError as err:
            raise argparse.ArgumentTypeError(str(err).removeprefix("value ")) from None

    convert.__name__ = name
    convert.numeric = True  # type: ignore[attr-defined]
    return convert


def _int(text: str) -> int:
    value = float(text) if any(c in text.lower() for c in ".e") else int(text)
    if value != int(value):
        raise ValueError(text)
    return int(value)


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An integer >= ``minimum`` (written 100, 1e6 or 1_000_000)."""
    return _converter("int", _int, lambda v: check_int("value", v, min=minimum))  # type: ignore[return-value]


def number(*, min: float | None = None, max: float | None = None, min_open: bool = False,
           max_open: bool = False) -> Callable[[str], float]:
    """A finite float within the bounds (``min_open``/``max_open``: that end excluded)."""
    return _converter("float", float, lambda v: check_float("value", v, min=min, max=max, min_open=min_open,
                                                            max_open=max_open))


POSITIVE_INT = int_at_least(1)
NONNEGATIVE_INT = int_at_least(0)
SEED = int_at_least(0)
POSITIVE = number(min=0.0, min_open=True)
NONNEGATIVE = number(min=0.0)
