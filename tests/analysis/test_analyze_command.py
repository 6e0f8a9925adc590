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
