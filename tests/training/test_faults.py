"""No data lost when a training run dies while writing a checkpoint.

A tiny run (12 steps, a checkpoint every 2) is killed with SIGKILL inside the checkpoint code: either the child
process replaces the writers of ``siattn.training.checkpointing`` (test-side only: the safetensors writer, the
small-file writer of state.json/COMPLETE/LATEST, the folder removal of pruning) by ones that write part of their
file and then kill the process, or the parent watches the checkpoint folder and kills the child a seeded moment
after a temporary checkpoint folder appears. After each kill: every folder that claims to be complete verifies,
no temporary folder is taken for a checkpoint, ``--resume`` finishes the run, and the metrics equal those of an
uninterrupted run exactly (the trainer resumes bit-identically on CPU)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from siattn.cli import main as cli_main
from siattn.training import CheckpointError, read_checkpoint_state
from siattn.training.checkpointing import resolve_checkpoint
from siattn.training.trainer import find_checkpoint

SEEDS = range(6)
TIMED_SEEDS = range(3)
STEPS, EVERY = 12, 2

# the child: writers that die half way through their N-th call (argv: kind, N, fraction, siattn argv...)
CHILD = r"""
import os, random, shutil, signal, sys
import siattn.training.checkpointing as ck
kind, n, frac = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
calls = [0]
def hit():
    calls[0] += 1
    return calls[0] == n
def die():
    os.kill(os.getpid(), signal.SIGKILL)
if kind == "save_file":
    real_save = ck.save_file
    def save_file(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        if hit():
            os.truncate(filename, int(os.path.getsize(filename) * frac))
            die()
    ck.save_file = save_file
elif kind == "write_bytes":
    real_write = ck._write_bytes
    def write_bytes(path, data):
        if hit():
            with open(path, "wb") as f:
                f.write(data[:int(len(data) * frac)])
            die()
        real_write(path, data)
    ck._write_bytes = write_bytes
elif kind == "rmtree":
    real_rmtree = shutil.rmtree
    def rmtree(path, *args, **kwargs):
        if hit() and os.path.isdir(path):
            names = sorted(os.listdir(path))
            random.Random(n).shuffle(names)
            for name in names[:max(1, int(len(names) * frac))][:len(names) - 1]:
                os.unlink(os.path.join(path, name))
            die()
        real_rmtree(path, *args, **kwargs)
    shutil.rmtree = rmtree
from siattn.cli import main
sys.exit(main(sys.argv[4:]))
"""

# per kind: the calls per run and the first call after the first checkpoint is complete
# (2 safetensors files, 3 small files: state.json, COMPLETE, LATEST; a prune from the third checkpoint on)
CALLS = {"save_file": (2, 3), "write_bytes": (3, 4), "rmtree": (None, 1)}



def train_argv(dataset: Path, out: Path) -> list[str]:
    return ["train", "--preset", "cpu-tiny", "--n-layer", "1", "--n-embd", "32", "--head-dim", "16", "--n-head",
            "2", "--seq-len", "64", "--batch-size", "2", "--steps", str(STEPS), "--ckpt-every", str(EVERY),
            "--keep-checkpoints", "2", "--eval-every", "1000", "--eval-tokens", "128", "--eval-multipliers", "1",
            "--log-every", "1", "--threads", "1", "--no-progress", "--data", str(dataset), "--out", str(out)]


def run_in_process(argv: list[str]) -> int:
    threads = torch.get_num_threads()
    try:
        return cli_main(argv)
    finally:
        torch.set_num_threads(threads)


def metrics(run: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock fields."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in ("tokens_per_s", "seconds")} for line in lines]


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory) -> list[dict]:
    run = tmp_path_factory.mktemp("reference") / "run"
    assert run_in_process(train_argv(dataset, run)) == 0
    out = metrics(run)
    assert [r["step"] for r in out if r["kind"] == "train"] == list(range(1, STEPS + 1))
    return out


def check_after_kill(run: Path, why: str) -> None:
    """What a killed run leaves: only verified checkpoints claim to be complete; temporaries are not taken."""
    ckpts = run / "checkpoints"
    latest = (ckpts / "LATEST").read_text().strip()
    assert latest.startswith("step_"), f"{why}: LATEST names {latest!r}"
    folder, state = read_checkpoint_state(run, verify=True)
    assert folder == ckpts / latest and state["step"] == int(latest[5:]), why
    for p in sorted(ckpts.glob("step_*")):
        if (p / "COMPLETE").exists():  # the marker claims the folder is whole: it must verify
            try:
                read_checkpoint_state(p, verify=True)
            except CheckpointError as err:
                pytest.fail(f"{why}: {p.name} has its COMPLETE marker but does not verify: {err}")
    hidden = [p.name for p in ckpts.iterdir() if p.name.startswith(".")]
    assert all(".tmp-" in name or ".old-" in name for name in hidden), f"{why}: {hidden}"
    # what the run's checkpoints are found by: LATEST, the newest marked step_* folder, retention's listing
    assert find_checkpoint(run) == folder, why
    (ckpts / "LATEST").rename(ckpts / "LATEST.aside")
    try:
        assert not resolve_checkpoint(run).name.startswith("."), why
    finally:
        (ckpts / "LATEST.aside").rename(ckpts / "LATEST")
    assert all(not p.name.startswith(".") for p in ckpts.glob("step_*")), why


def check_resume(run: Path, dataset: Path, reference: list[dict], why: str) -> None:
    assert run_in_process([*train_argv(dataset, run), "--resume"]) == 0, why
    ckpts = run / "checkpoints"
    assert [p.name for p in ckpts.iterdir() if p.name.startswith(".")] == [], f"{why}: temporaries left"
    assert (ckpts / "LATEST").read_text().strip() == f"step_{STEPS:06d}", why
    read_checkpoint_state(run, verify=True)
    got = metrics(run)
    assert got == reference, f"{why}: resumed metrics differ from the uninterrupted run's"


@pytest.mark.parametrize("seed", SEEDS)
def test_kill_inside_a_checkpoint_write_loses_nothing_and_resumes_identically(seed, tmp_path, dataset, reference):
    rng = random.Random(seed)
    kind = list(CALLS)[seed % len(CALLS)]
    per_ckpt, first = CALLS[kind]
    last = STEPS // EVERY * per_ckpt if per_ckpt else STEPS // EVERY - 2
    n, frac = rng.randint(first, last), rng.uniform(0.05, 0.95)
    why = f"seed {seed}: killed in {kind} call {n} after {frac:.2f} of it"
    run = tmp_path / "run"
    child = subprocess.run([sys.executable, "-c", CHILD, kind, str(n), str(frac), *train_argv(dataset, run)],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, f"{why}: exit {child.returncode}\n{child.stderr[-2000:]}"
    check_after_kill(run, why)
    check_resume(run, dataset, reference, why)


@pytest.mark.parametrize("seed", TIMED_SEEDS)
def test_kill_at_a_random_moment_of_a_checkpoint_write_loses_nothing(seed, tmp_path, dataset, reference):
    rng = random.Random(1000 + seed)
    target, delay = rng.randint(2, STEPS // EVERY), rng.uniform(0, 0.004)
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    proc = subprocess.Popen([sys.executable, "-m", "siattn", *train_argv(dataset, run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen: set[str] = set()
    deadline = time.monotonic() + 120
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if ckpts.is_dir():
                with os.scandir(ckpts) as entries:
                    seen |= {e.name for e in entries if e.name.startswith(".step_") and ".tmp-" in e.name}
            if len(seen) >= target:
                time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.0005)
    finally:
        if proc.poll() is None and time.monotonic() >= deadline:  # a hang: fail below, not here
            proc.kill()
        err = proc.communicate(timeout=60)[1]
    why = (f"seed {seed}: SIGKILL {delay * 1000:.1f} ms after temporary checkpoint folder {target} appeared "
           f"(saw {len(seen)}; exit {proc.returncode})")
    assert proc.returncode in (0, -signal.SIGKILL), f"{why}\n{err[-2000:]}"
    check_after_kill(run, why)
    check_resume(run, dataset, reference, why)
