"""The reproduce summary reads the eval / needle / passkey JSON and lays them out like the paper's table."""

import json

from siattn.recipes.reproduce import summarize


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def test_summary_table_has_loss_and_accuracy_per_length(tmp_path):
    lengths = {"512": {"loss": 1.25}, "2048": {"loss": 1.5}}
    _write(tmp_path / "eval" / "eval.json", {"checkpoints": {"rope": {"results": lengths}}})
    needle = {"stages": {"finetuned": {"lengths": {"512": {"accuracy": 0.5}, "2048": {"accuracy": 0.25}}}}}
    _write(tmp_path / "needle" / "needle.json", {"checkpoints": {"rope": needle}})
    table = summarize(tmp_path, ["rope", "alibi"])  # alibi has no results: no row
    lines = table.strip().splitlines()
    assert lines[0] == ("| method | val@1× | val@4× | needle@1× | needle@4× | passkey@1× | passkey@4× |")
    assert lines[2] == "| rope | 1.250 | 1.500 | 0.500 | 0.250 | — | — |"
    assert len(lines) == 3


def test_summary_without_results(tmp_path):
    assert summarize(tmp_path, ["rope"]) == "no results yet\n"
