"""Result files: JSON written atomically, GitHub Markdown tables, and the command line that made a result.

The lowest layer of siattn beside the schedule and precision: every other package may import it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def read_json(path: str | Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when there is no such file (or it is not valid JSON)."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def json_sha256(obj: Any) -> str:
    """The sha256 (hex) of ``obj``'s canonical JSON (``json.dumps`` with sorted keys): a digest of a settings or
    file list that does not depend on dict order."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (a crash leaves the previous file, never half of the new one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically (:func:`write_text`)."""
    return write_text(path, json.dumps(obj, indent=1) + "\n")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table; floats with 3 decimals, None as an em dash."""

    def cell(v: Any) -> str:
        if v is None:
            return "—"
        if isinstance(v, float):
            return f"{v:.3f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def command_line(args: Any, name: str) -> str:
    """The command that made a result: ``sys.argv`` if it ran ``siattn NAME``, else rebuilt from ``args``."""
    if name in sys.argv[1:2]:
        return "siattn " + shlex.join(sys.argv[1:])
    parts = [f"siattn {name}"]
    for key, value in vars(args).items():
        if key.startswith("_") or key == "command" or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif isinstance(value, list | tuple):
            parts.append(f"{flag} {shlex.join(str(v) for v in value)}")
        else:
            parts.append(f"{flag} {shlex.quote(str(value))}")
    return " ".join(parts)
