"""Checkpoints: round trips, atomic layout, and clear errors for corrupt, truncated or incomplete ones."""

from __future__ import annotations

import json
import os

import pytest
import torch

from siattn.model import GPT
from siattn.training import (
    CheckpointError,
    build_optimizer,
    load_checkpoint,
    load_training_state,
    resolve_checkpoint,
    resolve_config,
    save_checkpoint,
    save_run_checkpoint,
)

CFG = resolve_config("cpu-tiny", method="logn-p-rope", n_layer=2, n_embd=32, n_head=2, head_dim=16, seq_len=16,
                     vocab_size=40)


def trained(steps: int = 2, seed: int = 0):
    torch.manual_seed(seed)
    model = GPT(CFG.model)
    opt = build_optimizer(model, CFG)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randint(0, 40, (4, 17), generator=g)
        model(x[:, :-1], x[:, 1:])[1].backward()
        opt.step()
        opt.zero_grad()
    return model, opt


@pytest.fixture
def ckpt(tmp_path):
    model, opt = trained()
    path = save_run_checkpoint(tmp_path / "run", 2, model=model, config=CFG.model, optimizer=opt, train_config=CFG,
                               loader_state={"epoch": 0, "step": 2}, metrics={"train_loss": 1.5})
    return path, model


def test_load_checkpoint_rebuilds_the_same_model(ckpt):
    path, model = ckpt
    loaded, config, extra = load_checkpoint(path.parent.parent)  # the run folder resolves to LATEST
    assert config == CFG.model and extra["step"] == 2 and extra["metrics"] == {"train_loss": 1.5}
    assert not loaded.training
    x = torch.randint(0, 40, (2, 16))
    torch.testing.assert_close(loaded(x)[0], model.eval()(x)[0], atol=0, rtol=0)
    assert extra["train_config"]["model"]["method"] == "logn-p-rope"


def test_resumed_optimizer_state_continues_identically(ckpt, tmp_path):
    path, _ = ckpt
    model_a, opt_a = trained(steps=2)
    model_b = GPT(CFG.model)
    opt_b = build_optimizer(model_b, CFG)
    state = load_training_state(path, model_b, opt_b)
    assert state["loader"] == {"epoch": 0, "step": 2}
    x = torch.randint(0, 40, (4, 17))
    for model, opt in ((model_a, opt_a), (model_b, opt_b)):
        model(x[:, :-1], x[:, 1:])[1].backward()
        opt.step()
    for (n, a), b in zip(model_a.named_parameters(), model_b.parameters()):
        assert torch.equal(a, b), n


def test_layout_is_complete_and_old_checkpoints_are_pruned(tmp_path):
    model, opt = trained(steps=1)
    for step in (1, 2, 3):
        save_run_checkpoint(tmp_path, step, keep=2, model=model, config=CFG.model, optimizer=opt)
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["LATEST", "step_000002", "step_000003"]
    assert (folder / "LATEST").read_text().strip() == "step_000003"
    assert {p.name for p in (folder / "step_000003").iterdir()} == {
        "model.safetensors", "optimizer.safetensors", "state.json", "COMPLETE"}
    assert resolve_checkpoint(tmp_path) == folder / "step_000003"
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_saving_over_an_existing_checkpoint_replaces_it(tmp_path):
    model, _ = trained(steps=1)
    save_checkpoint(tmp_path / "c", model=model, config=CFG.model, step=1)
    save_checkpoint(tmp_path / "c", model=model, config=CFG.model, step=5)
    assert load_checkpoint(tmp_path / "c")[2]["step"] == 5


def test_truncated_weights_give_a_clear_error(ckpt):
    path, _ = ckpt
    file = path / "model.safetensors"
    with open(file, "r+b") as f:
        f.truncate(file.stat().st_size // 2)
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)


def test_corrupt_bytes_give_a_clear_error(ckpt):
    path, _ = ckpt
    file = path / "model.safetensors"
    data = bytearray(file.read_bytes())
    data[-10] ^= 0xFF  # same size, one flipped byte inside a weight
    file.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


def test_unverified_load_still_refuses_unreadable_safetensors(ckpt):
    path, _ = ckpt
    file = path / "model.safetensors"
    file.write_bytes(b"\x00" * file.stat().st_size)
    with pytest.raises(CheckpointError, match="cannot be read as safetensors"):
        load_checkpoint(path, verify=False)


def test_missing_marker_means_incomplete(ckpt):
    path, _ = ckpt
    os.remove(path / "COMPLETE")
    with pytest.raises(CheckpointError, match="incomplete"):
        load_checkpoint(path)


def test_corrupt_state_json_and_foreign_folders_are_refused(ckpt, tmp_path):
    path, _ = ckpt
    (path / "state.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)
    (path / "state.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="not a siattn checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no such"):
        load_checkpoint(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither a checkpoint"):
        load_checkpoint(tmp_path / "empty")


def test_weights_of_another_shape_are_refused(ckpt):
    path, _ = ckpt
    state = json.loads((path / "state.json").read_text())
    state["model_config"]["n_embd"] = 48
    (path / "state.json").write_text(json.dumps(state))
    with pytest.raises(CheckpointError, match="does not match the model"):
        load_checkpoint(path)
