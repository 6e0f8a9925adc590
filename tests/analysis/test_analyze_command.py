"""`siattn analyze theory` writes JSON, Markdown and PNG figures."""

from __future__ import annotations

import json

import pytest

from siattn.cli import main


def test_analyze_theory_writes_json_markdown_and_figures(tmp_path):
    out = tmp_path / "theory"
    rc = main(["analyze", "theory", "--out", str(out), "--samples", "4", "--max-n", "1e3", "--seed", "3"])
    assert rc == 0
    data = json.loads((out / "theory.json").read_text())
    assert data["config"]["samples"] == 4 and data["config"]["max_n"] == 1000 and data["config"]["seed"] == 3
    assert set(data["fits"]) == {"range_entropy", "global_entropy", "last_k_mass"}
    assert "Range entropy" in (out / "theory.md").read_text()
    for name in data["figures"]:
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert len(data["figures"]) == 3


def test_analyze_needs_a_sub_command(capsys):
    with pytest.raises(SystemExit):
        main(["analyze"])


def test_bad_option_is_reported_not_raised(tmp_path, capsys):
    assert main(["analyze", "theory", "--out", str(tmp_path), "--samples", "1"]) == 2
    assert "samples must be >= 2" in capsys.readouterr().out


@pytest.fixture(scope="module")
def uniform_checkpoint(tmp_path_factory):
    """A run folder holding a NoPE model whose queries are zero (every row attends uniformly), and its data."""
    import torch

    from siattn.data import prepare_dataset
    from siattn.model import GPT
    from siattn.training import resolve_config, save_run_checkpoint

    root = tmp_path_factory.mktemp("uniform")
    (root / "corpus").mkdir()
    for i in range(6):
        (root / "corpus" / f"d{i}.txt").write_text("".join(f"line {j} of document {i}.\n" for j in range(300)))
    data = prepare_dataset(str(root / "corpus"), root / "data", tokenizer="bytes", val_fraction=0.5,
                           progress=False).parent
    cfg = resolve_config("cpu-tiny", seq_len=384, n_layer=2, n_embd=32, head_dim=16, method="nope", data=str(data))
    torch.manual_seed(0)
    model = GPT(cfg.model)
    with torch.no_grad():
        for block in model.transformer.h:
            block.attn.c_q.weight.zero_()
    save_run_checkpoint(root / "run", 1, model=model.eval(), config=cfg.model, train_config=cfg)
    return root / "run"


@pytest.mark.parametrize("task", ["needle", "passkey"])
def test_analyze_needle_finds_the_uniform_share_where_attention_is_uniform(uniform_checkpoint, tmp_path, task):
    out = tmp_path / "attention"
    rc = main(["analyze", "needle", "--checkpoint", str(uniform_checkpoint), "--task", task, "--multipliers", "1",
               "2", "--trials", "2", "--out", str(out)])
    assert rc == 0
    summary = json.loads((out / f"{task}-attention.json").read_text())
    (result,) = summary["checkpoints"].values()
    assert sorted(map(int, result["lengths"])) == [384, 768] and result["config"]["trials"] == 2
    for cell in result["lengths"].values():  # layers × heads, each the needle's share of the keys
        assert len(cell["mass"]) == 2 and all(m == pytest.approx(cell["uniform"], rel=1e-4)
                                              for row in cell["mass"] for m in row)
    assert summary["commit"] and summary["hardware"].startswith("CPU ")
    assert "| uniform share |" in (out / f"{task}-attention.md").read_text()
    for png in (out / f"{task}-attention.png", out / "nope" / f"{task}-attention-maps.png"):
        assert png.read_bytes()[:4] == b"\x89PNG"
