"""No data lost when ``data prepare`` dies: SIGKILL at seeded moments of a prepare, and a full disk (ENOSPC)
while a shard is written. Afterwards the output folder is absent or a whole dataset, a rerun gives the same
dataset as an uninterrupted prepare, the previous dataset survives a failed overwrite, and no temporary folder
stays behind."""

from __future__ import annotations

import errno
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from siattn.cli import main as cli_main
from siattn.data import TokenDataset, prepare_dataset
from siattn.data.shards import ShardWriter

SEEDS = range(6)
SHARD_TOKENS = 20_000

CHILD = r"""
import sys
from siattn.data import prepare_dataset
prepare_dataset(sys.argv[1], sys.argv[2], progress=False, val_fraction=0.1, shard_tokens=int(sys.argv[3]))
"""


def prepare(source: Path, out: Path, **kw) -> Path:
    kw.setdefault("progress", False)
    kw.setdefault("val_fraction", 0.1)
    kw.setdefault("shard_tokens", SHARD_TOKENS)
    return prepare_dataset(str(source), out, **kw)


def identity(out: Path) -> tuple[str, list[tuple[str, str]]]:
    """(fingerprint, [(shard name, sha256)]) of a prepared dataset."""
    manifest = json.loads((out / "manifest.json").read_text())
    shards = [(s["name"], s["sha256"]) for split in ("train", "val") for s in manifest["splits"][split]["shards"]]
    return manifest["fingerprint"], shards


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """About 5 MB in 400 files: a prepare of a few hundred shards, some tenths of a second."""
    src = tmp_path_factory.mktemp("corpus")
    for i in range(400):
        (src / f"f{i:03d}.txt").write_text("".join(f"document {i}, line {j}: the quick brown fox {i * j}\n"
                                                   for j in range(300)))
    return src


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory) -> tuple[tuple[str, list], float]:
    out = tmp_path_factory.mktemp("reference") / "out"
    t0 = time.perf_counter()
    prepare(corpus, out)
    seconds = time.perf_counter() - t0
    ident = identity(out)
    assert len(ident[1]) > 100
    return ident, seconds


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("seed", SEEDS)
def test_killed_prepare_leaves_nothing_half_written_and_a_rerun_gives_the_same_dataset(seed, tmp_path, corpus,
                                                                                     reference):
    (fingerprint, shards), seconds = reference
    rng = random.Random(seed)
    delay = rng.uniform(0, 1.5 * seconds)  # from the moment its temporary folder appears; late ones find it done
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(corpus), str(out), str(SHARD_TOKENS)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while proc.poll() is None and not leftovers(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.001)
    started = bool(leftovers(tmp_path))
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    err = proc.communicate(timeout=60)[1]
    why = (f"seed {seed}: SIGKILL {delay:.3f} s after the temporary folder appeared (appeared: {started}; "
           f"exit {proc.returncode})")
    assert proc.returncode in (0, -signal.SIGKILL), f"{why}\n{err[-2000:]}"
    if out.exists():  # renamed into place only when whole
        TokenDataset(out, verify=True)
        assert identity(out) == (fingerprint, shards), why
    assert {p.name for p in tmp_path.iterdir() if not p.name.startswith(".")} <= {"out"}, why
    prepare(corpus, out)
    assert identity(out) == (fingerprint, shards), why
    TokenDataset(out, verify=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], f"{why}: stray files after the rerun"


def full_disk_after(n: int):
    """A ShardWriter._flush whose ``n``-th call writes half a shard and then finds the disk full."""
    real = ShardWriter._flush
    calls = [0]

    def flush(self: ShardWriter) -> None:
        calls[0] += 1
        if calls[0] < n or not self._n:
            return real(self)
        path = self.folder / f"{self.prefix}_{len(self.shards):06d}.npy"
        path.write_bytes(b"\x93NUMPY" + bytes(1000))
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    return flush


@pytest.mark.parametrize("n", [1, 7])
def test_full_disk_in_the_api_raises_and_keeps_the_previous_dataset(n, tmp_path, corpus, monkeypatch):
    out = tmp_path / "out"
    prepare(corpus, out, seed=1)
    before = identity(out)
    monkeypatch.setattr(ShardWriter, "_flush", full_disk_after(n))
    with pytest.raises(OSError) as info:
        prepare(corpus, out, seed=2, overwrite=True)
    assert info.value.errno == errno.ENOSPC, f"shard write {n}"
    assert leftovers(tmp_path) == [], f"shard write {n}: temporaries left"
    assert identity(out) == before, f"shard write {n}"
    TokenDataset(out, verify=True)


def test_full_disk_through_the_cli_is_one_line_exit_1_and_keeps_the_previous_dataset(tmp_path, corpus,
                                                                                    monkeypatch, capsys):
    small = tmp_path / "src"
    small.mkdir()
    for p in sorted(corpus.iterdir())[:20]:
        (small / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "out"
    assert cli_main(["data", "prepare", str(small), "--out", str(out), "--no-progress"]) == 0
    before = identity(out)
    capsys.readouterr()
    monkeypatch.setattr(ShardWriter, "_flush", full_disk_after(1))
    code = cli_main(["data", "prepare", str(small), "--out", str(out), "--no-progress", "--seed", "3",
                     "--overwrite"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert len(err.strip().splitlines()) == 1 and "No space left on device" in err, err
    assert "Traceback" not in err
    assert leftovers(tmp_path) == []
    assert identity(out) == before
    TokenDataset(out, verify=True)
