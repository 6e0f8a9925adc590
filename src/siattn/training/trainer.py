"""The training loop behind ``siattn train``: data, model, optimisers, evaluation, checkpoints, resume, DDP.

A run folder holds everything a run did:

    config.json      the full resolved TrainConfig + what was derived (world size, accumulation, device, ...)
    metrics.jsonl    one JSON object per line: {"kind": "train", "step", "loss", "lr_mult", "tokens", ...}
                     and {"kind": "val", "step", "loss": {"512": ..., "2048": ...}} (nats/token)
    checkpoints/     step_XXXXXX/ folders (siattn.model.checkpoint) and LATEST
    loss.png         the loss curves; summary.json: final numbers
    tensorboard/     the same metrics as TensorBoard events (with --tensorboard)

Resuming restores weights, optimiser state, the data loader position and RNG states, so on CPU a resumed run
is bit-identical to an uninterrupted one. SIGINT/SIGTERM finish the current step, save a checkpoint and stop.
Under torchrun every rank reads its own slice of each global batch and only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import functools
import json
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

from siattn.evaluation.common import write_json
from siattn.model.checkpoint import (
    CHECKPOINTS,
    CheckpointError,
    load_training_state,
    read_checkpoint_state,
    save_run_checkpoint,
)
from siattn.model.config import TrainConfig
from siattn.model.gpt import GPT
from siattn.model.optim import build_optimizer
from siattn.model.schedules import lr_multiplier
from siattn.precision import autocast as precision_autocast
from siattn.training.distributed import DistInfo, all_reduce_sum, any_rank, barrier

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


def eval_lengths(config: TrainConfig) -> list[int]:
    return [config.seq_len * m for m in config.eval_multipliers]


def eval_token_count(config: TrainConfig, val_tokens: int) -> int:
    """Scored tokens per length: ``eval_tokens``, within the validation split, rounded down to a multiple of
    every evaluation length (:func:`siattn.evaluation.scored_tokens`). Raises when the split cannot hold that."""
    from siattn.evaluation.loss_by_length import scored_tokens

    lengths = eval_lengths(config)
    budget = min(config.eval_tokens, val_tokens - 1)
    step = math.lcm(*lengths)
    if budget < step:
        raise ValueError(f"the validation split ({val_tokens} tokens) or eval_tokens ({config.eval_tokens}) is less "
                         f"than one window of every evaluation length (lcm {step} of {lengths}); use smaller "
                         "--eval-multipliers or more data")
    return scored_tokens(budget, lengths)


@torch.no_grad()
def evaluate(model: GPT, tokens: Any, lengths: list[int], n_tokens: int, batch_tokens: int, info: DistInfo,
             dtype: str = "auto") -> dict[int, float]:
    """Mean loss (nats/token) over the same ``n_tokens`` validation targets at each length
    (:func:`siattn.evaluation.loss_at_length`); ranks split the batches of windows and sum their losses."""
    from siattn.evaluation.loss_by_length import loss_at_length

    out = {}
    for length in lengths:
        part = loss_at_length(model, tokens, length, n_tokens, batch_size=max(1, batch_tokens // length),
                              dtype=dtype, progress=False, shard=(info.rank, info.world_size))
        total = torch.tensor([part.loss_sum, part.tokens], dtype=torch.float64, device=info.device)
        all_reduce_sum(total, info)
        out[length] = float(total[0] / total[1])
    return out


# ---- metrics ----

class MetricsLog:
    """metrics.jsonl, appended line by line (rank 0 only); on resume, lines after the checkpoint's step go.

    With ``tensorboard_dir`` every record is also written as TensorBoard scalars (``train/loss``,
    ``train/lr_mult``, ``train/tokens_per_s``, ``val/loss@LENGTH``, x axis = step); on resume TensorBoard's
    own purge drops events after the checkpoint's step, as the JSONL does.
    """

    def __init__(self, path: Path, enabled: bool, resume_step: int | None = None,
                 tensorboard_dir: Path | None = None):
        self.path, self.enabled = path, enabled
        self._tb = None
        if not enabled:
            return
        if resume_step is not None and path.exists():
            keep = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            path.write_text("".join(line + "\n" for line in keep))
        elif resume_step is None:
            path.write_text("")
        if tensorboard_dir is not None:
            self._tb = tensorboard_writer(tensorboard_dir, purge_step=None if resume_step is None
                                          else resume_step + 1)
        self._file = open(path, "a")  # noqa: SIM115 (kept open for the run)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            step = record["step"]
            if record["kind"] == "val":
                for length, loss in record["loss"].items():
                    self._tb.add_scalar(f"val/loss@{length}", loss, step)
            else:
                for key in ("loss", "lr_mult", "tokens_per_s"):
                    if key in record:
                        self._tb.add_scalar(f"{record['kind']}/{key}", record[key], step)
            self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            if self._tb is not None:
                self._tb.close()


def tensorboard_writer(log_dir: Path, purge_step: int | None = None) -> Any:
    """A ``torch.utils.tensorboard.SummaryWriter`` on ``log_dir``; a clear error when tensorboard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:  # torch imports it lazily and needs the tensorboard package
        raise RuntimeError("--tensorboard needs the tensorboard package: pip install 'siattn[tensorboard]' "
                           f"({e})") from None
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_metrics(metrics_path: Path, out: Path, *, unigram_entropy: float | None = None, title: str = "") -> Path:
    """Training loss per logged step and validation loss per length, nats/token; returns ``out``."""
    from siattn.plotting import pyplot, save_figure

    plt = pyplot()
    records = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if r["kind"] == "train"]
    val = [r for r in records if r["kind"] == "val"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    if train:
        ax.plot(*zip(*train), lw=1, color="0.6", label="train")
    for length in (val[-1]["loss"] if val else {}):
        pts = [(r["step"], r["loss"][length]) for r in val if length in r["loss"]]
        ax.plot(*zip(*pts), marker="o", label=f"val @ {length}")
    if unigram_entropy is not None:
        ax.axhline(unigram_entropy, ls="--", color="k", lw=0.8, label=f"unigram entropy {unigram_entropy:.2f}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, out, dpi=120)


# ---- configuration on resume ----

def resume_config(checkpoint: str | Path, overrides: dict[str, Any]) -> tuple[TrainConfig, list[str]]:
    """The checkpoint's TrainConfig with the overrides that may change on resume applied, and the names of
    overrides that were ignored because they would change what is being trained."""
    from siattn.model.config import resolve_config

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
    from siattn.model.checkpoint import resolve_checkpoint

    if not (run_dir / CHECKPOINTS).exists():
        return None
    try:
        return resolve_checkpoint(run_dir)
    except CheckpointError:
        return None


# ---- the loop ----

def _batches(loader: Iterator, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for x, y in loader:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def train(config: TrainConfig, info: DistInfo | None = None, *, resume: str | Path | None = None,
          overwrite: bool = False, progress: bool = True, log: Callable[[str], Any] = print) -> RunResult:
    """Train ``config`` (resuming from the checkpoint ``resume`` when given). Returns what the run did."""
    from tqdm.auto import tqdm

    from siattn.data import SequenceLoader, unigram_entropy

    info = info or DistInfo()
    log = log if info.is_main else (lambda *_: None)
    run_dir = Path(config.run_dir)
    device = info.device
    if info.is_main:
        if resume is None and find_checkpoint(run_dir) is not None:
            if not overwrite:
                raise FileExistsError(f"{run_dir} already holds checkpoints: pass --resume to continue that run, "
                                      "--overwrite to start it again, or --out for a new run folder")
            shutil.rmtree(run_dir / CHECKPOINTS)
        run_dir.mkdir(parents=True, exist_ok=True)
    barrier(info)

    # data
    ds = open_dataset(config, info, progress=progress and info.is_main, log=log)
    config.data = str(Path(ds.path).resolve())  # checkpoints name the data wherever they are read from
    if ds.vocab_size != config.model.vocab_size:
        log(f"vocab_size {config.model.vocab_size} -> {ds.vocab_size} (the dataset's tokenizer)")
        config.model.vocab_size = ds.vocab_size
    per_step = config.batch_size
    micro = config.micro_batch_size or max(1, per_step // info.world_size)
    if per_step % (micro * info.world_size):
        raise ValueError(f"batch_size {per_step} is not a multiple of micro_batch_size {micro} × world size "
                         f"{info.world_size}")
    accum = per_step // (micro * info.world_size)
    loader = SequenceLoader(ds.train, config.seq_len, micro, seed=config.seed, rank=info.rank,
                            world_size=info.world_size)
    lengths = eval_lengths(config)
    n_eval = eval_token_count(config, len(ds.val))

    # model and optimisers
    torch.manual_seed(config.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    raw_model = GPT(config.model).to(device)
    optimizer = build_optimizer(raw_model, config)
    start_step, train_seconds, tokens_seen = 0, 0.0, 0
    resumed_from: Path | None = None
    resumed_metrics: dict[str, Any] = {}
    resumed_val: dict[int, float] = {}
    if resume is not None:
        state = load_training_state(resume, raw_model, optimizer, device)
        loader.load_state_dict(state["loader"])
        start_step = int(state["step"])
        train_seconds = float(state["extra"].get("train_seconds", 0.0))
        tokens_seen = int(state["extra"].get("tokens_seen", 0))
        resumed_from = Path(state["path"])
        resumed_metrics = dict(state.get("metrics") or {})
        resumed_val = {int(k): v for k, v in resumed_metrics.get("val", {}).items()}
        log(f"resumed from {state['path']} at step {start_step}")
    model: torch.nn.Module = raw_model
    if config.compile:
        model = torch.compile(model)
    if info.distributed:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    autocast = functools.partial(precision_autocast, device, config.dtype)

    n_params = raw_model.num_parameters()
    unigram = unigram_entropy(ds.val)
    epochs = config.steps * config.tokens_per_step / max(loader.tokens_per_epoch, 1)
    if info.is_main:
        resolved = {"train_config": config.to_dict(), "world_size": info.world_size, "micro_batch_size": micro,
                    "grad_accum": accum, "device": str(device), "parameters": n_params,
                    "tokens_per_step": config.tokens_per_step, "eval_lengths": lengths,
                    "eval_tokens_per_length": n_eval, "unigram_entropy_val": unigram,
                    "train_tokens": len(ds.train), "epochs": epochs, "torch": torch.__version__,
                    "python": sys.version.split()[0], "data": config.data}
        write_json(run_dir / "config.json", resolved)
    log(f"{config.name}: {config.model.method}, {n_params / 1e6:.2f}M parameters, {config.steps} steps × "
        f"{config.batch_size} × {config.seq_len} tokens (micro-batch {micro}, accumulation {accum}, "
        f"{info.world_size} rank(s), {device}); {epochs:.2f} epochs of "
        f"{len(ds.train):,} training tokens")
    metrics = MetricsLog(run_dir / "metrics.jsonl", info.is_main, start_step if resume is not None else None,
                         tensorboard_dir=run_dir / "tensorboard" if config.tensorboard else None)

    tok_info = dict(ds.manifest.get("tokenizer", {}))
    tok_file = Path(ds.path) / tok_info["file"] if tok_info.get("file") else None
    extra_files = {tok_file.name: tok_file} if tok_file is not None and tok_file.is_file() else {}
    if extra_files:
        tok_info["file"] = tok_file.name  # relative to the checkpoint folder

    written: list[int] = []  # with the resumed-from step, the run's line: retention prunes nothing else

    def save(step: int, last: dict[str, Any]) -> Path | None:
        path = None
        if info.is_main:
            written.append(step)
            path = save_run_checkpoint(run_dir, step, keep=config.keep_checkpoints, base_step=start_step,
                                       written=written, model=raw_model,
                                       config=config.model, optimizer=optimizer, train_config=config,
                                       loader_state=loader.state_dict(), metrics=last,
                                       extra={"train_seconds": train_seconds, "tokens_seen": tokens_seen,
                                              "world_size": info.world_size, "tokenizer": tok_info,
                                              "data": config.data},
                                       extra_files=extra_files)
        barrier(info)
        return path

    batches = _batches(loader, device)
    last: dict[str, Any] = resumed_metrics  # the newest train loss and validation, saved with checkpoints
    final_val: dict[int, float] = {}
    checkpoint: Path | None = resumed_from
    step = start_step
    bar = tqdm(total=config.steps, initial=start_step, disable=not (progress and info.is_main), unit="step",
               dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 30)  # sparse lines in log files
    window_t, window_tokens = 0.0, 0
    loss_sum, loss_count = torch.zeros((), device=device), 0  # micro-batch losses since the last log line
    with StopRequest() as stop:
        raw_model.train()
        while step < config.steps:
            t0 = time.perf_counter()
            optimizer.set_lr_multiplier(lr_multiplier(step, config.steps, schedule=config.schedule,
                                                      cooldown_frac=config.cooldown_frac,
                                                      warmup_steps=config.warmup_steps))
            for micro_step in range(accum):
                x, y = next(batches)
                sync = micro_step == accum - 1 or not info.distributed
                with contextlib.nullcontext() if sync else model.no_sync(), autocast():
                    _, loss = model(x, y)
                (loss / accum).backward()
                loss_sum += loss.detach()
                loss_count += 1
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(raw_model.parameters(), config.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            tokens_seen += config.tokens_per_step
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            train_seconds += dt
            window_t += dt
            window_tokens += config.tokens_per_step
            bar.update(1)

            if step % config.log_every == 0 or step == config.steps:
                train_loss = float(all_reduce_sum(loss_sum, info)) / (loss_count * info.world_size)
                loss_sum.zero_()
                loss_count = 0
                tps = window_tokens / max(window_t, 1e-9)
                window_t, window_tokens = 0.0, 0
                last["train_loss"] = train_loss
                metrics.write({"kind": "train", "step": step, "loss": train_loss,
                               "lr_mult": optimizer.param_groups[0]["lr"] / optimizer.param_groups[0]["base_lr"],
                               "tokens": tokens_seen, "tokens_per_s": tps, "seconds": train_seconds})
                bar.set_postfix(loss=f"{train_loss:.4f}", tok_s=f"{tps:,.0f}")
                if not math.isfinite(train_loss):
                    raise FloatingPointError(f"training loss became {train_loss} at step {step}; lower the "
                                             "learning rates (--lr-muon, --lr-embed, --lr-head)")

            if step % config.eval_every == 0 or step == config.steps:
                final_val = evaluate(raw_model, ds.val, lengths, n_eval, config.eval_batch_tokens, info, config.dtype)
                last["val"] = {str(k): v for k, v in final_val.items()}
                metrics.write({"kind": "val", "step": step, "loss": last["val"]})
                bar.write(f"step {step}: val " + ", ".join(f"@{k} {v:.4f}" for k, v in final_val.items()))

            stopping = any_rank(stop.signal is not None, info)
            if step % config.ckpt_every == 0 or step == config.steps or stopping:
                checkpoint = save(step, last)
            if stopping:
                break
    bar.close()
    if not final_val:  # resumed a finished run: nothing trained; report its last validation
        final_val = resumed_val if set(resumed_val) == set(lengths) else evaluate(
            raw_model, ds.val, lengths, n_eval, config.eval_batch_tokens, info, config.dtype)
    metrics.close()
    plot = None
    if info.is_main and (run_dir / "metrics.jsonl").stat().st_size:
        plot = plot_metrics(run_dir / "metrics.jsonl", run_dir / "loss.png", unigram_entropy=unigram,
                            title=f"{config.name} · {config.model.method}")
    result = RunResult(run_dir=run_dir, step=step, steps=config.steps, final_val=final_val, unigram_entropy=unigram,
                       checkpoint=checkpoint, metrics_path=run_dir / "metrics.jsonl", plot_path=plot,
                       stopped_by=stop.signal, train_seconds=train_seconds,
                       tokens_per_s=tokens_seen / max(train_seconds, 1e-9),
                       extra={"parameters": n_params, "grad_accum": accum, "micro_batch_size": micro})
    if info.is_main:
        summary = {"step": step, "steps": config.steps, "stopped_by": stop.signal,
                   "final_val": {str(k): v for k, v in final_val.items()}, "unigram_entropy_val": unigram,
                   "train_seconds": train_seconds, "tokens_seen": tokens_seen, "parameters": n_params,
                   "checkpoint": str(checkpoint) if checkpoint else None}
        write_json(run_dir / "summary.json", summary)
    return result
