"""The errors a user can cause, and the checks that raise them.

:class:`UsageError` (a ``ValueError``) is a bad argument; the command line prints its message as one line and
exits with 2. :class:`WorkError` is work that could not be done (a file that cannot be written, a run that
failed); the command line prints one line and exits with 1. Everything else is a bug in siattn and keeps its
traceback. The ``check_*`` helpers are shared by the typed configs, the functional API and the recipes, so the
API and the command line raise the same messages.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any


class UsageError(ValueError):
    """A bad argument or option value; the message names it and the values it accepts."""


class WorkError(RuntimeError):
    """Work that could not be done for a reason outside siattn (a file that cannot be written, ...)."""


def check_int(name: str, value: Any, *, min: int | None = None, max: int | None = None) -> int:
    """``value`` as an int after checking ``min <= value <= max``; raises UsageError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
        raise UsageError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if min is not None and value < min:
        raise UsageError(f"{name} must be >= {min}, got {value}")
    if max is not None and value > max:
        raise UsageError(f"{name} must be <= {max}, got {value}")
    return value


def check_float(name: str, value: Any, *, min: float | None = None, max: float | None = None,
                min_open: bool = False, max_open: bool = False) -> float:
    """``value`` as a finite float within [min, max] (``min_open``/``max_open``: that end excluded)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise UsageError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise UsageError(f"{name} must be a finite number, got {value}")
    if min is not None and (value <= min if min_open else value < min):
        raise UsageError(f"{name} must be {'>' if min_open else '>='} {min:g}, got {value:g}")
    if max is not None and (value >= max if max_open else value > max):
        raise UsageError(f"{name} must be {'<' if max_open else '<='} {max:g}, got {value:g}")
    return value


def check_output_folder(name: str, path: str | os.PathLike | None) -> None:
    """Raise UsageError naming ``name`` unless ``path`` is a folder that exists and is writable or could be
    created (its nearest existing ancestor is a writable folder). Creates nothing."""
    if path is None:
        return
    target = Path(path).expanduser()
    if target.exists() and not target.is_dir():
        raise UsageError(f"{name} {str(path)!r}: exists and is not a folder")
    probe = target
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"{name} {str(path)!r}: cannot be created ({probe} is not a folder)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"{name} {str(path)!r}: cannot write in {probe} (permission denied)")
