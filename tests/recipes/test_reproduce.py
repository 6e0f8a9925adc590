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


def test_fine_tuned_passkey_results_are_preferred_over_zero_shot(tmp_path):
    _write(tmp_path / "eval" / "eval.json", {"checkpoints": {"rope": {"results": {"512": {"loss": 1.0}}}}})
    stages = {"zero-shot": {"lengths": {"512": {"accuracy": 0.0}}},
              "finetuned": {"lengths": {"512": {"accuracy": 1.0}}}}
    _write(tmp_path / "passkey" / "passkey.json", {"checkpoints": {"rope": {"stages": stages}}})
    assert summarize(tmp_path, ["rope"]).strip().splitlines()[2] == "| rope | 1.000 | — | 1.000 |"
    del stages["finetuned"]
    _write(tmp_path / "passkey" / "passkey.json", {"checkpoints": {"rope": {"stages": stages}}})
    assert summarize(tmp_path, ["rope"]).strip().splitlines()[2] == "| rope | 1.000 | — | 0.000 |"


def test_reproduce_passes_the_fine_tuning_schedules_on(tmp_path, monkeypatch):
    import argparse

    from siattn.recipes import reproduce

    calls = []
    monkeypatch.setattr(reproduce, "_run", calls.append)
    parser = argparse.ArgumentParser()
    reproduce.add_arguments(parser)
    args = parser.parse_args(["--methods", "rope", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"),
                              "--finetune-steps", "1", "2", "3", "--passkey-finetune", "4", "5", "6"])
    assert reproduce.main(args) == 0
    train, evaluate, needle, passkey = calls
    assert train[:2] == ["train", "--preset"] and evaluate[0] == "eval"
    assert needle[needle.index("--warmup"):needle.index("--warmup") + 6] == ["--warmup", "1", "--constant", "2",
                                                                             "--decay", "3"]
    assert "--finetune" in passkey and "--no-zero-shot" in passkey
    assert passkey[passkey.index("--warmup"):passkey.index("--warmup") + 6] == ["--warmup", "4", "--constant", "5",
                                                                                "--decay", "6"]
    assert "after fine-tuning" in (tmp_path / "out" / "README.md").read_text()
