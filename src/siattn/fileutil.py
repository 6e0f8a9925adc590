"""Files written atomically: the temporary names used beside a target, folders replaced whole, and the clean-up
of temporaries left behind by a process that was killed while writing."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
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


def fsync_dir(path: Path) -> None:
    """Flush ``path``'s directory entries (renames into it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_folder(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Make the folder ``path`` atomically: ``write(tmp)`` fills a temporary folder beside it, which then replaces
    ``path`` (an old one is moved aside first and deleted after). A crash or an error inside ``write`` leaves the
    previous ``path`` and no temporary folder. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        write(tmp)
    except BaseException:  # a full disk, a signal, anything: no half-written temporary folder stays behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():  # a directory cannot be renamed over a non-empty one: move the old one aside first
        old = temporary_name(path, "old")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)
    fsync_dir(path.parent)
    return path


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
