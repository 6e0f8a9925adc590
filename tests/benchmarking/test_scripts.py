"""The benchmark scripts under benchmarks/ run (on CPU where they can) and write what their docstrings promise."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hf_bridge_accuracy_cpu_run_writes_every_layout(tmp_path):
    pytest.importorskip("transformers")
    script = load_script("hf_bridge_accuracy")
    out = tmp_path / "bridge"
    assert script.main(["--device", "cpu", "--length", "40", "--layers", "1", "--seeds", "1", "--out", str(out)]) == 0
    result = json.loads((out / "hf_bridge_accuracy.json").read_text())
    assert result["auto_backend"] == "chunked"
    assert [r["layout"] for r in result["rows"]] == ["causal", "left-padded", "packed"]
    for row in result["rows"]:  # bf16 model: errors of a few 1e-3, never zero, and the fast path within 2x
        assert 0 < row["logits_fast"] < 0.05 and 0 < row["grads_fast"] < 0.05 and row["pass"]
    assert (out / "hf_bridge_accuracy.md").read_text().count("| yes |") == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown without CUDA")
def test_row_term_cost_says_it_needs_cuda(capsys):
    assert load_script("row_term_cost").main([]) == 2
    assert "needs CUDA" in capsys.readouterr().err
