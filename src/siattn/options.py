"""Typed options: a config dataclass declares each of its fields once, with the help text, the values it accepts
and whether it is derived, and both its checks and the command line come from that declaration.

    @dataclass
    class NeedleConfig:
        trials: int = option(100, "examples per length", min=1)
        task: str = option("needle", "which retrieval task", choices=("needle", "passkey"))

        def __post_init__(self) -> None:
            check_options(self)                      # UsageError: "trials must be >= 1, got 0"

:func:`check_options` validates an instance against the declared bounds and choices (the Python API and the
command line raise the same one-line :class:`~siattn.errors.UsageError`); ``siattn.recipes.arguments`` turns the
same fields into ``--kebab-case`` flags whose ``--help`` is the ``help`` text. A ``derived`` field is computed by
siattn (the vocabulary size from the tokenizer, ...): the command line documents it as such and refuses it.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

from siattn.errors import UsageError, check_float, check_int

Choices = Sequence[str] | Callable[[], Sequence[str]]


def option(default: Any = dataclasses.MISSING, help: str = "", *, default_factory: Any = dataclasses.MISSING,
           min: float | None = None, max: float | None = None, min_open: bool = False, max_open: bool = False,
           choices: Choices | None = None, derived: str | None = None, flag: str | None = None,
           positional: bool = False, sep: str | None = None, parse: Callable[[str], Any] | None = None,
           metavar: str | None = None) -> Any:
    """A dataclass field with its documentation and accepted values.

    ``min``/``max`` (``*_open``: that end excluded) bound a number or every item of a tuple of numbers;
    ``choices`` (a sequence, or a function returning one, for registries) lists the accepted strings; ``derived``
    says where siattn takes the value from (the command line refuses the field). Command-line spelling:
    ``flag`` (default ``--field-name``), ``positional``, ``sep`` (a tuple given as one comma-separated word
    rather than several words), ``parse`` (a converter from the command-line text, e.g. ``10M`` -> 10_000_000).
    """
    metadata = {"help": help, "min": min, "max": max, "min_open": min_open, "max_open": max_open,
                "choices": choices, "derived": derived, "flag": flag, "positional": positional, "sep": sep,
                "parse": parse, "metavar": metavar}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata)


def choices_of(f: dataclasses.Field) -> tuple[str, ...] | None:
    """The accepted strings of field ``f`` (None: any)."""
    choices = f.metadata.get("choices")
    if choices is None:
        return None
    return tuple(choices() if callable(choices) else choices)


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """Field name -> resolved annotation of the dataclass ``cls``."""
    return typing.get_type_hints(cls)


def unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """(``T``, True) for ``T | None``, else (``tp``, False)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def item_type(tp: Any) -> Any:
    """The item type of ``tuple[T, ...]``, ``tuple[T, T]`` or ``list[T]``; None for other types."""
    if typing.get_origin(tp) in (tuple, list):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return args[0] if args else None
    return None


def documented_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of ``cls`` declared with :func:`option` (those that have a help text)."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("help")]


def _check_value(name: str, tp: Any, f: dataclasses.Field, value: Any) -> None:
    md = f.metadata
    if tp is bool:
        if not isinstance(value, bool):
            raise UsageError(f"{name} must be true or false, got {value!r}")
        return
    if tp is int:
        check_int(name, value, min=md.get("min"), max=md.get("max"))
    elif tp is float:
        check_float(name, value, min=md.get("min"), max=md.get("max"), min_open=md.get("min_open", False),
                    max_open=md.get("max_open", False))
    elif tp is str and not isinstance(value, str):
        raise UsageError(f"{name} must be a string, got {value!r}")
    choices = choices_of(f)
    if choices is not None and value not in choices:
        raise UsageError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def check_options(obj: Any) -> None:
    """Check every field of the dataclass instance ``obj`` declared with :func:`option` against its type,
    bounds and choices; raises UsageError naming the first bad field and what it accepts."""
    hints = field_types(type(obj))
    for f in documented_fields(type(obj)):
        value = getattr(obj, f.name)
        tp, optional = unwrap_optional(hints[f.name])
        if value is None:
            if optional:
                continue
            raise UsageError(f"{f.name} must be given")
        if dataclasses.is_dataclass(tp):
            continue  # a nested config checks itself
        item = item_type(tp)
        if item is None:
            _check_value(f.name, tp, f, value)
            continue
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            raise UsageError(f"{f.name} must be a list, got {value!r}")
        args = typing.get_args(tp)
        if typing.get_origin(tp) is tuple and Ellipsis not in args and len(value) != len(args):
            raise UsageError(f"{f.name} must be {len(args)} values, got {list(value)}")
        for v in value:
            _check_value(f.name, item, f, v)
