"""``siattn bench accuracy`` on CPU: the small peaked suite for the chunked backend, as JSON and Markdown."""

import json

from siattn.cli import main


def test_bench_accuracy_writes_rows_within_the_bound_for_chunked(tmp_path, capsys):
    out, md = tmp_path / "acc.json", tmp_path / "acc.md"
    code = main(["bench", "accuracy", "--device", "cpu", "--suite", "small", "--backends", "chunked,reference",
                 "--seeds", "1", "--transforms", "scale-invariant", "--out", str(out), "--md", str(md)])
    assert code == 0
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert result["commit"] and result["hardware"].startswith("CPU ") and result["versions"]["torch"]
    assert len(rows) == 3 * 2  # three small cases × two backends
    assert all(row["failures"] == [] for row in rows), rows
    assert "6 of 6 rows within the bound" in md.read_text()


def test_bench_accuracy_refuses_cuda_without_it(capsys):
    import torch

    if torch.cuda.is_available():
        return
    assert main(["bench", "accuracy", "--suite", "small"]) == 2
    assert "device is cuda but CUDA is not available" in capsys.readouterr().err
