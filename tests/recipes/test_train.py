"""``siattn train`` / ``siattn generate`` end to end on a tiny corpus: outputs, kill + resume, signals, DDP."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from siattn.cli import main
from siattn.training import load_checkpoint

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TINY = ["--preset", "cpu-tiny", "--n-layer", "2", "--n-embd", "32", "--n-head", "2", "--head-dim", "16",
        "--seq-len", "32", "--batch-size", "4", "--eval-tokens", "1024", "--eval-multipliers", "1,4",
        "--no-progress"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """~150 KB of Python source in a folder: a document source for prepare_dataset."""
    folder = tmp_path_factory.mktemp("corpus")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    total = 0
    for f in sorted(stdlib.glob("*.py")):
        if total > 150_000:
            break
        shutil.copy(f, folder / f.name)
        total += f.stat().st_size
    return folder


@pytest.fixture(scope="module")
def dataset(corpus, tmp_path_factory) -> Path:
    from siattn.data import prepare_dataset

    out = tmp_path_factory.mktemp("data") / "tiny-bytes"
    prepare_dataset(str(corpus), out, tokenizer="bytes", val_fraction=0.2, progress=False)
    return out


def train_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "siattn", "train", *TINY, *args]


def records(run: Path, kind: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_train_writes_a_complete_run_folder(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", *TINY, "--data", str(dataset), "--out", str(run), "--steps", "6", "--eval-every", "3",
                 "--log-every", "2", "--ckpt-every", "3"])
    assert code == 0
    out = capsys.readouterr().out
    assert "validation loss" in out and "unigram entropy" in out and str(run / "metrics.jsonl") in out
    assert [r["step"] for r in records(run, "train")] == [2, 4, 6]
    val = records(run, "val")
    assert [r["step"] for r in val] == [3, 6] and set(val[-1]["loss"]) == {"32", "128"}
    config = json.loads((run / "config.json").read_text())
    assert config["train_config"]["model"]["p_rope_base"] == 8.0  # 1024 · 32 / 4096
    assert config["train_config"]["model"]["vocab_size"] == 257 and config["eval_tokens_per_length"] == 1024
    manifest = json.loads((dataset / "manifest.json").read_text())
    assert config["dataset"]["fingerprint"] == manifest["fingerprint"]  # where it ran and on which data
    assert config["hardware"].startswith("CPU ") and config["versions"]["torch"] and config["commit"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["step"] == 6 and summary["final_val"] == val[-1]["loss"]
    assert summary["unigram_entropy_val"] > 2.0
    assert (run / "loss.png").stat().st_size > 1000
    _model, cfg, extra = load_checkpoint(run)
    assert extra["step"] == 6 and cfg.method == "si-p-rope" and extra["extra"]["tokenizer"]["type"] == "bytes"

    assert main(["generate", "--checkpoint", str(run), "--prompt", "def f(", "--max-new-tokens", "5",
                 "--greedy", "--json"]) == 0
    gen = json.loads(capsys.readouterr().out)
    assert gen["step"] == 6 and len(gen["samples"]) == 1


def test_missing_data_is_prepared_from_the_source(corpus, tmp_path):
    data = tmp_path / "fresh-data"
    code = main(["train", *TINY, "--data", str(data), "--data-source", str(corpus), "--out", str(tmp_path / "r"),
                 "--steps", "1", "--eval-multipliers", "1"])
    assert code == 0 and (data / "manifest.json").is_file()


def test_an_existing_run_needs_resume_or_overwrite(dataset, tmp_path, capsys):
    args = ["train", *TINY, "--data", str(dataset), "--out", str(tmp_path / "r"), "--steps", "1"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 1  # the CLI reports the FileExistsError as one line
    err = capsys.readouterr().err
    assert "--resume" in err and "Traceback" not in err
    assert main([*args, "--overwrite"]) == 0
    before = records(tmp_path / "r", "train")
    assert main([*args, "--resume"]) == 0  # a finished run: nothing to train, its results are reported again
    assert records(tmp_path / "r", "train") == before
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["checkpoint"].endswith("step_000001")


def test_a_killed_run_resumes_bit_identically(dataset, tmp_path):
    common = ["--data", str(dataset), "--steps", "60", "--log-every", "1", "--eval-every", "20", "--ckpt-every", "5",
              "--method", "logn-p-rope"]
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    subprocess.run(train_cli(*common, "--out", str(whole)), env=ENV, check=True, capture_output=True)

    proc = subprocess.Popen(train_cli(*common, "--out", str(broken)), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (broken / "checkpoints" / "step_000005" / "COMPLETE").exists():
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (broken / "summary.json").exists(), "the run finished before it was killed"
    killed_at = len(records(broken, "train"))
    assert killed_at < 60

    resumed = subprocess.run(train_cli(*common, "--out", str(broken), "--resume"), env=ENV, capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
    assert records(broken, "train") == [
        {**r, "tokens_per_s": b["tokens_per_s"], "seconds": b["seconds"]}
        for r, b in zip(records(whole, "train"), records(broken, "train"))]  # every loss bit-identical
    assert records(broken, "val") == records(whole, "val")
    assert len(records(broken, "train")) == 60


def test_sigterm_saves_a_checkpoint_and_stops(dataset, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(train_cli("--data", str(dataset), "--out", str(run), "--steps", "100000",
                                      "--log-every", "1", "--eval-every", "100000", "--ckpt-every", "100000"),
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not ((run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text()):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM" in out
    _model, _cfg, extra = load_checkpoint(run)
    assert 1 <= extra["step"] < 100000
    assert json.loads((run / "summary.json").read_text())["stopped_by"] == "SIGTERM"


def test_torchrun_on_two_cpu_ranks_matches_one_process(dataset, tmp_path):
    common = ["--data", str(dataset), "--steps", "3", "--log-every", "1", "--eval-every", "3", "--ckpt-every", "2"]
    one, two = tmp_path / "one", tmp_path / "two"
    subprocess.run(train_cli(*common, "--out", str(one)), env=ENV, check=True, capture_output=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "siattn",
           "train", *TINY, *common, "--out", str(two), "--device", "cpu"]
    try:
        done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired as e:  # say where it stopped, not only that it did
        out, err = (x.decode() if isinstance(x, bytes) else x or "" for x in (e.stdout, e.stderr))
        pytest.fail(f"torchrun still running after 600 s:\n{out[-2000:]}\n{err[-3000:]}")
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads((two / "config.json").read_text())
    assert config["world_size"] == 2 and config["micro_batch_size"] == 2
    for a, b in zip(records(one, "train"), records(two, "train"), strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3)
    for a, b in zip(records(one, "val"), records(two, "val"), strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3)
    # the two-rank run's step-2 checkpoint resumes in one process and trains step 3 as the one-process run did
    three = tmp_path / "three"
    assert main(["train", *TINY, *common, "--out", str(three), "--resume",
                 str(two / "checkpoints" / "step_000002")]) == 0
    assert records(three, "train")[-1]["step"] == 3
    assert records(three, "train")[-1]["loss"] == pytest.approx(records(one, "train")[-1]["loss"], rel=1e-3)


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_mirrors_the_metrics_and_a_resume_drops_the_steps_it_redoes(dataset, tmp_path):
    pytest.importorskip("tensorboard")
    run = tmp_path / "run"
    common = ["--data", str(dataset), "--out", str(run), "--log-every", "1", "--eval-every", "2", "--tensorboard"]
    assert main(["train", *TINY, *common, "--steps", "4", "--ckpt-every", "2"]) == 0
    # a crash after step 4's checkpoint... then resume from step 2: steps 3-4 are written again, once each
    assert main(["train", *TINY, *common, "--steps", "6", "--resume", str(run / "checkpoints" / "step_000002")]) == 0
    scalars = tensorboard_scalars(run / "tensorboard")
    train = records(run, "train")
    assert [s for s, _ in scalars["train/loss"]] == [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    for (_, value), r in zip(scalars["train/loss"], train, strict=True):
        assert value == pytest.approx(r["loss"], rel=1e-6)
    val = records(run, "val")
    for length in ("32", "128"):
        assert [s for s, _ in scalars[f"val/loss@{length}"]] == [r["step"] for r in val] == [2, 4, 6]
        assert [v for _, v in scalars[f"val/loss@{length}"]] == pytest.approx([r["loss"][length] for r in val])
    assert {"train/lr_mult", "train/tokens_per_s"} <= set(scalars)


def test_validation_scores_a_multiple_of_every_length_not_only_the_longest():
    from siattn.training.config import resolve_config
    from siattn.training.validation import eval_token_count

    config = resolve_config("cpu-tiny", seq_len=32, eval_multipliers=(2, 3), eval_tokens=1100)
    n = eval_token_count(config, val_tokens=10_000)
    assert n == 960 and n % 64 == 0 and n % 96 == 0  # lcm(64, 96) = 192: 5 × 192 (the longest alone: 1056)
    with pytest.raises(ValueError, match="lcm 192"):
        eval_token_count(config, val_tokens=150)
