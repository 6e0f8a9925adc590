"""The repository is an archive of the project, not a journal of how it was made.

Tracked file names and texts name no work sessions or numbered calls and hold no first-person notes; the root
holds only the project's top-level documents and configuration; every study under ``results/`` has a README.
"""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

NAME_PATTERN = re.compile(r"(?i)\bsessions?[ _-]*[0-9]|\bcall[ _-]?[0-9]+\b|\bs[0-9]+-")
TEXT_PATTERN = re.compile(r"(?i)\bsessions?[ _-]*[0-9]|\bcalls?[ _-]?[0-9]+\b|\bI (did|ran|measured|tried|did not)\b")
ROOT_FILES = {"README.md", "ARCHITECTURE.md", "LICENSE", "pyproject.toml"}
DATA_SUFFIXES = (".json", ".jsonl")


def _tracked_files() -> list[str]:
    """Paths of the files git tracks in this checkout (skips the test outside a git checkout)."""
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    if Path(top).resolve() != ROOT:
        pytest.skip(f"the git checkout at {top} is not this project's root {ROOT}")
    return [f for f in files.split("\0") if f]


def _text(path: Path) -> str | None:
    """The file's text, or None for a binary, non-UTF-8 or missing file."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def test_file_names_record_no_sessions_or_calls():
    bad = [f for f in _tracked_files() if NAME_PATTERN.search(f)]
    assert not bad, "tracked file names that record how the work was done:\n" + "\n".join(bad)


def test_file_texts_record_no_sessions_calls_or_first_person_notes():
    bad = []
    for name in _tracked_files():
        if name.endswith(DATA_SUFFIXES):
            continue
        text = _text(ROOT / name)
        if text is None:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            match = TEXT_PATTERN.search(line)
            if match:
                bad.append(f"{name}:{number}: {match.group(0)!r} in {line.strip()[:100]!r}")
    assert not bad, f"{len(bad)} lines record how the work was done:\n" + "\n".join(bad)


def test_root_holds_only_top_level_documents_and_configuration():
    bad = sorted(f for f in _tracked_files() if "/" not in f and f not in ROOT_FILES and not f.startswith("."))
    assert not bad, f"unexpected tracked files at the root: {bad} (allowed: {sorted(ROOT_FILES)} and dot-files)"


def test_every_study_under_results_has_a_readme():
    files = set(_tracked_files())
    studies = {f.split("/")[1] for f in files if f.startswith("results/") and f.count("/") >= 2}
    assert studies, "no study folders under results/"
    missing = sorted(s for s in studies if f"results/{s}/README.md" not in files)
    assert not missing, f"study folders under results/ without a README.md: {missing}"
