"""Data pipeline off the happy path: undecodable bytes, FIFOs, interrupted runs, stale temporary folders,
mistyped dataset paths and dataset paths recorded in checkpoints."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from siattn.cli import main as cli_main
from siattn.data import DataError, TokenDataset, prepare_dataset
from siattn.data.shards import ShardWriter

BAD = b"latin-1 caf\xe9, a lone continuation \x80, and \xff\xfe\x00 at the end\n"


def prepare(source, out, **kw):
    kw.setdefault("progress", False)
    return prepare_dataset(str(source), out, **kw)


def all_document_bytes(ds: TokenDataset) -> list[bytes]:
    """Every document of both splits as raw bytes (bytes tokenizer: ids 0..255 are the bytes themselves)."""
    docs = []
    for split in ("train", "val"):
        ids = ds.split(split).get(0, len(ds.split(split)))
        cuts = [*np.flatnonzero(ids == ds.eod_id).tolist(), len(ids)]
        docs += [bytes(ids[a + 1:b].astype(np.uint8).tolist()) for a, b in itertools.pairwise(cuts)]
    return docs


def corpus_with_bad_file(root: Path) -> Path:
    root.mkdir()
    for i in range(6):
        (root / f"good{i}.txt").write_text(f"good document {i}\n" * 5)
    (root / "bad.txt").write_bytes(BAD)
    return root


@contextlib.contextmanager
def alarm(seconds: int):
    """Fail instead of hanging: SIGALRM after ``seconds``."""
    def _raise(*_):
        raise TimeoutError(f"still running after {seconds} s (a hang)")

    old = signal.signal(signal.SIGALRM, _raise)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_bytes_tokenizer_keeps_every_byte_of_a_non_utf8_file(tmp_path):
    src = corpus_with_bad_file(tmp_path / "src")
    prepare(src, tmp_path / "out", val_fraction=0.2)
    docs = all_document_bytes(TokenDataset(tmp_path / "out"))
    assert BAD in docs
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["stats"]["decode_errors"] == 0  # nothing was decoded, so nothing was lost


def test_bytes_tokenizer_max_bytes_cuts_raw_bytes(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(BAD)
    (src / "b.txt").write_bytes(BAD[::-1])
    prepare(src, tmp_path / "out", val_fraction=0.0, max_bytes=len(BAD) + 5)
    assert sorted(all_document_bytes(TokenDataset(tmp_path / "out"))) == sorted([BAD, BAD[::-1][:5]])


def test_text_tokenizer_reports_decode_errors_in_manifest_and_output(tmp_path, capsys):
    src = corpus_with_bad_file(tmp_path / "src")
    rc = cli_main(["data", "prepare", str(src), "--out", str(tmp_path / "out"), "--tokenizer", "bpe:300",
                   "--val-fraction", "0.2", "--no-progress"])
    assert rc == 0
    stats = json.loads((tmp_path / "out" / "manifest.json").read_text())["stats"]
    assert stats["decode_errors"] == 1
    assert stats["decode_error_files"] == ["bad.txt"]
    err = capsys.readouterr().err
    assert "1 file" in err and "bad.txt" in err and "UTF-8" in err


def test_fifo_in_source_folder_is_skipped_with_a_note(tmp_path, capsys):
    src = corpus_with_bad_file(tmp_path / "src")
    os.mkfifo(src / "pipe.txt")
    with alarm(60):
        rc = cli_main(["data", "prepare", str(src), "--out", str(tmp_path / "out"), "--no-progress"])
    assert rc == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert "pipe.txt" not in [f["path"] for f in manifest["source"]["files"]]
    assert manifest["source"]["skipped"] == ["pipe.txt"]
    err = capsys.readouterr().err
    assert "pipe.txt" in err and "not a regular file" in err


def test_interrupted_prepare_leaves_nothing_behind(tmp_path, monkeypatch):
    src = corpus_with_bad_file(tmp_path / "src")
    out = tmp_path / "out"

    def interrupted(self, arr):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(ShardWriter, "add", interrupted)
        with pytest.raises(KeyboardInterrupt):
            prepare(src, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    prepare(src, out)
    assert TokenDataset(out).manifest["stats"]["documents"] == 7


def test_stale_temporary_folder_of_a_killed_prepare_is_removed(tmp_path):
    src = corpus_with_bad_file(tmp_path / "src")
    out = tmp_path / "out"
    # what a SIGKILL'ed run of another process leaves: a half-written temporary folder (and a moved-aside one)
    dead_pid = 2**22 + 12345  # above the default pid_max: no such process
    for name in (f".out.tmp-{dead_pid}", f".out.old-{dead_pid}"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "train_000000.npy").write_bytes(b"\x93NUMPY partial")
    prepare(src, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]
    assert len(TokenDataset(out).train) > 0


def test_half_written_output_folder_is_not_taken_for_a_dataset(tmp_path):
    src = corpus_with_bad_file(tmp_path / "src")
    out = tmp_path / "out"
    out.mkdir()
    (out / "train_000000.npy").write_bytes(b"partial")
    with pytest.raises(DataError, match="not a prepared dataset"):
        prepare(src, out)


# ---- --data ----

def test_train_with_a_mistyped_data_path_is_an_error_naming_data(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = cli_main(["train", "--preset", "cpu-tiny", "--data", "data_cache/stdlib-bytse", "--steps", "1",
                   "--no-progress", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2
    assert "--data" in err and "stdlib-bytse" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "data_cache").exists()


def test_api_with_another_data_path_does_not_prepare_the_preset_source(tmp_path):
    from siattn.training.config import resolve_config

    assert resolve_config("cpu-tiny").data_source == "stdlib"  # the preset's own cache is prepared
    assert resolve_config("cpu-tiny", data=str(tmp_path / "elsewhere")).data_source is None
    assert resolve_config("cpu-tiny", data=str(tmp_path / "x"), data_source="stdlib").data_source == "stdlib"


def test_checkpoint_records_the_dataset_path_absolute(tmp_path, monkeypatch):
    """`siattn eval` from another directory finds the data the run was trained on."""
    from siattn.training.checkpointing import read_checkpoint_state
    from siattn.training.config import resolve_config
    from siattn.training.trainer import train

    work = tmp_path / "work"
    work.mkdir()
    src = corpus_with_bad_file(tmp_path / "src")
    prepare(src, work / "data", val_fraction=0.3)
    monkeypatch.chdir(work)
    config = resolve_config("cpu-tiny", data="data", steps=1, seq_len=16, batch_size=2, n_layer=1, n_embd=32,
                            n_head=1, head_dim=32, eval_tokens=32, eval_multipliers=(1,), eval_every=1,
                            out=str(tmp_path / "run"))
    train(config, progress=False, log=lambda *_: None)
    _, state = read_checkpoint_state(tmp_path / "run")
    assert Path(state["train_config"]["data"]).is_absolute()
    assert Path(state["train_config"]["data"]) == (work / "data").resolve()
