"""Checkpoint retention and failed writes: pruning follows the run's own line, verifies what it keeps and never
deletes the last good checkpoint; a failed write (a full disk) leaves no temporary folder behind."""

from __future__ import annotations

import errno
import sys
from pathlib import Path

import pytest
import torch

from siattn.model import GPT
from siattn.training import (
    CheckpointError,
    build_optimizer,
    read_checkpoint_state,
    resolve_checkpoint,
    resolve_config,
    save_checkpoint,
    save_run_checkpoint,
)

CFG = resolve_config("cpu-tiny", n_layer=1, n_embd=32, n_head=2, head_dim=16, seq_len=16, vocab_size=40)
CKPT = sys.modules[save_checkpoint.__module__]  # the checkpoint module, wherever it lives


@pytest.fixture(scope="module")
def model_and_opt():
    torch.manual_seed(0)
    model = GPT(CFG.model)
    return model, build_optimizer(model, CFG)


def save(run: Path, step: int, model_and_opt, **kw) -> Path:
    model, opt = model_and_opt
    return save_run_checkpoint(run, step, model=model, config=CFG.model, optimizer=opt, **kw)


def corrupt(checkpoint: Path) -> None:
    file = checkpoint / "model.safetensors"
    data = bytearray(file.read_bytes())
    data[-10] ^= 0xFF
    file.write_bytes(bytes(data))


def steps_on_disk(run: Path) -> list[int]:
    return sorted(int(p.name[5:]) for p in (run / "checkpoints").glob("step_*"))


def hidden(run: Path) -> list[str]:
    return sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("."))


def test_resume_from_an_older_step_prunes_only_its_own_line(tmp_path, model_and_opt):
    run = tmp_path / "run"
    save(run, 200, model_and_opt, keep=2)
    save(run, 400, model_and_opt, keep=2)
    corrupt(run / "checkpoints" / "step_000400")
    # resumed from step 200: this process writes 300; step 400 belongs to the abandoned line
    save(run, 300, model_and_opt, keep=2, base_step=200, written=[300])
    assert steps_on_disk(run) == [200, 300, 400]
    save(run, 350, model_and_opt, keep=2, base_step=200, written=[300, 350])
    assert steps_on_disk(run) == [300, 350, 400]  # 200 pruned (two good newer ones); 400 is not this line's
    assert (run / "checkpoints" / "LATEST").read_text().strip() == "step_000350"


def test_retention_keeps_verified_checkpoints_only_and_never_the_last_good_one(tmp_path, model_and_opt,
                                                                               monkeypatch):
    run = tmp_path / "run"
    save(run, 1, model_and_opt, keep=1)
    real_save = CKPT.save_checkpoint

    def save_then_corrupt(path, **kw):  # a disk that returns other bytes than were written
        out = real_save(path, **kw)
        corrupt(out)
        return out

    monkeypatch.setattr(CKPT, "save_checkpoint", save_then_corrupt)
    save(run, 2, model_and_opt, keep=1)
    save(run, 3, model_and_opt, keep=1)
    assert 1 in steps_on_disk(run)
    read_checkpoint_state(run / "checkpoints" / "step_000001")  # still good
    with pytest.raises(CheckpointError, match="corrupt"):
        read_checkpoint_state(run / "checkpoints" / "step_000003")


def test_incomplete_checkpoints_do_not_count_as_kept(tmp_path, model_and_opt):
    run = tmp_path / "run"
    save(run, 1, model_and_opt, keep=1)
    save(run, 2, model_and_opt, keep=1)
    (run / "checkpoints" / "step_000002" / "COMPLETE").unlink()
    save(run, 3, model_and_opt, keep=2)
    assert steps_on_disk(run) == [2, 3]  # 1 was pruned before; only one good checkpoint so far
    save(run, 4, model_and_opt, keep=2)
    assert steps_on_disk(run) == [3, 4]  # two good ones: the incomplete 2 goes


def test_full_disk_leaves_no_temporary_folder_and_keeps_the_previous_checkpoint(tmp_path, model_and_opt,
                                                                                  monkeypatch):
    run = tmp_path / "run"
    save(run, 1, model_and_opt, keep=2)
    calls = {"n": 0}
    real = CKPT.save_file

    def full_disk(tensors, filename, metadata=None):
        calls["n"] += 1
        if calls["n"] == 2:  # the weights went through; the optimizer state does not fit
            raise OSError(errno.ENOSPC, "No space left on device", str(filename))
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(CKPT, "save_file", full_disk)
    with pytest.raises(OSError) as info:
        save(run, 2, model_and_opt, keep=2)
    assert info.value.errno == errno.ENOSPC
    assert hidden(run) == []
    assert steps_on_disk(run) == [1]
    assert (run / "checkpoints" / "LATEST").read_text().strip() == "step_000001"
    read_checkpoint_state(run)


def test_temporary_folder_of_a_killed_writer_is_removed_by_the_next_save(tmp_path, model_and_opt):
    run = tmp_path / "run"
    save(run, 1, model_and_opt)
    dead_pid = 2**22 + 4321  # above the default pid_max: no such process
    (run / "checkpoints" / f".step_000002.tmp-{dead_pid}").mkdir()
    (run / "checkpoints" / f".step_000002.tmp-{dead_pid}" / "model.safetensors").write_bytes(b"half")
    (run / "checkpoints" / f".LATEST.tmp-{dead_pid}").write_text("step_000002")
    save(run, 2, model_and_opt)
    assert hidden(run) == []
    assert steps_on_disk(run) == [1, 2]


def test_a_save_killed_while_replacing_the_latest_folder_resumes_from_the_newest_complete_one(
        tmp_path, model_and_opt, capsys):
    """Re-saving the step LATEST names moves the old folder aside before renaming the new one in; a kill between
    the two leaves LATEST naming a missing folder. The run's newest complete checkpoint is then its state."""
    from siattn.training.checkpointing import temporary_name
    from siattn.training.trainer import find_checkpoint

    run = tmp_path / "run"
    for step in (1, 2):
        save(run, step, model_and_opt, keep=3)
    ckpts = run / "checkpoints"
    (ckpts / "step_000002").rename(temporary_name(ckpts / "step_000002", "old"))  # the killed save's first move
    assert resolve_checkpoint(run) == ckpts / "step_000001"
    assert "names 'step_000002', which is missing" in capsys.readouterr().err
    assert find_checkpoint(run) == ckpts / "step_000001"
    read_checkpoint_state(run)


# ---- through the trainer ----


def test_trainer_resumed_from_an_older_step_keeps_it_and_leaves_the_abandoned_line(tmp_path, dataset):
    from siattn.training.trainer import train

    def config(**kw):
        return resolve_config("cpu-tiny", data=str(dataset), seq_len=16, batch_size=2, n_layer=1, n_embd=32,
                              n_head=1, head_dim=32, eval_tokens=32, eval_multipliers=(1,), eval_every=100,
                              keep_checkpoints=2, out=str(tmp_path / "run"), **kw)

    quiet = {"progress": False, "log": lambda *_: None}
    train(config(steps=4, ckpt_every=2), **quiet)
    ckpts = tmp_path / "run" / "checkpoints"
    assert steps_on_disk(tmp_path / "run") == [2, 4]
    corrupt(ckpts / "step_000004")
    train(config(steps=3, ckpt_every=1), resume=ckpts / "step_000002", **quiet)
    assert steps_on_disk(tmp_path / "run") == [2, 3, 4]
    read_checkpoint_state(ckpts / "step_000002")
    assert (ckpts / "LATEST").read_text().strip() == "step_000003"
