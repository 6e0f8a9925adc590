"""``siattn eval`` and ``siattn needle`` end to end on a tiny trained checkpoint (CPU, seconds)."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from siattn.cli import main


def run(*argv: str) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def eval_out(short_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    assert run("eval", "--checkpoint", short_checkpoint, "--out", out, "--tokens", 2100, "--no-progress") == 0
    return out


def test_eval_scores_the_same_tokens_at_1_4_and_16x_and_stays_finite(eval_out):
    res = json.loads((eval_out / "eval.json").read_text())
    (entry,) = res["checkpoints"].values()
    assert entry["train_length"] == 64 and sorted(map(int, entry["results"])) == [64, 256, 1024]
    assert res["tokens"] == 2048  # --tokens 2100 rounded down to a multiple of every length
    for r in entry["results"].values():
        assert r["tokens"] == 2048 and math.isfinite(r["loss"])
        assert sum(r["positions"]["count"]) == 2048 and r["positions"]["end"][-1] == r["length"]


def test_eval_writes_a_markdown_table_and_both_plots(eval_out):
    table = (eval_out / "eval.md").read_text()
    assert "| checkpoint | method | train length | 64 (1×) | 256 (4×) | 1k (16×) |" in table
    assert (eval_out / "loss-by-position.png").stat().st_size > 1000
    assert (eval_out / "loss-by-length.png").stat().st_size > 1000


def test_eval_keeps_finished_lengths_when_run_again(eval_out, short_checkpoint, monkeypatch):
    import siattn.evaluation.loss_by_length as lbl  # the module

    before = json.loads((eval_out / "eval.json").read_text())
    monkeypatch.setattr(lbl, "loss_at_length", lambda *a, **k: pytest.fail("recomputed a finished length"))
    assert run("eval", "--checkpoint", short_checkpoint, "--out", eval_out, "--tokens", 2100,
               "--no-progress") == 0
    after = json.loads((eval_out / "eval.json").read_text())
    assert after["checkpoints"] == before["checkpoints"]


def test_needle_finetunes_then_reports_accuracy_by_length_and_depth(checkpoint, tmp_path, monkeypatch):
    args = ("needle", "--checkpoint", checkpoint, "--out", tmp_path, "--multipliers", 1, 2, "--trials", 2,
            "--warmup", 1, "--constant", 1, "--decay", 1, "--batch-size", 2, "--no-progress",
            "--save-finetuned")
    assert run(*args) == 0
    res = json.loads((tmp_path / "needle.json").read_text())
    (entry,) = res["checkpoints"].values()
    assert list(entry["stages"]) == ["finetuned"]
    stage = copy.deepcopy(entry["stages"]["finetuned"])
    assert len(stage["finetune"]["losses"]) == 3
    assert sorted(map(int, stage["lengths"])) == [384, 768]
    for r in stage["lengths"].values():
        assert r["trials"] == 2 and r["needles"] == 6 and 0.0 <= r["accuracy"] <= 1.0
        assert all(len(t["correct"]) == 3 for t in r["records"])
        assert 0.0 < r["answer_loss"] < 20.0 and all("answer_loss" in t for t in r["records"])
    report = (tmp_path / "needle.md").read_text()
    assert "| checkpoint | stage | 384 (1×) | 768 (2×) |" in report and "Answer loss" in report
    assert (tmp_path / "needle-heatmap-finetuned.png").stat().st_size > 1000
    assert (tmp_path / "finetuned-needle" / "si-p-rope" / "COMPLETE").exists()

    import siattn.evaluation.needle as needle

    # everything done: neither fine-tuning nor decoding runs again
    monkeypatch.setattr(needle, "finetune", lambda *a, **k: pytest.fail("fine-tuned again"))
    with monkeypatch.context() as m:
        m.setattr(needle, "evaluate_length", lambda *a, **k: pytest.fail("re-evaluated a length"))
        assert run(*args) == 0
    assert json.loads((tmp_path / "needle.json").read_text())["checkpoints"] == res["checkpoints"]

    # one length missing: the saved fine-tuned weights are reused and only that length is decoded again
    del res["checkpoints"]["si-p-rope"]["stages"]["finetuned"]["lengths"]["768"]
    (tmp_path / "needle.json").write_text(json.dumps(res))
    assert run(*args) == 0
    again = json.loads((tmp_path / "needle.json").read_text())["checkpoints"]["si-p-rope"]
    again = again["stages"]["finetuned"]
    assert again["lengths"]["384"] == stage["lengths"]["384"]
    assert again["lengths"]["768"]["records"] == stage["lengths"]["768"]["records"]


def test_passkey_is_zero_shot_by_default(checkpoint, tmp_path):
    assert run("needle", "--task", "passkey", "--checkpoint", checkpoint, "--out", tmp_path, "--lengths", 384,
               "--trials", 3, "--no-progress") == 0
    res = json.loads((tmp_path / "passkey.json").read_text())
    (entry,) = res["checkpoints"].values()
    assert list(entry["stages"]) == ["zero-shot"]
    assert entry["stages"]["zero-shot"]["lengths"]["384"]["trials"] == 3
    assert (tmp_path / "passkey.md").exists() and (tmp_path / "passkey-heatmap-zero-shot.png").exists()


def test_needle_measures_attention_on_the_needles_when_asked_and_keeps_it_on_resume(checkpoint, tmp_path):
    args = ("needle", "--task", "passkey", "--checkpoint", checkpoint, "--out", tmp_path, "--lengths", 384,
            "--trials", 2, "--attention-trials", 2, "--no-progress")
    assert run(*args) == 0
    stage = json.loads((tmp_path / "passkey.json").read_text())["checkpoints"]
    (entry,) = stage.values()
    attention = entry["stages"]["zero-shot"]["attention"]
    assert attention["config"]["trials"] == 2 and list(attention["lengths"]) == ["384"]
    cell = attention["lengths"]["384"]
    assert all(0.0 <= m <= 1.0 for row in cell["mass"] for m in row) and 0.0 < cell["uniform"] < 1.0
    label = next(iter(stage))
    assert (tmp_path / f"passkey-attention-{label}-zero-shot.png").read_bytes()[:4] == b"\x89PNG"
    assert run(*args) == 0  # every length kept: the measurement is kept with it
    (again,) = json.loads((tmp_path / "passkey.json").read_text())["checkpoints"].values()
    assert again["stages"]["zero-shot"]["attention"] == attention


def test_load_for_eval_sets_the_training_matmul_precision(checkpoint, monkeypatch):
    """Every evaluation of a checkpoint runs with the float32 matmul precision training used (TF32 on CUDA), also
    in a fresh process where training did not run first."""
    import siattn.evaluation.checkpoints as checkpoints

    devices = []
    monkeypatch.setattr(checkpoints, "use_tf32", devices.append)
    checkpoints.load_for_eval(checkpoint, "cpu")
    assert [torch.device(d) for d in devices] == [torch.device("cpu")]
