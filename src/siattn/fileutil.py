"""Files written atomically: the temporary names used beside a target, and the clean-up of those left behind
by a process that was killed while writing."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def temporary_name(target: Path, kind: str = "tmp") -> Path:
    """``.{name}.{kind}-{pid}`` beside ``target``: where it is written (kind "tmp") or moved aside ("old")."""
    return target.parent / f".{target.name}.{kind}-{os.getpid()}"


def remove_stale_temporaries(folder: Path, name: str | None = None) -> list[Path]:
    """Delete ``.{name}.tmp-PID`` / ``.{name}.old-PID`` entries of ``folder`` (any name when None) whose process
    is gone: what a run killed while writing left behind. Entries of live processes stay. Returns the removed."""
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if not p.name.startswith("."):
            continue
        stem, dot, suffix = p.name[1:].rpartition(".")
        kind, _, pid = suffix.partition("-")
        if not dot or (name is not None and stem != name) or kind not in ("tmp", "old") or not pid.isdigit():
            continue
        if int(pid) == os.getpid() or pid_alive(int(pid)):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed
