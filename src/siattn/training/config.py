"""Training configuration: :class:`TrainConfig` and the named presets.

``TrainConfig`` says how a run trains a network (data, batch, steps, optimiser, schedule, evaluation,
checkpoints); its ``model`` field is the network's :class:`siattn.model.GPTConfig`. A preset is a
``TrainConfig``; :func:`resolve_config` applies overrides and keeps the derived fields consistent (the model's
training length follows ``seq_len``, and so does the p-RoPE base: base = 1024 · L_train / 4096, see
:func:`siattn.positional.scaled_p_rope_base` and ARCHITECTURE.md).

| preset | layers | width | heads × dim | vocab | seq | batch (seqs) | steps | params |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
| cpu-tiny | 4 | 128 | 2 × 64 | bytes (320) | 512 | 8 | 400 | 0.87M |
| gpu-small | 8 | 512 | 4 × 128 | bytes (320) | 2048 | 64 | 600 | 25.5M |
| paper-162m | 12 | 768 | 6 × 128 | 50,304 | 4096 | 128 | 4578 | 162.2M |
| paper-304m | 16 | 1024 | 8 × 128 | 50,304 | 4096 | 224 | 10,900 | 304.3M |
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from siattn.errors import UsageError, check_int
from siattn.model.config import GPTConfig, check_fields
from siattn.model.gpt import count_parameters
from siattn.options import check_options, option
from siattn.positional.rope import scaled_p_rope_base
from siattn.precision import DTYPES

SCHEDULES = ("constant-cooldown", "cosine", "constant")


@dataclass
class TrainConfig:
    """A training run. ``batch_size`` is global (sequences per optimiser step, over all ranks and micro-steps);
    each forward sees ``micro_batch_size`` sequences, and gradient accumulation makes up the rest.

    Every field is an option of ``siattn train`` (``--field-name``; the ``model`` fields too, without prefix),
    except the derived ``model.vocab_size`` and ``model.train_length``."""

    name: str = option("custom", "the run's name (the default run folder is runs/NAME-METHOD)")
    model: GPTConfig = option(default_factory=GPTConfig, help="the network")
    data: str = option("data_cache/stdlib-bytes", "prepared dataset folder (or folder of .bin shards); prepared "
                       "from data_source when it does not exist")
    data_source: str | None = option("stdlib", "what to prepare data from when it does not exist (see `siattn "
                                     "data prepare -h`); dropped when data names another folder than the preset's")
    tokenizer: str = option("bytes", "tokenizer for that preparation: bytes | bpe:N | hf:PATH")
    seq_len: int = option(4096, "training length in tokens (the model's train_length and the p-RoPE base follow "
                          "it)", min=1)
    batch_size: int = option(128, "sequences per optimiser step (all ranks)", min=1)
    micro_batch_size: int | None = option(None, "sequences per forward on one rank (gradient accumulation makes up "
                                          "the rest; default: batch_size / world size)", min=1)
    steps: int = option(4578, "optimiser steps", min=1)
    lr_muon: float = option(0.02, "Muon lr for hidden matrices", min=0.0)
    muon_momentum: float = option(0.95, "Muon momentum", min=0.0, max=1.0, max_open=True)
    muon_adjust_lr: str = option("original", "Muon's lr scaling per matrix shape (torch.optim.Muon adjust_lr_fn; "
                                 "original: sqrt(max(1, rows/cols)), Keller Jordan's)",
                                 choices=("original", "match_rms_adamw"))
    lr_embed: float = option(0.3, "Adam lr for the embedding", min=0.0)
    lr_head: float = option(0.002, "Adam lr for the head", min=0.0)
    lr_scalar: float = option(0.002, "Adam lr for LogN scales", min=0.0)
    adam_betas: tuple[float, float] = option((0.9, 0.95), "Adam β1 β2", min=0.0, max=1.0, max_open=True)
    adam_eps: float = option(1e-10, "Adam ε", min=0.0, min_open=True)
    weight_decay: float = option(0.0, "weight decay of every optimiser", min=0.0)
    grad_clip: float | None = option(None, "clip the gradient norm to this (default: no clipping)", min=0.0,
                                     min_open=True)
    schedule: str = option("constant-cooldown", "lr multiplier over the steps", choices=SCHEDULES)
    cooldown_frac: float = option(1308 / 4578, "share of the steps in the linear cool-down", min=0.0, max=1.0)
    warmup_steps: int = option(0, "linear lr warm-up steps", min=0)
    eval_every: int = option(250, "validate every this many steps", min=1)
    eval_tokens: int = option(1 << 20, "scored validation tokens at every length", min=1)
    eval_multipliers: tuple[int, ...] = option((1, 4, 16), "validation lengths as multiples of seq_len", min=1,
                                               sep=",")
    eval_batch_tokens: int = option(1 << 16, "validation tokens per forward", min=1)
    log_every: int = option(10, "log the training loss every this many steps", min=1)
    ckpt_every: int = option(1000, "write a checkpoint every this many steps", min=1)
    keep_checkpoints: int = option(2, "newest checkpoints kept", min=0)
    seed: int = option(0, "seed of the initialisation and the data order", min=0)
    dtype: str = option("auto", "autocast dtype (auto: bfloat16 on CUDA, float32 on CPU)", choices=DTYPES)
    compile: bool = option(False, "torch.compile the model")
    pack_documents: bool = option(False, "attention and rotary positions restart at every end-of-document token "
                                  "of a training window, so no token attends across a document boundary; the "
                                  "micro-batch's windows run as one packed row (cu_seqlens) in the order of an "
                                  "unpacked run (validation stays unpacked)")
    tensorboard: bool = option(False, "also write the metrics as TensorBoard events in RUN/tensorboard (needs pip "
                               "install 'siattn[tensorboard]')")
    out: str | None = option(None, "run folder (default: runs/NAME-METHOD)")

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = GPTConfig.from_dict(self.model)
        self.adam_betas = tuple(self.adam_betas)
        self.eval_multipliers = tuple(int(m) for m in self.eval_multipliers)
        check_options(self)
        if not self.eval_multipliers:
            raise UsageError("eval_multipliers must name at least one multiple of seq_len, e.g. (1, 4, 16)")

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def run_dir(self) -> str:
        return self.out or f"runs/{self.name}-{self.model.method}"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        d["eval_multipliers"] = list(self.eval_multipliers)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return check_fields(cls, d)(**d)


def _model(**kw: Any) -> GPTConfig:
    train_length = kw["train_length"]
    kw.setdefault("p_rope_base", scaled_p_rope_base(train_length))
    return GPTConfig(**kw)


PRESETS: dict[str, TrainConfig] = {
    # ~3 minutes on 2 idle CPU cores (results/main-job): 400 steps × 8 × 512 bytes = 1.6M bytes, 0.14
    # of one pass over the 11.6 MB stdlib training split. The short run wants larger steps than the paper's
    # 4578: Muon 0.05 (Muon's relative update size does not depend on the width), head and LogN-scale Adam 0.008
    # (modded-nanogpt's head lr), and a longer cool-down (40% of the steps).
    "cpu-tiny": TrainConfig(
        name="cpu-tiny",
        model=_model(vocab_size=257, n_layer=4, n_head=2, n_embd=128, head_dim=64, train_length=512),
        data="data_cache/stdlib-bytes", data_source="stdlib", tokenizer="bytes",
        seq_len=512, batch_size=8, steps=400,
        lr_muon=0.05, lr_embed=0.3, lr_head=0.008, lr_scalar=0.008, cooldown_frac=0.4,
        eval_every=100, eval_tokens=1 << 16, eval_multipliers=(1, 4), eval_batch_tokens=1 << 14,
        log_every=10, ckpt_every=200,
    ),
    # One run of the comparison grid (train, evaluate, needle, passkey) fits a 10-minute GPU lease: 25.5M
    # parameters on the bytes of every Python source file of the installation (python-all: 300.7M training bytes
    # with CPython 3.11's installation here, 378.7M on the GPU machines' 3.12), 600 steps × 64 × 2048 = 78.6M
    # tokens, about a quarter of one pass. Measured: 609k tokens/s on one H200 with si-p-rope on the fused
    # kernel (results/gpu-small). Validation at 1×, 4×, 16× (2k, 8k, 32k).
    "gpu-small": TrainConfig(
        name="gpu-small",
        model=_model(vocab_size=257, n_layer=8, n_head=4, n_embd=512, head_dim=128, train_length=2048),
        data="data_cache/python-all-bytes", data_source="python-all", tokenizer="bytes",
        seq_len=2048, batch_size=64, micro_batch_size=32, steps=600,
        eval_every=120, eval_tokens=1 << 20, eval_multipliers=(1, 4, 16), eval_batch_tokens=1 << 17,
        log_every=10, ckpt_every=300,
    ),
    # The paper's 162M model: 2.4B tokens (4578 steps × 128 × 4096), constant lr 3270 steps then linear
    # cool-down over 1308. FineWeb with GPT-2 tokens: modded-nanogpt .bin shards (fineweb_train_*.bin,
    # fineweb_val_*.bin) read in place from data/fineweb10B, or --data another prepared dataset.
    "paper-162m": TrainConfig(
        name="paper-162m",
        model=_model(vocab_size=50_257, n_layer=12, n_head=6, n_embd=768, head_dim=128, train_length=4096),
        data="data/fineweb10B", data_source=None, tokenizer="ids:50257:50256",
        seq_len=4096, batch_size=128, micro_batch_size=16, steps=4578,
        eval_every=500, eval_tokens=10_000_000, eval_multipliers=(1, 4, 16), eval_batch_tokens=1 << 18,
        ckpt_every=500,
    ),
    # The paper's 304M model: 10B tokens over 10.9k steps, cosine to 0, Muon lr × 768/1024.
    "paper-304m": TrainConfig(
        name="paper-304m",
        model=_model(vocab_size=50_257, n_layer=16, n_head=8, n_embd=1024, head_dim=128, train_length=4096),
        data="data/fineweb10B", data_source=None, tokenizer="ids:50257:50256",
        seq_len=4096, batch_size=224, micro_batch_size=16, steps=10_900,
        lr_muon=0.02 * 768 / 1024, schedule="cosine",
        eval_every=1000, eval_tokens=10_000_000, eval_multipliers=(1, 4, 16), eval_batch_tokens=1 << 18,
        ckpt_every=500,
    ),
}

MODEL_FIELDS = {f.name for f in dataclasses.fields(GPTConfig)}
TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)} - {"model"}


def resolve_config(preset: str | TrainConfig = "cpu-tiny", **overrides: Any) -> TrainConfig:
    """A preset (by name) with ``overrides`` applied; None values are ignored.

    Overrides may name TrainConfig or GPTConfig fields (``method=``, ``n_layer=``, ``seq_len=``...). Changing
    ``seq_len`` moves the model's ``train_length`` with it, and the p-RoPE base to 1024·L/4096, unless those are
    given too.
    """
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
        preset = PRESETS[preset]
    overrides = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(overrides) - MODEL_FIELDS - TRAIN_FIELDS)
    if unknown:
        raise ValueError(f"unknown config fields {unknown}")
    model_kw = {k: v for k, v in overrides.items() if k in MODEL_FIELDS}
    train_kw = {k: v for k, v in overrides.items() if k in TRAIN_FIELDS}
    if "data" in train_kw and "data_source" not in train_kw and not _same_path(train_kw["data"], preset.data):
        train_kw["data_source"] = None  # the preset's source is prepared at the preset's path only
    seq_len = check_int("seq_len", train_kw.get("seq_len", preset.seq_len), min=1)  # before train_length follows
    if seq_len != preset.model.train_length:
        model_kw.setdefault("train_length", seq_len)
    if "train_length" in model_kw:
        model_kw.setdefault("p_rope_base", scaled_p_rope_base(model_kw["train_length"]))
    if "n_head" in model_kw and "n_kv_head" not in model_kw:
        model_kw["n_kv_head"] = None
    model = dataclasses.replace(preset.model, **model_kw)
    return dataclasses.replace(preset, model=model, **train_kw)


def _same_path(a: str, b: str) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def describe_presets() -> list[dict[str, Any]]:
    """One row per preset: parameters (counted without allocating), shapes, tokens."""
    rows = []
    for name, cfg in PRESETS.items():
        m = cfg.model
        rows.append({"preset": name, "params": count_parameters(m), "n_layer": m.n_layer, "n_embd": m.n_embd,
                     "n_head": m.n_head, "head_dim": m.head_dim, "vocab": m.padded_vocab_size,
                     "seq_len": cfg.seq_len, "batch_size": cfg.batch_size, "steps": cfg.steps,
                     "tokens": cfg.steps * cfg.tokens_per_step, "p_rope_base": m.p_rope_base})
    return rows
