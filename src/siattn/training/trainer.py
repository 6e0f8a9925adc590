"""The training loop behind ``siattn train``: data, model, optimisers, evaluation, checkpoints, resume, DDP.

A run folder holds everything a run did:

    config.json      the full resolved TrainConfig + what was derived (world size, accumulation, device, ...)
                     and where it ran: commit, hardware, versions, the dataset's fingerprint and shard sha256
    metrics.jsonl    one JSON object per line: {"kind": "train", "step", "loss", "lr_mult", "tokens", ...}
                     and {"kind": "val", "step", "loss": {"512": ..., "2048": ...}} (nats/token)
    checkpoints/     step_XXXXXX/ folders (siattn.training.checkpointing) and LATEST
    loss.png         the loss curves; summary.json: final numbers
    tensorboard/     the same metrics as TensorBoard events (with --tensorboard)

Resuming restores weights, optimiser state, the data loader position and RNG states, so on CPU a resumed run
is bit-identical to an uninterrupted one. SIGINT/SIGTERM finish the current step, save a checkpoint and stop.
Under torchrun every rank reads its own slice of each global batch and only rank 0 writes.

Each step is :func:`siattn.training.step.optimizer_step` over the step's micro-batches; validation is
:mod:`siattn.training.validation`, the metrics file :mod:`siattn.training.metrics`.
"""

from __future__ import annotations

import contextlib
import functools
import math
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from siattn.io import write_json
from siattn.model import GPT
from siattn.precision import autocast as precision_autocast
from siattn.precision import use_tf32
from siattn.provenance import dataset_record, environment
from siattn.training.checkpointing import (
    CHECKPOINTS,
    CheckpointError,
    load_training_state,
    read_checkpoint_state,
    resolve_checkpoint,
    save_run_checkpoint,
)
from siattn.training.config import TrainConfig, resolve_config
from siattn.training.distributed import DistInfo, all_reduce_sum, any_rank, barrier
from siattn.training.lr_schedules import lr_multiplier
from siattn.training.metrics import MetricsLog, plot_metrics
from siattn.training.optim import OptimizerSet, build_optimizer
from siattn.training.step import optimizer_step
from siattn.training.validation import eval_token_count, evaluate, validation_lengths

# fields that may change when a run is resumed (everything else must match the checkpoint's config)
# (``data`` may move; a different dataset is caught when the loader's window count does not match)
RESUMABLE_OVERRIDES = frozenset({"steps", "eval_every", "ckpt_every", "log_every", "keep_checkpoints", "compile",
                                 "tensorboard", "attn_backend", "out", "eval_multipliers", "data"})
SIGNAL_EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


@dataclass
class RunResult:
    run_dir: Path
    step: int
    steps: int
    final_val: dict[int, float]
    unigram_entropy: float | None
    checkpoint: Path | None
    metrics_path: Path
    plot_path: Path | None
    stopped_by: str | None = None  # "SIGINT" / "SIGTERM" when a signal ended the run early
    train_seconds: float = 0.0
    tokens_per_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return SIGNAL_EXIT_CODES.get(self.stopped_by or "", 0)


class StopRequest:
    """Turns the first SIGINT/SIGTERM into a flag the loop checks after each step; a second one stops at once."""

    def __init__(self) -> None:
        self.signal: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None:  # asked twice: give up on the clean stop
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name
        print(f"\n{self.signal}: finishing this step, saving a checkpoint, then stopping "
              "(send it again to stop at once)", file=sys.stderr, flush=True)

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ---- data ----

def open_dataset(config: TrainConfig, info: DistInfo, progress: bool = True, log: Callable = print) -> Any:
    """The run's TokenDataset; prepares ``config.data`` from ``config.data_source`` first when it is missing."""
    from siattn.data import DataError, TokenDataset, prepare_dataset

    path = Path(config.data)
    if not path.exists():
        if not config.data_source:
            raise DataError(f"--data {str(path)!r}: no such dataset folder; prepare one with `siattn data prepare "
                            f"SOURCE --out {path}`, or pass --data-source SOURCE to prepare it there")
        if info.is_main:
            log(f"{path} does not exist: preparing it from {config.data_source!r} with tokenizer "
                f"{config.tokenizer!r}")
            prepare_dataset(config.data_source, path, tokenizer=config.tokenizer, progress=progress)
        barrier(info)
    return TokenDataset(path)


# ---- configuration on resume ----

def resume_config(checkpoint: str | Path, overrides: dict[str, Any]) -> tuple[TrainConfig, list[str]]:
    """The checkpoint's TrainConfig with the overrides that may change on resume applied, and the names of
    overrides that were ignored because they would change what is being trained."""
    _, state = read_checkpoint_state(checkpoint, verify=False)
    if not state.get("train_config"):
        raise CheckpointError(f"{checkpoint}: holds no training config; it cannot be resumed")
    saved = TrainConfig.from_dict(state["train_config"])
    allowed = {k: v for k, v in overrides.items() if k in RESUMABLE_OVERRIDES and v is not None}
    ignored = [k for k, v in overrides.items() if v is not None and k not in RESUMABLE_OVERRIDES
               and v != _config_value(saved, k)]
    return resolve_config(saved, **allowed), ignored


def _config_value(config: TrainConfig, name: str) -> Any:
    return getattr(config.model, name) if hasattr(config.model, name) else getattr(config, name, None)


def find_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run folder, or None."""
    if not (run_dir / CHECKPOINTS).exists():
        return None
    try:
        return resolve_checkpoint(run_dir)
    except CheckpointError:
        return None


# ---- setting up ----

def batch_layout(config: TrainConfig, info: DistInfo) -> tuple[int, int]:
    """(micro-batch size, accumulation steps): ``batch_size`` sequences per step = micro × accumulation × ranks."""
    per_step = config.batch_size
    micro = config.micro_batch_size or max(1, per_step // info.world_size)
    if per_step % (micro * info.world_size):
        raise ValueError(f"batch_size {per_step} is not a multiple of micro_batch_size {micro} × world size "
                         f"{info.world_size}")
    return micro, per_step // (micro * info.world_size)


def _prepare_run_dir(run_dir: Path, resume: str | Path | None, overwrite: bool, info: DistInfo) -> None:
    """Create the run folder; refuse to start over a run's checkpoints unless ``overwrite`` (then drop them)."""
    if info.is_main:
        if resume is None and find_checkpoint(run_dir) is not None:
            if not overwrite:
                raise FileExistsError(f"{run_dir} already holds checkpoints: pass --resume to continue that run, "
                                      "--overwrite to start it again, or --out for a new run folder")
            shutil.rmtree(run_dir / CHECKPOINTS)
        run_dir.mkdir(parents=True, exist_ok=True)
    barrier(info)


def _build_model(config: TrainConfig, device: torch.device) -> tuple[GPT, OptimizerSet]:
    """The model (initialised from ``config.seed``) on ``device`` and its optimisers."""
    torch.manual_seed(config.seed)
    use_tf32(device)
    model = GPT(config.model).to(device)
    return model, build_optimizer(model, config)


@dataclass
class _RunState:
    """What the loop carries from step to step; a resumed run starts from its checkpoint's."""

    step: int = 0
    train_seconds: float = 0.0
    tokens_seen: int = 0
    last: dict[str, Any] = field(default_factory=dict)  # the newest train loss and validation, saved with checkpoints
    final_val: dict[int, float] = field(default_factory=dict)
    checkpoint: Path | None = None
    resumed_val: dict[int, float] = field(default_factory=dict)


def _restore(resume: str | Path, model: GPT, optimizer: OptimizerSet, loader: Any, device: torch.device,
             log: Callable[[str], Any]) -> _RunState:
    """Load weights, optimiser, loader position and RNG states from the checkpoint ``resume``."""
    state = load_training_state(resume, model, optimizer, device)
    loader.load_state_dict(state["loader"])
    metrics = dict(state.get("metrics") or {})
    run = _RunState(step=int(state["step"]), train_seconds=float(state["extra"].get("train_seconds", 0.0)),
                    tokens_seen=int(state["extra"].get("tokens_seen", 0)), last=metrics,
                    checkpoint=Path(state["path"]),
                    resumed_val={int(k): v for k, v in metrics.get("val", {}).items()})
    log(f"resumed from {state['path']} at step {run.step}")
    return run


def _wrap(model: GPT, config: TrainConfig, info: DistInfo) -> torch.nn.Module:
    """The module the loop calls: ``model``, compiled with ``config.compile``, inside DDP under torchrun."""
    wrapped: torch.nn.Module = model
    if config.compile:
        wrapped = torch.compile(wrapped)
    if info.distributed:
        device = info.device
        wrapped = DistributedDataParallel(wrapped, device_ids=[device.index] if device.type == "cuda" else None)
    return wrapped


def _tokenizer_files(ds: Any) -> tuple[dict[str, Any], dict[str, Path]]:
    """The dataset's tokenizer description and its file, which every checkpoint carries (path made relative)."""
    tok_info = dict(ds.manifest.get("tokenizer", {}))
    tok_file = Path(ds.path) / tok_info["file"] if tok_info.get("file") else None
    extra_files = {tok_file.name: tok_file} if tok_file is not None and tok_file.is_file() else {}
    if extra_files:
        tok_info["file"] = tok_file.name  # relative to the checkpoint folder
    return tok_info, extra_files


# ---- the loop ----

def _batches(loader: Iterator, device: torch.device,
             eod_id: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict[str, Any]]]:
    """(x, y, forward keywords) on ``device``; with ``eod_id`` (``pack_documents``) the micro-batch is one packed
    row with its ``cu_seqlens`` (kept on the host: the backends read its values there)."""
    from siattn.data import pack_rows

    for x, y in loader:
        kwargs: dict[str, Any] = {}
        if eod_id is not None:
            x, y, kwargs["cu_seqlens"] = pack_rows(x, y, eod_id)
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True), kwargs


def _micro_losses(model: torch.nn.Module, batches: Iterator, accum: int, info: DistInfo,
                  autocast: Callable) -> Iterator[torch.Tensor]:
    """The losses of one step's ``accum`` micro-batches; under DDP the gradients are all-reduced on the last."""
    for micro_step in range(accum):
        x, y, kwargs = next(batches)
        sync = micro_step == accum - 1 or not info.distributed
        with contextlib.nullcontext() if sync else model.no_sync(), autocast():
            _, loss = model(x, y, **kwargs)
        yield loss


def train(config: TrainConfig, info: DistInfo | None = None, *, resume: str | Path | None = None,
          overwrite: bool = False, progress: bool = True, log: Callable[[str], Any] = print) -> RunResult:
    """Train ``config`` (resuming from the checkpoint ``resume`` when given). Returns what the run did."""
    from tqdm.auto import tqdm

    from siattn.data import SequenceLoader, unigram_entropy

    info = info or DistInfo()
    log = log if info.is_main else (lambda *_: None)
    run_dir = Path(config.run_dir)
    device = info.device
    _prepare_run_dir(run_dir, resume, overwrite, info)

    # data
    ds = open_dataset(config, info, progress=progress and info.is_main, log=log)
    config.data = str(Path(ds.path).resolve())  # checkpoints name the data wherever they are read from
    if ds.vocab_size != config.model.vocab_size:
        log(f"vocab_size {config.model.vocab_size} -> {ds.vocab_size} (the dataset's tokenizer)")
        config.model.vocab_size = ds.vocab_size
    micro, accum = batch_layout(config, info)
    loader = SequenceLoader(ds.train, config.seq_len, micro, seed=config.seed, rank=info.rank,
                            world_size=info.world_size)
    lengths = validation_lengths(config)
    n_eval = eval_token_count(config, len(ds.val))

    # model and optimisers
    raw_model, optimizer = _build_model(config, device)
    run = _RunState() if resume is None else _restore(resume, raw_model, optimizer, loader, device, log)
    model = _wrap(raw_model, config, info)
    autocast = functools.partial(precision_autocast, device, config.dtype)

    n_params = raw_model.num_parameters()
    unigram = unigram_entropy(ds.val)
    epochs = config.steps * config.tokens_per_step / max(loader.tokens_per_epoch, 1)
    if info.is_main:
        resolved = {"train_config": config.to_dict(), "world_size": info.world_size, "micro_batch_size": micro,
                    "grad_accum": accum, "device": str(device), "parameters": n_params,
                    "tokens_per_step": config.tokens_per_step, "eval_lengths": lengths,
                    "eval_tokens_per_length": n_eval, "unigram_entropy_val": unigram,
                    "train_tokens": len(ds.train), "epochs": epochs, "data": config.data,
                    "dataset": dataset_record(ds), **environment(device)}
        write_json(run_dir / "config.json", resolved)
    log(f"{config.name}: {config.model.method}, {n_params / 1e6:.2f}M parameters, {config.steps} steps × "
        f"{config.batch_size} × {config.seq_len} tokens (micro-batch {micro}, accumulation {accum}, "
        f"{info.world_size} rank(s), {device}); {epochs:.2f} epochs of "
        f"{len(ds.train):,} training tokens")
    metrics = MetricsLog(run_dir / "metrics.jsonl", info.is_main, run.step if resume is not None else None,
                         tensorboard_dir=run_dir / "tensorboard" if config.tensorboard else None)
    tok_info, extra_files = _tokenizer_files(ds)

    start_step = run.step
    written: list[int] = []  # with the resumed-from step, the run's line: retention prunes nothing else

    def save(step: int) -> Path | None:
        path = None
        if info.is_main:
            written.append(step)
            path = save_run_checkpoint(run_dir, step, keep=config.keep_checkpoints, base_step=start_step,
                                       written=written, model=raw_model,
                                       config=config.model, optimizer=optimizer, train_config=config,
                                       loader_state=loader.state_dict(), metrics=run.last,
                                       extra={"train_seconds": run.train_seconds, "tokens_seen": run.tokens_seen,
                                              "world_size": info.world_size, "tokenizer": tok_info,
                                              "data": config.data},
                                       extra_files=extra_files)
        barrier(info)
        return path

    def validate() -> dict[int, float]:
        return evaluate(raw_model, ds.val, lengths, n_eval, config.eval_batch_tokens, info, config.dtype)

    bar = tqdm(total=config.steps, initial=run.step, disable=not (progress and info.is_main), unit="step",
               dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 30)  # sparse lines in log files
    with StopRequest() as stop:
        batches = _batches(loader, device, ds.eod_id if config.pack_documents else None)
        _loop(config, info, run, model, raw_model, optimizer, batches, accum, autocast, metrics, bar, stop, validate,
              save)
    bar.close()
    if not run.final_val:  # resumed a finished run: nothing trained; report its last validation
        run.final_val = run.resumed_val if set(run.resumed_val) == set(lengths) else validate()
    metrics.close()
    return _finish(config, info, run, run_dir, unigram, stop.signal,
                   extra={"parameters": n_params, "grad_accum": accum, "micro_batch_size": micro})


def _loop(config: TrainConfig, info: DistInfo, run: _RunState, model: torch.nn.Module, raw_model: GPT,
          optimizer: OptimizerSet, batches: Iterator, accum: int, autocast: Callable, metrics: MetricsLog,
          bar: Any, stop: StopRequest, validate: Callable[[], dict[int, float]],
          save: Callable[[int], Path | None]) -> None:
    """Steps from ``run.step`` to ``config.steps``: train, log every ``log_every``, validate every
    ``eval_every``, checkpoint every ``ckpt_every`` and at the end or on a stop request (which ends the loop)."""
    device = info.device
    window_t, window_tokens = 0.0, 0
    loss_sum, loss_count = torch.zeros((), device=device), 0  # micro-batch losses since the last log line
    raw_model.train()
    while run.step < config.steps:
        t0 = time.perf_counter()
        mult = lr_multiplier(run.step, config.steps, schedule=config.schedule, cooldown_frac=config.cooldown_frac,
                             warmup_steps=config.warmup_steps)
        for loss in optimizer_step(optimizer, raw_model.parameters(),
                                   _micro_losses(model, batches, accum, info, autocast), lr_multiplier=mult,
                                   grad_clip=config.grad_clip, accumulation=accum):
            loss_sum += loss
            loss_count += 1
        run.step += 1
        run.tokens_seen += config.tokens_per_step
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        run.train_seconds += dt
        window_t += dt
        window_tokens += config.tokens_per_step
        bar.update(1)
        step = run.step

        if step % config.log_every == 0 or step == config.steps:
            train_loss = float(all_reduce_sum(loss_sum, info)) / (loss_count * info.world_size)
            loss_sum.zero_()
            loss_count = 0
            tps = window_tokens / max(window_t, 1e-9)
            window_t, window_tokens = 0.0, 0
            run.last["train_loss"] = train_loss
            metrics.write({"kind": "train", "step": step, "loss": train_loss,
                           "lr_mult": optimizer.param_groups[0]["lr"] / optimizer.param_groups[0]["base_lr"],
                           "tokens": run.tokens_seen, "tokens_per_s": tps, "seconds": run.train_seconds})
            bar.set_postfix(loss=f"{train_loss:.4f}", tok_s=f"{tps:,.0f}")
            if not math.isfinite(train_loss):
                raise FloatingPointError(f"training loss became {train_loss} at step {step}; lower the "
                                         "learning rates (--lr-muon, --lr-embed, --lr-head)")

        if step % config.eval_every == 0 or step == config.steps:
            run.final_val = validate()
            run.last["val"] = {str(k): v for k, v in run.final_val.items()}
            metrics.write({"kind": "val", "step": step, "loss": run.last["val"]})
            bar.write(f"step {step}: val " + ", ".join(f"@{k} {v:.4f}" for k, v in run.final_val.items()))

        stopping = any_rank(stop.signal is not None, info)
        if step % config.ckpt_every == 0 or step == config.steps or stopping:
            run.checkpoint = save(step)
        if stopping:
            break


def _finish(config: TrainConfig, info: DistInfo, run: _RunState, run_dir: Path, unigram: float | None,
            stopped_by: str | None, extra: dict[str, Any]) -> RunResult:
    """The loss plot and summary.json (rank 0), and the :class:`RunResult`."""
    plot = None
    if info.is_main and (run_dir / "metrics.jsonl").stat().st_size:
        plot = plot_metrics(run_dir / "metrics.jsonl", run_dir / "loss.png", unigram_entropy=unigram,
                            title=f"{config.name} · {config.model.method}")
    result = RunResult(run_dir=run_dir, step=run.step, steps=config.steps, final_val=run.final_val,
                       unigram_entropy=unigram, checkpoint=run.checkpoint, metrics_path=run_dir / "metrics.jsonl",
                       plot_path=plot, stopped_by=stopped_by, train_seconds=run.train_seconds,
                       tokens_per_s=run.tokens_seen / max(run.train_seconds, 1e-9), extra=extra)
    if info.is_main:
        summary = {"step": run.step, "steps": config.steps, "stopped_by": stopped_by,
                   "final_val": {str(k): v for k, v in run.final_val.items()}, "unigram_entropy_val": unigram,
                   "train_seconds": run.train_seconds, "tokens_seen": run.tokens_seen,
                   "parameters": extra["parameters"],
                   "checkpoint": str(run.checkpoint) if run.checkpoint else None}
        write_json(run_dir / "summary.json", summary)
    return result
