"""The comparison grid: studies as data, one run of a study in one call, the table from the committed runs.

A :class:`Study` fixes its whole protocol before any run: the preset and its overrides, the runs (method, seed,
attention backend of the training, extension methods evaluated on the run's checkpoint, extra evaluation lengths), the
validation lengths and token count, and the needle and passkey fine-tuning schedules. :func:`run_one` does one
run end to end — train, loss by length, needle, passkey — in a scratch folder and then writes its compact
results (never its checkpoint) to ``OUT/runs/<run id>/``:

    run.json        what ran (spec, resolved config), where (commit, hardware, versions, dataset digest), how long
                    each phase took, tokens and passes over the data, the convergence check, every headline number
    metrics.jsonl   the training curve
    eval.json       loss at each length and by position, for the run's method and each extension
    needle.json     needle accuracy per length and depth (every trial), fine-tuning losses
    passkey.json    the same for passkey

:func:`summarize` reads whatever run folders exist and writes ``table.md`` / ``table.json`` (mean ± standard
error over seeds) and the plots. A run is the unit of resumption across machines: an interrupted run leaves
nothing under ``OUT/runs``. On the machine where it was interrupted, its scratch folder keeps what it finished
(``phases/``: the training, once its final checkpoint is written, each evaluation phase, and inside the needle and
passkey phases each finished step: the fine-tuned weights, each method's accuracy per length, its attention
measurement), so the same command run again there goes on from that point instead of doing it again.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from siattn.io import json_sha256, markdown_table, read_json, write_json, write_text
from siattn.provenance import dataset_record, environment

RUNS = "runs"
RUN_FILES = ("run.json", "metrics.jsonl", "eval.json", "needle.json", "passkey.json")
PHASES = "phases"  # in a run's scratch folder: what an attempt of the run finished (see the module docstring)


@dataclass(frozen=True)
class Retrieval:
    """A retrieval protocol: fine-tune on ``task`` examples at the training length (``warmup`` / ``constant`` /
    ``decay`` steps of ``batch_size`` sequences, the model's own optimisers), then ``trials`` greedy-decoded
    examples per evaluation length."""

    task: str  # "needle" or "passkey"
    trials: int = 50
    warmup: int = 100
    constant: int = 100
    decay: int = 100
    batch_size: int = 32
    micro_batch_size: int | None = None
    seed: int = 0
    margin: int = 2
    attention_trials: int = 10  # examples per length whose attention mass on the needles is measured (0: off)


# Every run is evaluated (loss by length, retrieval fine-tuning and decoding, attention measurement) with the same
# backend, whatever its pre-training ran on: a run that differs only in its training backend then differs in its
# numbers only through its weights. FlexAttention, compiled for static shapes, would also compile again for every
# prompt length and every decoding step.
EVAL_BACKEND = "auto"


@dataclass(frozen=True)
class RunSpec:
    """One training run of a study and what is evaluated on its checkpoint."""

    method: str
    seed: int = 0
    backend: str | None = None  # attention backend of the pre-training (None: auto); EVAL_BACKEND evaluates
    extensions: tuple[str, ...] = ()  # methods evaluated on this checkpoint (rope-ntk and yarn on rope, ...)
    extra_multipliers: tuple[int, ...] = ()  # evaluation lengths beyond the study's, for loss and retrieval
    overrides: tuple[tuple[str, Any], ...] = ()  # TrainConfig / GPTConfig fields (tau, seq_len, ...)
    tag: str = ""  # names the overrides in the run id

    @property
    def run_id(self) -> str:
        parts = [self.method, *([self.tag] if self.tag else []), f"s{self.seed}"]
        return "-".join(parts + ([self.backend] if self.backend else []))

    @property
    def label(self) -> str:
        """The table row this run's seeds are averaged into."""
        return "-".join([self.method, *([self.tag] if self.tag else []), *([self.backend] if self.backend else [])])


@dataclass(frozen=True)
class Study:
    """A comparison with its protocol fixed before the runs."""

    name: str
    question: str
    preset: str
    runs: tuple[RunSpec, ...]
    overrides: tuple[tuple[str, Any], ...] = ()
    multipliers: tuple[int, ...] = (1, 4, 16)
    eval_tokens: int = 1 << 20
    eval_batch_tokens: int = 1 << 17
    needle: Retrieval = Retrieval("needle")
    passkey: Retrieval = Retrieval("passkey")
    curve_evals: int = 5  # validations at 1× during training (the last two give the convergence check)

    def spec(self, run_id: str) -> RunSpec:
        for r in self.runs:
            if r.run_id == run_id:
                return r
        raise ValueError(f"run must be one of {[r.run_id for r in self.runs]} (study {self.name}), got {run_id!r}")


def _seeds(method: str, seeds: Sequence[int], **kw: Any) -> list[RunSpec]:
    return [RunSpec(method, seed=s, **kw) for s in seeds]


_LONG = (64,)  # "where does each method finally break": loss and retrieval at 64× for these
_GPU_SMALL_RUNS = (
    # seed 0 of the paper's rows first, so that an unfinished grid still compares every method once
    RunSpec("si-p-rope", extra_multipliers=_LONG),
    RunSpec("rope", extensions=("rope-ntk", "yarn")),
    RunSpec("alibi", extra_multipliers=_LONG),
    RunSpec("logn-p-rope", extra_multipliers=_LONG),
    RunSpec("p-rope"),
    RunSpec("si-p-rope", backend="flex"),  # the fused kernel's backward checked against FlexAttention's
    RunSpec("nope"),
    RunSpec("logn-rope", extensions=("logn-ntk",)),
    RunSpec("si-rope"),
    RunSpec("si-nope"),
    # seeds 1 and 2 of the five rows whose ordering is tested
    *_seeds("si-p-rope", (1, 2), extra_multipliers=_LONG),
    *_seeds("rope", (1, 2), extensions=("rope-ntk", "yarn")),
    *_seeds("alibi", (1, 2), extra_multipliers=_LONG),
    *_seeds("logn-p-rope", (1, 2), extra_multipliers=_LONG),
    *_seeds("p-rope", (1, 2)),
)

# model sizes between cpu-tiny (0.87M) and gpu-small (25.5M, whose runs are the grid's): 1.74M, 3.31M, 10.9M
_SIZES = {"xs": (("n_layer", 2), ("n_embd", 256), ("n_head", 2)),
          "s": (("n_layer", 4), ("n_embd", 256), ("n_head", 2)),
          "m": (("n_layer", 6), ("n_embd", 384), ("n_head", 3))}
_RETRIEVAL_SCALE_RUNS = (
    *(RunSpec(m, overrides=size, tag=name) for name, size in _SIZES.items() for m in ("si-p-rope", "logn-p-rope")),
    # tokens at one size: half and twice the grid's 600 steps
    *(RunSpec("si-p-rope", overrides=(*_SIZES["m"], ("steps", n)), tag=f"m-steps{n}") for n in (300, 1200)),
    # the p-RoPE frequencies at one small size: the base (grid: 512 at 2k) and the share of rotated pairs (0.5)
    *(RunSpec("si-p-rope", overrides=(*_SIZES["s"], ("p_rope_base", b)), tag=f"s-base{b}") for b in (128, 2048)),
    *(RunSpec("si-p-rope", overrides=(*_SIZES["s"], ("p_rope_fraction", f)), tag=f"s-frac{f}") for f in (0.25, 0.75)),
)

STUDIES: dict[str, Study] = {study.name: study for study in (
    Study(
        name="gpu-small",
        question="Trained at 2k tokens, which methods keep their loss and their retrieval at 4× and 16× (and 64×)?",
        preset="gpu-small",
        runs=_GPU_SMALL_RUNS,
    ),
    Study(
        name="gpu-small-4k",
        question="At the paper's own lengths (train 4k, evaluate 16k and 64k), does the comparison hold?",
        preset="gpu-small",
        overrides=(("seq_len", 4096), ("batch_size", 32), ("micro_batch_size", 16)),
        runs=tuple(RunSpec(m) for m in ("si-p-rope", "rope", "alibi", "logn-p-rope")),
    ),
    Study(
        name="gpu-small-tau",
        question="The paper's τ sweep (appendix): is τ = 10 the best at 16× for scale-invariant p-RoPE?",
        preset="gpu-small",
        runs=tuple(RunSpec("si-p-rope", overrides=(("tau", tau),), tag=f"tau{tau:g}")
                   for tau in (0.01, 0.1, 1.0, 10.0, 100.0)),
    ),
    Study(
        name="retrieval-scale",
        question="Between cpu-tiny (no retrieval past 1×) and gpu-small, where does retrieval at 4× and 16× appear, "
                 "and is a small model's failure in its size, its tokens or its p-RoPE frequencies?",
        preset="gpu-small",
        runs=_RETRIEVAL_SCALE_RUNS,
    ),
    Study(
        name="cpu-tiny",
        question="At 0.87M parameters on 2 CPU cores, which methods keep their loss and retrieval at 4× and 16×?",
        preset="cpu-tiny",
        runs=tuple(RunSpec(m) for m in ("si-p-rope", "rope", "alibi", "logn-p-rope")),
        eval_tokens=1 << 16, eval_batch_tokens=1 << 14,
        needle=Retrieval("needle", batch_size=8), passkey=Retrieval("passkey", batch_size=8),
    ),
)}


def get_study(name: str) -> Study:
    if name not in STUDIES:
        raise ValueError(f"study must be one of {sorted(STUDIES)}, got {name!r}")
    return STUDIES[name]


# ---- one run ----

def train_config(study: Study, spec: RunSpec, run_dir: Path) -> Any:
    """The TrainConfig of a run: the preset, the study's and the run's overrides; validation at 1× only, at
    ``curve_evals`` evenly spaced steps (the full evaluation follows training)."""
    from siattn.training import resolve_config

    overrides = {**dict(study.overrides), **dict(spec.overrides)}
    config = resolve_config(study.preset, method=spec.method, seed=spec.seed, attn_backend=spec.backend,
                            out=str(run_dir), **overrides)
    every = max(1, config.steps // study.curve_evals)
    return dataclasses.replace(config, eval_multipliers=(1,), eval_every=every, ckpt_every=config.steps,
                               keep_checkpoints=1)


def convergence(metrics: Sequence[dict[str, Any]], train_length: int) -> dict[str, Any]:
    """Relative improvement of validation loss at 1× over the last fifth of training (from the two last
    validations, which :func:`train_config` puts at 80% and 100% of the steps)."""
    vals = [(r["step"], r["loss"][str(train_length)]) for r in metrics
            if r.get("kind") == "val" and str(train_length) in r.get("loss", {})]
    if len(vals) < 2:
        return {"improvement_last_fifth": None}
    (s0, v0), (s1, v1) = vals[-2], vals[-1]
    return {"from_step": s0, "to_step": s1, "val_from": v0, "val_to": v1,
            "improvement_last_fifth": (v0 - v1) / v0}


def loss_by_length(model: torch.nn.Module, tokens: Any, lengths: Sequence[int], n_tokens: int,
                   batch_tokens: int, progress: bool) -> dict[str, Any]:
    """Loss at every length over the same scored tokens, as JSON (:func:`siattn.evaluation.loss_at_lengths`)."""
    from siattn.evaluation.loss_by_length import loss_at_lengths

    results = loss_at_lengths(model, tokens, lengths, n_tokens, batch_tokens=batch_tokens, progress=progress)
    return {str(length): res.to_dict() for length, res in results.items()}


def retrieval(protocol: Retrieval, models: dict[str, Callable[[], torch.nn.Module]], base: torch.nn.Module,
              train_config: Any, ds: Any, lengths: Sequence[int], train_length: int, progress: bool,
              log: Callable[[str], Any], partial: Path) -> dict[str, Any]:
    """Fine-tune ``base`` (in place) on the protocol's task at ``train_length``, then evaluate it under every
    method of ``models`` (name -> a function that returns the fine-tuned weights under that method) and measure
    where its attention goes at each length (:mod:`siattn.analysis.needle_attention`).

    ``partial``: the folder where each step is kept as it finishes (the fine-tuned weights; each method's accuracy
    at each length, then its attention measurement), so that an attempt stopped part-way is taken up by the next
    at the first unfinished step, with the same result as one attempt run through. ``reused_seconds`` in the
    result: the time earlier attempts spent on the steps this one took over."""
    from siattn.analysis.needle_attention import NeedleAttentionConfig, needle_attention
    from siattn.evaluation.needle import decoding_model, evaluate_retrieval, finetune
    from siattn.evaluation.passkey import retrieval_task

    tok = ds.tokenizer

    def task(split: str) -> Any:
        return retrieval_task(protocol.task, ds.split(split), tok)

    def run_finetune() -> dict[str, Any]:
        t0 = time.perf_counter()
        ft = finetune(base, task("train"), length=train_length, train_config=train_config,
                      warmup=protocol.warmup, constant=protocol.constant, decay=protocol.decay,
                      batch_size=protocol.batch_size, micro_batch_size=protocol.micro_batch_size, seed=protocol.seed,
                      progress=progress, log=log)
        ft["seconds"] = round(time.perf_counter() - t0, 3)
        return ft

    ft, reused = _finetuned(base, partial, run_finetune, log)
    out: dict[str, Any] = {"protocol": dataclasses.asdict(protocol), "finetune": ft, "methods": {}}
    reused_seconds = ft["seconds"] if reused else 0.0
    for name, make in models.items():
        step = _PartialSteps(partial / f"{name}.json")
        reused_seconds += step.record["seconds"] + step.record.get("attention_seconds", 0.0)
        if any(str(length) not in step.record["lengths"] for length in lengths):
            done = {int(k): v for k, v in step.record["lengths"].items()}
            evaluate_retrieval(decoding_model(make()), task("val"), lengths, protocol.trials, done=done,
                               on_result=step.keep_length, seed=protocol.seed, eod_id=tok.eod_id,
                               decode=tok.decode, margin=protocol.margin, progress=progress)
        results = {int(k): v for k, v in step.record["lengths"].items()}
        out["methods"][name] = {"seconds": step.record["seconds"],
                                "lengths": {str(k): v for k, v in sorted(results.items())}}
        if protocol.attention_trials:
            if "attention" not in step.record:
                cfg = NeedleAttentionConfig(lengths=tuple(lengths), trials=protocol.attention_trials,
                                            seed=protocol.seed)
                t0 = time.perf_counter()
                step.keep("attention", needle_attention(make(), task("val"), cfg), time.perf_counter() - t0)
            out["methods"][name]["attention"] = step.record["attention"]
        log(f"{protocol.task} {name}: " + ", ".join(f"@{k} {v['accuracy']:.3f}" for k, v in sorted(results.items())))
    out["reused_seconds"] = round(reused_seconds, 3)
    return out


class _PartialSteps:
    """One method's retrieval steps as they finish ({"seconds", "lengths", "attention", "attention_seconds"}),
    kept in ``path`` (JSON, written atomically after each step)."""

    def __init__(self, path: Path):
        self.path = path
        self.record: dict[str, Any] = read_json(path) or {"seconds": 0.0, "lengths": {}}
        self._since = time.perf_counter()

    def keep_length(self, length: int, result: dict[str, Any]) -> None:
        now = time.perf_counter()
        self.record["lengths"][str(length)] = result
        self.record["seconds"] = round(self.record["seconds"] + now - self._since, 3)
        self._since = now
        self._write()

    def keep(self, key: str, value: Any, seconds: float) -> None:
        self.record[key] = value
        self.record[f"{key}_seconds"] = round(seconds, 3)
        self._write()

    def _write(self) -> None:
        write_json(self.path, self.record)


def _finetuned(base: torch.nn.Module, folder: Path, run_finetune: Callable[[], dict[str, Any]],
               log: Callable[[str], Any]) -> tuple[dict[str, Any], bool]:
    """(the fine-tuning record, whether it was reused): ``run_finetune()`` (fine-tunes ``base`` in place), its
    weights and record then kept in ``folder/finetuned``; or, when an earlier attempt left them there and they
    verify, those weights loaded into ``base`` and that record."""
    from siattn.training.checkpointing import (
        CheckpointError,
        load_model_state,
        read_checkpoint_state,
        save_checkpoint,
    )

    saved = folder / "finetuned"
    if saved.exists():
        try:
            checkpoint, state = read_checkpoint_state(saved)
            load_model_state(base, checkpoint, next(base.parameters()).device)
            log(f"fine-tuned weights of an earlier attempt: {saved}")
            return state["extra"]["finetune"], True
        except (CheckpointError, KeyError, OSError) as err:
            log(f"{saved}: not usable ({err}); fine-tuning again")
    ft = run_finetune()
    save_checkpoint(saved, model=base, config=base.config, extra={"finetune": ft}, save_rng=False)
    return ft, False


def under_method(model: torch.nn.Module, method: str) -> torch.nn.Module:
    """``model``'s weights in a new GPT that runs ``method`` (one that extends the trained method)."""
    from siattn.methods import evaluation_method
    from siattn.model import GPT

    config = dataclasses.replace(model.config, method=evaluation_method(model.config.method, method))
    other = GPT(config).to(next(model.parameters()).device)
    other.load_state_dict(model.state_dict())
    return other.eval()


def _save_phase(run_dir: Path, name: str, result: Any, seconds: float) -> None:
    """Keep a finished phase of a run in its scratch folder (atomically)."""
    write_json(run_dir / PHASES / f"{name}.json", {"result": result, "seconds": seconds})


def _same_retrieval(result: dict[str, Any], asked: dict[str, Any]) -> bool:
    """Whether a kept retrieval phase was made with ``asked``'s protocol, at its lengths, under its methods."""
    return (result.get("protocol") == asked["protocol"] and list(result.get("methods", {})) == asked["methods"]
            and all(sorted(map(int, r["lengths"])) == sorted(asked["lengths"]) for r in result["methods"].values()))


def finished_phases(run_dir: Path, config: Any) -> dict[str, dict[str, Any]]:
    """Phase name -> {"result", "seconds"} of what an earlier attempt of this run finished in ``run_dir``: nothing
    unless its training was asked with this same ``config`` and its final checkpoint still verifies."""
    from siattn.training.checkpointing import CheckpointError, read_checkpoint_state

    trained = read_json(run_dir / PHASES / "train.json")
    if not trained or trained["result"].get("config") != json.loads(json.dumps(config.to_dict())):
        return {}
    try:
        _, state = read_checkpoint_state(trained["result"]["checkpoint"])
    except (CheckpointError, OSError):
        return {}
    if int(state["step"]) != config.steps:
        return {}
    done = {"train": trained}
    for name in ("eval", "needle", "passkey"):
        phase = read_json(run_dir / PHASES / f"{name}.json")
        if phase:
            done[name] = phase
    return done


def run_one(study: Study, run_id: str, out: Path, *, scratch: Path, device: str | None = None,
            progress: bool = True, log: Callable[[str], Any] = print) -> Path:
    """Train, evaluate and write one run of ``study`` to ``out/runs/<run_id>/`` (see the module docstring)."""
    from siattn.data import TokenDataset
    from siattn.evaluation.checkpoints import load_for_eval
    from siattn.training.distributed import init_distributed
    from siattn.training.metrics import read_metrics
    from siattn.training.trainer import train

    spec = study.spec(run_id)
    final = out / RUNS / run_id
    if final.exists():
        raise FileExistsError(f"{final} exists: this run is done (delete the folder to run it again)")
    started = time.time()
    phases: dict[str, float] = {}
    info = init_distributed(device)
    env = environment(info.device)
    run_dir = scratch / study.name / run_id
    config = train_config(study, spec, run_dir)
    done = finished_phases(run_dir, config)
    if "train" not in done:
        shutil.rmtree(run_dir / PHASES, ignore_errors=True)
        requested = config.to_dict()
        t0 = time.perf_counter()
        result = train(config, info, overwrite=True, progress=progress, log=log)
        phases["train"] = time.perf_counter() - t0
        if result.stopped_by:
            raise RuntimeError(f"{run_id}: training stopped by {result.stopped_by}; the run is not written")
        trained = {"config": requested, "checkpoint": str(result.checkpoint), "metrics": str(result.metrics_path),
                   "tokens_per_s": result.tokens_per_s, "parameters": result.extra["parameters"]}
        _save_phase(run_dir, "train", trained, phases["train"])
    else:
        trained = done["train"]["result"]
        log(f"{run_id}: training finished in an earlier attempt ({trained['checkpoint']}); going on from there")
    checkpoint = Path(trained["checkpoint"])

    ckpt = load_for_eval(checkpoint, info.device, attn_backend=EVAL_BACKEND)
    ds = TokenDataset(ckpt.train_config.data)
    L = ckpt.train_length
    multipliers = sorted({*study.multipliers, *spec.extra_multipliers})
    lengths = [m * L for m in multipliers]
    methods = [spec.method, *spec.extensions]

    if "eval" in done:
        evaluation = done["eval"]["result"]
    else:
        t0 = time.perf_counter()
        evaluation = {"tokens": None, "methods": {}}
        for m in methods:
            model = under_method(ckpt.model, m)
            evaluation["methods"][m] = loss_by_length(model, ds.val, lengths, study.eval_tokens,
                                                      study.eval_batch_tokens, progress)
            evaluation["tokens"] = next(iter(evaluation["methods"][m].values()))["tokens"]
            log(f"loss {m}: " + ", ".join(f"@{k} {v['loss']:.4f}" for k, v in evaluation["methods"][m].items()))
            del model
        phases["eval"] = time.perf_counter() - t0
        _save_phase(run_dir, "eval", evaluation, phases["eval"])

    retrieved = {}
    for protocol in (study.needle, study.passkey):
        asked = {"protocol": dataclasses.asdict(protocol), "lengths": lengths, "methods": methods}
        if protocol.task in done and _same_retrieval(done[protocol.task]["result"], asked):
            retrieved[protocol.task] = done[protocol.task]["result"]
            continue
        done.pop(protocol.task, None)
        t0 = time.perf_counter()
        base = load_for_eval(checkpoint, info.device, attn_backend=EVAL_BACKEND).model
        models = {m: (lambda m=m, b=base: under_method(b, m)) for m in methods}
        partial = run_dir / PHASES / protocol.task / json_sha256(asked)[:16]  # another protocol: another folder
        retrieved[protocol.task] = retrieval(protocol, models, base, ckpt.train_config, ds, lengths, L, progress,
                                             log, partial=partial)
        phases[protocol.task] = time.perf_counter() - t0 + retrieved[protocol.task]["reused_seconds"]
        _save_phase(run_dir, protocol.task, retrieved[protocol.task], phases[protocol.task])

    reused = {name: phase["seconds"] for name, phase in done.items()}
    metrics = read_metrics(Path(trained["metrics"]))
    train_tokens = len(ds.train)
    tokens = config.steps * config.tokens_per_step
    summary = {
        "study": study.name, "run_id": run_id, "label": spec.label, "spec": dataclasses.asdict(spec),
        "command": f"siattn reproduce {study.name} --run {run_id} --out {out}",
        **env,
        "dataset": dataset_record(ds),
        "parameters": trained["parameters"], "tokens": tokens, "passes": tokens / train_tokens,
        "tokens_per_s": trained["tokens_per_s"], "train_config": ckpt.train_config.to_dict(),
        "convergence": convergence(metrics, L),
        "seconds": {k: round(v, 1) for k, v in {**reused, **phases}.items()}
                   | {"total": round(time.time() - started + sum(reused.values()), 1)},
        "reused_phases": sorted(reused),
        "train_length": L, "lengths": lengths,
        "val": {m: {k: v["loss"] for k, v in r.items()} for m, r in evaluation["methods"].items()},
        "needle": {m: {k: v["accuracy"] for k, v in r["lengths"].items()}
                   for m, r in retrieved["needle"]["methods"].items()},
        "passkey": {m: {k: v["accuracy"] for k, v in r["lengths"].items()}
                    for m, r in retrieved["passkey"]["methods"].items()},
    }
    tmp = out / RUNS / f".{run_id}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        write_json(tmp / "run.json", summary)
        shutil.copyfile(trained["metrics"], tmp / "metrics.jsonl")
        write_json(tmp / "eval.json", evaluation)
        write_json(tmp / "needle.json", retrieved["needle"])
        write_json(tmp / "passkey.json", retrieved["passkey"])
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"{run_id}: written to {final} ({summary['seconds']['total']:.0f} s)")
    return final


# ---- the table ----

def completed_runs(out: Path) -> dict[str, dict[str, Any]]:
    """run id -> run.json of every complete run folder under ``out/runs``."""
    found = {}
    for folder in sorted((out / RUNS).glob("*")):
        if folder.name.startswith(".") or not all((folder / f).exists() for f in RUN_FILES):
            continue
        summary = read_json(folder / "run.json")
        if summary is not None:
            found[folder.name] = summary
    return found


def missing_runs(study: Study, out: Path) -> list[str]:
    done = completed_runs(out)
    return [r.run_id for r in study.runs if r.run_id not in done]


def mean_se(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    """(mean, standard error of the mean, n) of the values that are not None; s.e. needs n >= 2."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return None, None, 0
    if len(xs) == 1:
        return xs[0], None, 1
    return float(np.mean(xs)), float(np.std(xs, ddof=1) / math.sqrt(len(xs))), len(xs)


def _cell(mean: float | None, se: float | None) -> str | None:
    if mean is None:
        return None
    return f"{mean:.3f}" if se is None else f"{mean:.3f} ± {se:.3f}"


@dataclass
class Row:
    """One table row: a method (or an extension evaluated on its base's checkpoints) over its seeds."""

    label: str
    runs: list[str] = field(default_factory=list)
    val: dict[int, list[float]] = field(default_factory=dict)
    needle: dict[int, list[float]] = field(default_factory=dict)
    passkey: dict[int, list[float]] = field(default_factory=dict)
    # task -> multiple -> the best head's attention mass on the needle tokens / the uniform share, per run
    attention: dict[str, dict[int, list[float]]] = field(default_factory=dict)
    uniform: dict[str, dict[int, list[float]]] = field(default_factory=dict)


TASKS = ("needle", "passkey")


def attention_results(out: Path, run_id: str) -> dict[str, dict[str, dict[str, Any]]]:
    """task -> method -> the attention measurement (:func:`siattn.analysis.needle_attention.needle_attention`)
    in a run folder's needle.json and passkey.json; runs made before the measurement existed have none."""
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for task in TASKS:
        result = read_json(out / RUNS / run_id / f"{task}.json") or {}
        for method, res in result.get("methods", {}).items():
            if res.get("attention"):
                found.setdefault(task, {})[method] = res["attention"]
    return found


def table_rows(study: Study, runs: dict[str, dict[str, Any]],
               attention: dict[str, dict[str, dict[str, dict[str, Any]]]] | None = None) -> list[Row]:
    """Rows in the order the study lists its runs' labels, extensions after their base. ``attention``: run id ->
    :func:`attention_results` of that run."""
    from siattn.analysis.needle_attention import best_head_mass, uniform_share

    rows: dict[str, Row] = {}
    for spec in study.runs:
        for method in (spec.method, *spec.extensions):
            label = spec.label if method == spec.method else spec.label.replace(spec.method, method, 1)
            rows.setdefault(label, Row(label))
            summary = runs.get(spec.run_id)
            if summary is None:
                continue
            row = rows[label]
            row.runs.append(spec.run_id)
            mult = {int(n): int(n) // summary["train_length"] for n in summary["lengths"]}
            for key in ("val", "needle", "passkey"):
                for n, v in summary[key].get(method, {}).items():
                    getattr(row, key).setdefault(mult[int(n)], []).append(v)
            for task, by_method in (attention or {}).get(spec.run_id, {}).items():
                if method in by_method:
                    for target, values in ((row.attention, best_head_mass(by_method[method])),
                                           (row.uniform, uniform_share(by_method[method]))):
                        for n, v in values.items():
                            target.setdefault(task, {}).setdefault(mult[n], []).append(v)
    return [r for r in rows.values() if r.runs]


def summarize(study: Study, out: Path) -> str:
    """Write ``table.md``, ``table.json`` and the plots for the runs under ``out``; return the table."""
    runs = completed_runs(out)
    attention = {run_id: attention_results(out, run_id) for run_id in runs}
    rows = table_rows(study, runs, attention)
    if not rows:
        return "no completed runs yet\n"
    mults = sorted({m for r in rows for m in r.val})
    header = ["method", "seeds", *[f"val@{m}×" for m in mults], *[f"needle@{m}×" for m in mults],
              *[f"passkey@{m}×" for m in mults]]
    body, data = [], {}
    for r in rows:
        cells, entry = [], {"runs": r.runs}
        for key in ("val", "needle", "passkey"):
            for m in mults:
                mean, se, n = mean_se(getattr(r, key).get(m, []))
                cells.append(_cell(mean, se))
                entry[f"{key}@{m}"] = {"mean": mean, "se": se, "n": n}
        body.append([r.label, len(r.runs), *cells])
        data[r.label] = entry
    table = markdown_table(header, body)
    facts = sorted({(s["commit"], s["hardware"]) for s in runs.values()})
    lines = [f"# {study.name}: {study.question}\n", table,
             "val: validation loss (nats/token) at multiples of the training length, the same scored tokens at "
             "every length; needle: fraction of needles (3 per example) whose city and number are both right "
             "after fine-tuning; passkey: exact match after fine-tuning. Mean ± standard error over seeds "
             "where there are several. Extensions (rope-ntk, yarn, logn-ntk) are evaluated on the checkpoints "
             "of the method they extend.\n"]
    if any(r.attention for r in rows):
        lines += [_attention_table(rows, mults, data),
                  "Attention on the needles: the mass that the best head (the largest over layers and heads of the "
                  "mean over examples) puts on the tokens of the needle sentences while the fine-tuned model reads "
                  f"the answer, teacher-forced, on the first {study.needle.attention_trials} examples of each "
                  "length (siattn.analysis.needle_attention); mean ± standard error over the runs that measured "
                  "it (the runs column; runs made before the measurement existed have none). uniform: the needle "
                  "tokens' share of the keys, what attention spread evenly would put on them.\n"]
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "table.json", {"study": study.name, "rows": data})
    lines += ["Runs (commit, hardware): " + "; ".join(f"`{c[:12]}` on {h}" for c, h in facts) + "\n",
              f"Regenerate: `siattn reproduce {study.name} --table --out {out}`\n"]
    write_text(out / "table.md", "\n".join(lines))
    plot_study(study, runs, rows, out)
    return table


def _attention_table(rows: list[Row], mults: list[int], data: dict[str, Any]) -> str:
    """The Markdown table of the rows' attention on the needles (and the uniform share); adds the cells to
    ``data`` (table.json's rows) as ``attention_{task}@{m}``."""
    header = ["method", "runs", *[f"{task} attention@{m}×" for task in TASKS for m in mults]]
    body = []
    for r in rows:
        if not r.attention:
            continue
        cells = []
        for task in TASKS:
            for m in mults:
                mean, se, n = mean_se(r.attention.get(task, {}).get(m, []))
                cells.append(_cell(mean, se))
                data[r.label][f"attention_{task}@{m}"] = {"mean": mean, "se": se, "n": n}
        measured = max(len(v) for by_mult in r.attention.values() for v in by_mult.values())
        body.append([r.label, measured, *cells])
    shares = {task: uniform_shares(rows, task) for task in TASKS}
    body.append(["uniform share", "", *[None if m not in shares[task] else f"{shares[task][m]:.4f}"
                                        for task in TASKS for m in mults]])
    return markdown_table(header, body)


def uniform_shares(rows: list[Row], task: str) -> dict[int, float]:
    """multiple -> the needle tokens' share of the keys in ``task``, the mean over every run that measured it."""
    found: dict[int, list[float]] = {}
    for r in rows:
        for m, values in r.uniform.get(task, {}).items():
            found.setdefault(m, []).extend(values)
    return {m: float(np.mean(values)) for m, values in found.items()}


def plot_study(study: Study, runs: dict[str, dict[str, Any]], rows: list[Row], out: Path) -> None:
    """loss-by-length.png (mean over seeds), training-curves.png (seed 0), needle-heatmaps.png (seed 0),
    needle-attention.png (the best head's mass on the needles, mean over the runs that measured it)."""
    from siattn.analysis.needle_attention import plot_mass_by_length
    from siattn.evaluation.needle import depth_accuracy
    from siattn.evaluation.plots import plot_depth_heatmaps, plot_loss_by_length
    from siattn.plotting import pyplot, save_figure
    from siattn.training.metrics import read_metrics

    train_length = next(iter(runs.values()))["train_length"]
    by_length = []
    for r in rows:
        mults = sorted(r.val)
        by_length.append({"label": r.label, "lengths": [m * train_length for m in mults],
                          "losses": [float(np.mean(r.val[m])) for m in mults], "train_length": train_length})
    plot_loss_by_length(by_length, out / "loss-by-length.png", title=f"{study.name}: validation loss by length")

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.0, 4.4))
    panels = []
    for run_id, s in runs.items():
        if s["spec"]["seed"] != 0:
            continue
        curve = [r for r in read_metrics(out / RUNS / run_id / "metrics.jsonl") if r.get("kind") == "train"]
        ax.plot([r["step"] for r in curve], [r["loss"] for r in curve], lw=1.2, label=s["label"])
        needle = read_json(out / RUNS / run_id / "needle.json") or {}
        for method, res in needle.get("methods", {}).items():
            lengths = {int(k): v for k, v in res["lengths"].items()}
            acc, _, ls = depth_accuracy(lengths)
            name = s["label"] if method == s["spec"]["method"] else s["label"].replace(s["spec"]["method"], method, 1)
            panels.append({"title": name, "accuracy": acc,
                           "col_labels": [f"{L // train_length}×" for L in ls]})
    ax.set(xlabel="step", ylabel="training loss (nats/token)", title=f"{study.name}: training loss (seed 0)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    save_figure(fig, out / "training-curves.png")
    if panels:
        plot_depth_heatmaps(panels, out / "needle-heatmaps.png", title="needle accuracy by depth and length (seed 0)")
    mass_panels = []
    for task in TASKS:
        series = [{"label": r.label, "lengths": [m * train_length for m in sorted(r.attention[task])],
                   "mass": [float(np.mean(r.attention[task][m])) for m in sorted(r.attention[task])]}
                  for r in rows if r.attention.get(task)]
        if series:
            uniform = {m * train_length: share for m, share in uniform_shares(rows, task).items()}
            mass_panels.append({"title": task, "series": series, "uniform": uniform})
    if mass_panels:
        plot_mass_by_length(mass_panels, out / "needle-attention.png",
                            title=f"{study.name}: the best head's attention on the needle tokens (fine-tuned)")


def describe(study: Study, out: Path) -> str:
    """The study's runs and which are done, as a Markdown table."""
    done = completed_runs(out)
    rows = [[r.run_id, r.method, r.seed, r.backend or "auto", " ".join(r.extensions) or "—",
             " ".join(f"{m}×" for m in r.extra_multipliers) or "—", "done" if r.run_id in done else "to do"]
            for r in study.runs]
    return markdown_table(["run", "method", "seed", "backend", "extensions", "extra lengths", "status"], rows)

