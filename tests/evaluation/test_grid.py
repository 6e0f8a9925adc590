"""The comparison grid: one run end to end into its results folder, the table from run folders, resumption."""

import dataclasses
import json
import math

import pytest

from siattn.evaluation import grid
from siattn.evaluation.grid import Retrieval, RunSpec, Study
from siattn.methods import evaluation_method

TINY = Retrieval("needle", trials=2, warmup=1, constant=1, decay=0, batch_size=2)


def tiny_study(data: str) -> Study:
    return Study(
        name="tiny", question="does the pipeline run?", preset="cpu-tiny",
        overrides=(("steps", 4), ("seq_len", 384), ("batch_size", 2), ("n_layer", 1), ("n_embd", 64),
                   ("head_dim", 32), ("data", data)),
        runs=(RunSpec("rope", extensions=("rope-ntk",)), RunSpec("si-p-rope", extra_multipliers=(3,))),
        multipliers=(1, 2), eval_tokens=2304, eval_batch_tokens=2304,
        needle=TINY, passkey=dataclasses.replace(TINY, task="passkey"))


@pytest.fixture
def tiny_data(tmp_path):
    from siattn.data import prepare_dataset

    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):
        (src / f"f{i}.py").write_text("".join(f"def f{i}_{j}(x):\n    return x * {j} + {i}\n" for j in range(400)))
    return str(prepare_dataset(str(src), tmp_path / "data", tokenizer="bytes", progress=False).parent)


@pytest.mark.slow
def test_a_run_writes_its_results_and_the_table_reads_them(tmp_path, tiny_data):
    study = tiny_study(tiny_data)
    out = tmp_path / "out"
    folder = grid.run_one(study, "rope-s0", out, scratch=tmp_path / "scratch", device="cpu", progress=False)
    assert sorted(p.name for p in folder.iterdir()) == sorted(grid.RUN_FILES)
    summary = json.loads((folder / "run.json").read_text())
    assert summary["lengths"] == [384, 768]
    assert set(summary["val"]) == {"rope", "rope-ntk"}
    # NTK changes nothing at the training length and something beyond it
    assert summary["val"]["rope"]["384"] == summary["val"]["rope-ntk"]["384"]
    assert summary["val"]["rope"]["768"] != summary["val"]["rope-ntk"]["768"]
    assert 0.0 <= summary["needle"]["rope-ntk"]["768"] <= 1.0
    attention = json.loads((folder / "needle.json").read_text())["methods"]["rope-ntk"]["attention"]
    mass = attention["lengths"]["768"]["mass"]  # layers × heads, each a share of the attention
    assert len(mass) == 1 and all(0.0 <= m <= 1.0 for m in mass[0])
    assert summary["tokens"] == 4 * 2 * 384 and summary["passes"] == pytest.approx(
        summary["tokens"] / summary["dataset"]["train_tokens"])
    assert summary["convergence"]["to_step"] == 4
    assert not list((out / "runs").glob(".*")), "no temporary folder is left behind"
    assert grid.missing_runs(study, out) == ["si-p-rope-s0"]
    with pytest.raises(FileExistsError, match="done"):
        grid.run_one(study, "rope-s0", out, scratch=tmp_path / "scratch", device="cpu", progress=False)
    table = grid.summarize(study, out)
    assert "| rope | 1 |" in table and "| rope-ntk | 1 |" in table
    assert (out / "table.md").exists() and (out / "loss-by-length.png").exists()
    assert (out / "needle-heatmaps.png").exists() and (out / "training-curves.png").exists()
    assert "| rope-ntk | 1 |" in (out / "table.md").read_text().split("needle attention@1×")[1]
    assert (out / "needle-attention.png").exists()


@pytest.mark.slow
def test_a_run_stopped_in_its_evaluation_goes_on_from_its_scratch_folder(tmp_path, tiny_data, monkeypatch):
    from siattn.training import trainer

    study = tiny_study(tiny_data)
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    calls = {"train": 0, "needle": 0, "passkey": 0}
    real_train, real_retrieval = trainer.train, grid.retrieval

    def counting_train(*args, **kwargs):
        calls["train"] += 1
        return real_train(*args, **kwargs)

    def stop_at_passkey(protocol, *args, **kwargs):
        calls[protocol.task] += 1
        if protocol.task == "passkey":
            raise KeyboardInterrupt("stopped at the deadline")
        return real_retrieval(protocol, *args, **kwargs)

    monkeypatch.setattr(trainer, "train", counting_train)
    monkeypatch.setattr(grid, "retrieval", stop_at_passkey)
    with pytest.raises(KeyboardInterrupt):
        grid.run_one(study, "rope-s0", out, scratch=scratch, device="cpu", progress=False)
    assert not (out / "runs" / "rope-s0").exists()
    assert calls == {"train": 1, "needle": 1, "passkey": 1}

    monkeypatch.setattr(grid, "retrieval", lambda protocol, *a, **k: calls.__setitem__(
        protocol.task, calls[protocol.task] + 1) or real_retrieval(protocol, *a, **k))
    folder = grid.run_one(study, "rope-s0", out, scratch=scratch, device="cpu", progress=False)
    assert calls == {"train": 1, "needle": 1, "passkey": 2}, "only the unfinished phase is done again"
    summary = json.loads((folder / "run.json").read_text())
    assert summary["reused_phases"] == ["eval", "needle", "train"]
    assert set(summary["seconds"]) == {"train", "eval", "needle", "passkey", "total"}
    assert summary["train_config"]["steps"] == 4 and summary["parameters"] > 0

    # another protocol for the same run id (here: more steps) trains again instead of reusing the scratch folder
    longer = dataclasses.replace(study, overrides=(*study.overrides, ("steps", 5)))
    config = grid.train_config(longer, longer.spec("rope-s0"), scratch / "tiny" / "rope-s0")
    assert grid.finished_phases(scratch / "tiny" / "rope-s0", config) == {}
    same = grid.train_config(study, study.spec("rope-s0"), scratch / "tiny" / "rope-s0")
    assert set(grid.finished_phases(scratch / "tiny" / "rope-s0", same)) == {"train", "eval", "needle", "passkey"}


@pytest.mark.slow
def test_a_run_stopped_in_its_needle_phase_takes_it_up_at_the_unfinished_step(tmp_path, tiny_data, monkeypatch):
    """Fine-tuned weights, each method's accuracy per length and its attention measurement are kept as they finish:
    a second attempt does only what is missing and writes what one attempt run through writes."""
    from siattn.analysis import needle_attention as attention_module
    from siattn.evaluation import needle as needle_module

    study = dataclasses.replace(tiny_study(tiny_data), passkey=dataclasses.replace(TINY, task="passkey", trials=1))
    through = grid.run_one(study, "rope-s0", tmp_path / "through", scratch=tmp_path / "scratch-through",
                           device="cpu", progress=False)

    calls = {"finetune": 0, "evaluate_length": 0, "needle_attention": 0}
    real = {name: getattr(module, name) for name, module in (
        ("finetune", needle_module), ("evaluate_length", needle_module), ("needle_attention", attention_module))}

    def counted(name, module, stop_at=None):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            if calls[name] == stop_at:
                raise KeyboardInterrupt("stopped at the deadline")
            return real[name](*args, **kwargs)
        monkeypatch.setattr(module, name, wrapper)

    counted("finetune", needle_module)
    counted("evaluate_length", needle_module)
    counted("needle_attention", attention_module, stop_at=1)  # rope's accuracy is kept, its attention not yet
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    with pytest.raises(KeyboardInterrupt):
        grid.run_one(study, "rope-s0", out, scratch=scratch, device="cpu", progress=False)
    assert calls == {"finetune": 1, "evaluate_length": 2, "needle_attention": 1}

    calls.update(finetune=0, evaluate_length=0, needle_attention=0)
    counted("needle_attention", attention_module)
    folder = grid.run_one(study, "rope-s0", out, scratch=scratch, device="cpu", progress=False)
    # needle: no fine-tuning, rope-ntk's two lengths, both attention measurements; then passkey from the start
    assert calls == {"finetune": 1, "evaluate_length": 2 + 4, "needle_attention": 2 + 2}

    def numbers(run_folder):
        result = json.loads((run_folder / "needle.json").read_text())
        return (result["finetune"]["losses"],
                {m: (r["lengths"], r["attention"]) for m, r in result["methods"].items()})

    assert numbers(folder) == numbers(through)
    assert json.loads((folder / "needle.json").read_text())["reused_seconds"] > 0

    # another needle protocol on the same training: the needle phase is made again (in a folder of its own), the
    # loss and passkey phases are kept
    calls.update(finetune=0, evaluate_length=0, needle_attention=0)
    other = dataclasses.replace(study, needle=dataclasses.replace(TINY, trials=3))
    summary = json.loads((grid.run_one(other, "rope-s0", tmp_path / "other", scratch=scratch, device="cpu",
                                       progress=False) / "run.json").read_text())
    assert calls == {"finetune": 1, "evaluate_length": 4, "needle_attention": 2}
    assert summary["reused_phases"] == ["eval", "passkey", "train"]


@pytest.mark.slow
def test_a_run_trained_on_another_backend_is_evaluated_on_the_common_one(tmp_path, tiny_data, monkeypatch):
    """The backend of a run spec is its pre-training's; every evaluation loads the checkpoint with EVAL_BACKEND."""
    from siattn.evaluation import checkpoints

    study = dataclasses.replace(tiny_study(tiny_data), runs=(RunSpec("si-p-rope", backend="reference"),),
                                passkey=dataclasses.replace(TINY, task="passkey", trials=1))
    loaded, real = [], checkpoints.load_for_eval

    def recording(path, device="cpu", **kwargs):
        ckpt = real(path, device, **kwargs)
        loaded.append(ckpt.config.attn_backend)
        return ckpt

    monkeypatch.setattr(checkpoints, "load_for_eval", recording)
    folder = grid.run_one(study, "si-p-rope-s0-reference", tmp_path / "out", scratch=tmp_path / "scratch",
                          device="cpu", progress=False)
    summary = json.loads((folder / "run.json").read_text())
    assert summary["train_config"]["model"]["attn_backend"] == "reference"
    assert loaded == [grid.EVAL_BACKEND] * 3  # loss by length, needle, passkey


def _fake_run(out, study, spec, val, needle):
    folder = out / "runs" / spec.run_id
    folder.mkdir(parents=True)
    lengths = [512 * m for m in study.multipliers]
    summary = {"run_id": spec.run_id, "label": spec.label, "spec": dataclasses.asdict(spec), "train_length": 512,
               "lengths": lengths, "commit": "abc", "hardware": "test",
               "val": {spec.method: dict(zip(map(str, lengths), val))},
               "needle": {spec.method: dict(zip(map(str, lengths), needle))}, "passkey": {}}
    (folder / "run.json").write_text(json.dumps(summary))
    (folder / "metrics.jsonl").write_text(json.dumps({"kind": "train", "step": 1, "loss": 3.0}) + "\n")
    for name in ("eval.json", "needle.json", "passkey.json"):
        (folder / name).write_text("{}")


def test_seeds_are_averaged_with_their_standard_error(tmp_path):
    study = Study(name="t", question="q", preset="cpu-tiny", multipliers=(1, 4),
                  runs=(RunSpec("rope", seed=0), RunSpec("rope", seed=1), RunSpec("alibi")))
    _fake_run(tmp_path, study, study.runs[0], [1.0, 2.0], [1.0, 0.0])
    _fake_run(tmp_path, study, study.runs[1], [1.2, 2.4], [0.5, 0.0])
    lines = grid.summarize(study, tmp_path).strip().splitlines()
    assert lines[0].startswith("| method | seeds | val@1× | val@4× | needle@1× | needle@4× |")
    assert lines[2].startswith("| rope | 2 | 1.100 ± 0.100 | 2.200 ± 0.200 | 0.750 ± 0.250 | 0.000 ± 0.000 |")
    assert len(lines) == 3, "alibi has no run yet: no row"
    rows = json.loads((tmp_path / "table.json").read_text())["rows"]
    assert rows["rope"]["val@4"]["n"] == 2 and math.isclose(rows["rope"]["val@4"]["se"], 0.2)


def _attention(masses, uniform):
    """A needle_attention result with one layer of two heads: the best head's mass at each length is masses[i]."""
    return {"lengths": {str(n): {"mass": [[m, m / 2]], "uniform": uniform, "best_head": {"layer": 0, "head": 0,
                                                                                           "mass": m}}
                        for n, m in zip((512, 2048), masses)}}


def test_attention_on_the_needles_is_averaged_over_the_runs_that_measured_it(tmp_path):
    study = Study(name="t", question="q", preset="cpu-tiny", multipliers=(1, 4),
                  runs=(RunSpec("rope", seed=0), RunSpec("rope", seed=1), RunSpec("rope", seed=2),
                        RunSpec("alibi")))
    for spec, masses in zip(study.runs, ([0.9, 0.5], [0.7, 0.3], None, None)):
        _fake_run(tmp_path, study, spec, [1.0, 2.0], [1.0, 0.0])
        if masses is not None:  # seed 2 and alibi: made before the measurement existed
            result = {"methods": {"rope": {"lengths": {}, "attention": _attention(masses, 0.01)}}}
            (tmp_path / "runs" / spec.run_id / "needle.json").write_text(json.dumps(result))
    grid.summarize(study, tmp_path)
    text = (tmp_path / "table.md").read_text()
    assert "| rope | 2 | 0.800 ± 0.100 | 0.400 ± 0.100 | — | — |" in text
    assert "| alibi |" not in text.split("needle attention@1×")[1]
    assert "| uniform share |  | 0.0100 | 0.0100 | — | — |" in text
    rows = json.loads((tmp_path / "table.json").read_text())["rows"]
    assert rows["rope"]["attention_needle@4"] == {"mean": pytest.approx(0.4), "se": pytest.approx(0.1), "n": 2}
    assert (tmp_path / "needle-attention.png").read_bytes()[:4] == b"\x89PNG"


def test_an_unfinished_run_folder_is_not_counted(tmp_path):
    study = Study(name="t", question="q", preset="cpu-tiny", runs=(RunSpec("rope"),))
    (tmp_path / "runs" / "rope-s0").mkdir(parents=True)
    (tmp_path / "runs" / "rope-s0" / "run.json").write_text("{}")
    assert grid.missing_runs(study, tmp_path) == ["rope-s0"]
    assert grid.summarize(study, tmp_path) == "no completed runs yet\n"


def test_run_ids_name_seed_backend_and_overrides():
    assert RunSpec("si-p-rope", seed=2, backend="flex").run_id == "si-p-rope-s2-flex"
    assert RunSpec("si-p-rope", overrides=(("tau", 0.1),), tag="tau0.1").run_id == "si-p-rope-tau0.1-s0"
    with pytest.raises(ValueError, match="run must be one of"):
        grid.get_study("gpu-small").spec("nonsense-s0")


def test_every_study_is_valid_and_its_run_ids_are_unique():
    from siattn.training import resolve_config

    for study in grid.STUDIES.values():
        ids = [r.run_id for r in study.runs]
        assert len(ids) == len(set(ids)), study.name
        for spec in study.runs:
            config = grid.train_config(study, spec, grid.RUNS)
            assert config.eval_multipliers == (1,) and config.steps % study.curve_evals == 0, spec.run_id
            for ext in spec.extensions:
                assert evaluation_method(spec.method, ext) == ext
        assert resolve_config(study.preset).steps >= study.curve_evals


def test_extensions_only_run_on_the_checkpoints_they_extend():
    assert evaluation_method("rope", "yarn") == "yarn"
    assert evaluation_method("logn-rope", "logn-ntk") == "logn-ntk"
    with pytest.raises(ValueError, match="cannot evaluate a checkpoint trained with 'p-rope'"):
        evaluation_method("p-rope", "rope-ntk")


def test_the_gpu_grid_stays_under_one_pass_of_its_data():
    from siattn.training import resolve_config

    config = resolve_config("gpu-small")
    python_all_bytes = 300_750_195  # training bytes of python-all here (results/data-prepare), the smaller corpus
    assert config.steps * config.tokens_per_step < python_all_bytes


def test_retrieval_scale_has_three_model_sizes_between_cpu_tiny_and_gpu_small(tmp_path):
    from siattn.model.gpt import count_parameters
    from siattn.training import resolve_config

    def parameters(config):
        return count_parameters(dataclasses.replace(config.model, vocab_size=256))  # the byte vocabulary

    low, high = parameters(resolve_config("cpu-tiny")), parameters(resolve_config("gpu-small"))
    study = grid.get_study("retrieval-scale")
    # to 0.1M: LogN's per-head scales add a few parameters to a size, not another size
    sizes = {round(parameters(grid.train_config(study, spec, tmp_path)), -5) for spec in study.runs}
    assert len({n for n in sizes if low < n < high}) >= 3, (low, sorted(sizes), high)
