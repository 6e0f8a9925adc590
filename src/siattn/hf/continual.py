"""Continual pre-training of a transformers causal LM with siattn (``siattn hf-train``), on transformers' Trainer.

The path the paper's second experiment takes with Llama-2 (convert, continue pre-training at the model's length,
compare loss by length), for any Llama-family model:

1. load the model (a folder, or a ``.gguf`` file that transformers dequantises; offline);
2. ``method="si-p-rope"``: :func:`siattn.hf.convert` (p-RoPE + the scale-invariant transform); ``method="rope"``:
   keep the model as it is (the baseline trained the same way);
3. validation loss at ``eval_multipliers`` × ``seq_len`` before training (:func:`siattn.evaluation.loss_at_lengths`
   through :class:`~siattn.hf.models.CausalLMAdapter`, the same numbers ``siattn eval`` gives);
4. ``steps`` optimiser steps of transformers' ``Trainer`` (AdamW, warm-up then constant lr, mixed precision on
   CUDA, optional gradient checkpointing; several processes through ``torchrun``/``accelerate launch``) on random
   windows of ``seq_len`` tokens of a prepared dataset (``siattn data prepare TEXT --tokenizer hf:MODEL``). With
   ``pack_documents`` the position ids restart at every end-of-document token, so each document attends only to
   itself; the ``micro_batch_size`` windows of one forward go in as one packed row (:func:`flatten_windows`), so
   every backend of the bridge takes its ``cu_seqlens`` path whatever the micro-batch;
5. the loss by length again, the model saved with its tokenizer to ``OUT/model`` (the folder replaced whole; it
   loads back with :func:`siattn.hf.models.load_model`), and ``OUT/result.json``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from siattn.backends.varlen import positions_in_documents
from siattn.data.loader import pack_rows
from siattn.options import check_options, option
from siattn.positional.rope import scaled_p_rope_base
from siattn.schedule import DEFAULT_TAU

METHODS = ("si-p-rope", "rope")


@dataclass(kw_only=True)
class ContinualConfig:
    """Continual pre-training of a transformers model (``siattn hf-train``)."""

    model: str = option(help="a transformers model folder, or a .gguf file (dequantised on load; pip install gguf)",
                        metavar="PATH")
    data: str = option(help="prepared dataset folder made with the model's tokenizer (siattn data prepare TEXT "
                       "--tokenizer hf:MODEL_FOLDER)", metavar="DIR")
    method: str = option("si-p-rope", "si-p-rope: convert the model (p-RoPE and the scale-invariant transform); "
                         "rope: keep its RoPE (the baseline, trained the same way)", choices=METHODS)
    tau: float = option(DEFAULT_TAU, "τ of the scale-invariant transform", min=0.0, min_open=True)
    seq_len: int = option(1024, "training length in tokens (the converted p-RoPE base follows it)", min=2)
    steps: int = option(100, "optimiser steps", min=1)
    batch_size: int = option(8, "sequences per optimiser step (all processes)", min=1)
    micro_batch_size: int = option(1, "sequences per forward in one process, as one packed row of "
                                   "micro_batch_size × seq_len tokens (raise it on a GPU)", min=1)
    lr: float = option(2e-5, "AdamW learning rate (the paper's for Llama-2)", min=0.0, min_open=True)
    warmup_steps: int = option(10, "linear warm-up steps, then a constant lr", min=0)
    weight_decay: float = option(0.0, "AdamW weight decay", min=0.0)
    pack_documents: bool = option(True, "position ids restart at every end-of-document token (no attention "
                                  "across documents)")
    gradient_checkpointing: bool = option(False, "recompute activations in the backward (less memory)")
    dtype: str = option("auto", "training precision (auto: bfloat16 mixed precision on CUDA, float32 on CPU)",
                        choices=("auto", "float32", "bfloat16"))
    eval_multipliers: tuple[int, ...] = option((1, 4, 16), "validation lengths as multiples of seq_len", min=1,
                                               sep=",")
    eval_tokens: int = option(1 << 16, "scored validation tokens at every length", min=1)
    seed: int = option(0, "seed of the windows and of the Trainer", min=0)
    out: str = option("runs/hf-train", "output folder: result.json, model/ and the Trainer's files")
    progress: bool = option(True, "progress bars")

    def __post_init__(self) -> None:
        self.eval_multipliers = tuple(int(m) for m in self.eval_multipliers)
        check_options(self)


class PackedWindows(torch.utils.data.Dataset):
    """Random windows of ``length`` tokens of ``tokens`` (seeded), as the Trainer's examples: ``input_ids`` and
    ``labels`` (the same ids; the model shifts them), and with ``eod_id`` ``position_ids`` that restart at every
    end-of-document token (a document starts with one)."""

    def __init__(self, tokens: Any, length: int, count: int, *, seed: int, eod_id: int | None) -> None:
        if len(tokens) < length:
            raise ValueError(f"the training split holds {len(tokens)} tokens, fewer than one window of {length}")
        rng = np.random.default_rng(seed)
        self.starts = rng.integers(0, len(tokens) - length + 1, count)
        self.tokens, self.length, self.eod_id = tokens, length, eod_id

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        start = int(self.starts[i])
        ids = torch.as_tensor(np.asarray(self.tokens[start:start + self.length], dtype=np.int64))
        item = {"input_ids": ids, "labels": ids.clone()}
        if self.eod_id is not None:
            item["position_ids"] = restarting_positions(ids, self.eod_id)
        return item


def flatten_windows(features: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The Trainer's collator: B windows of T tokens as one packed row of shape (1, B·T), the padding-free layout
    of transformers' ``DataCollatorWithFlattening`` but keeping each window's own position ids (which restart at
    its documents; 0…T-1 without them). Position ids restart at every window, so attention stays inside it (siattn's
    ``cu_seqlens`` path, transformers' packed-sequence mask), and each window's first label is -100, so no token is
    scored on the next window's: the loss equals that of the B windows run one by one."""
    ids = torch.cat([f["input_ids"] for f in features])
    labels = torch.cat([torch.cat([torch.full((1,), -100, dtype=f["labels"].dtype), f["labels"][1:]])
                        for f in features])
    positions = torch.cat([f["position_ids"] if "position_ids" in f else torch.arange(len(f["input_ids"]))
                           for f in features])
    return {"input_ids": ids[None], "labels": labels[None], "position_ids": positions[None]}


@contextmanager
def training_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` in training mode without a KV cache, restored on exit. transformers builds its packed-sequence
    mask (attention kept inside each document for its own attention functions: the kept-RoPE baseline) only when
    no cache is made, and a training forward has no use for one."""
    was_training, use_cache = model.training, model.config.use_cache
    model.train()
    model.config.use_cache = False
    try:
        yield model
    finally:
        model.train(was_training)
        model.config.use_cache = use_cache


def restarting_positions(ids: torch.Tensor, eod_id: int) -> torch.Tensor:
    """Position ids (T,) that count from 0 at the start and again from every end-of-document token in ``ids``:
    the positions within the documents :func:`siattn.data.pack_rows` finds."""
    _, _, cu_seqlens = pack_rows(ids[None], ids[None], eod_id)
    return positions_in_documents(cu_seqlens.long(), len(ids))


def pretrained_source(path: str) -> tuple[str, dict[str, Any]]:
    """``from_pretrained``'s location and keywords for a model folder or a ``.gguf`` file (the folder holding it,
    ``gguf_file=`` its name), offline."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"model must be a transformers model folder or a .gguf file; {path!r} does not exist "
                                "(models are read offline)")
    if p.suffix == ".gguf":
        return str(p.parent), {"gguf_file": p.name, "local_files_only": True}
    return str(p), {"local_files_only": True}


def load_pretrained(path: str, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """A causal LM from a folder or a ``.gguf`` file (:func:`pretrained_source`)."""
    from transformers import AutoModelForCausalLM

    location, kwargs = pretrained_source(path)
    model = AutoModelForCausalLM.from_pretrained(location, **kwargs, **({} if dtype is None else {"dtype": dtype}))
    # transformers dequantises a GGUF file's weights into ordinary float tensors; the quantisation markers it
    # leaves on the model would only make the Trainer refuse to train them
    if "gguf_file" in kwargs and all(t.is_floating_point() for t in model.state_dict().values()):
        model.is_quantized = False
        model.hf_quantizer = None
    return model


def load_pretrained_tokenizer(path: str) -> Any:
    """The tokenizer of a model folder or a ``.gguf`` file (:func:`pretrained_source`)."""
    from transformers import AutoTokenizer

    location, kwargs = pretrained_source(path)
    return AutoTokenizer.from_pretrained(location, **kwargs)


def loss_by_length(model: torch.nn.Module, tokens: Any, lengths: list[int], n_tokens: int, progress: bool
                   ) -> dict[str, float]:
    """{length: validation loss (nats/token)} of a transformers model, scored as ``siattn eval`` scores."""
    from siattn.evaluation.loss_by_length import loss_at_lengths
    from siattn.hf.models import CausalLMAdapter

    was_training = model.training
    model.eval()
    losses = loss_at_lengths(CausalLMAdapter(model), tokens, lengths, n_tokens, progress=progress)
    model.train(was_training)
    return {str(length): round(res.loss, 5) for length, res in losses.items()}


def continual_pretrain(cfg: ContinualConfig, log: Any = print) -> dict[str, Any]:
    """Run ``cfg`` end to end (module docstring); returns what it writes to ``OUT/result.json``."""
    from transformers import Trainer, TrainingArguments

    from siattn.data import TokenDataset
    from siattn.fileutil import write_folder
    from siattn.hf import convert
    from siattn.io import write_json

    out = Path(cfg.out)
    cuda = torch.cuda.is_available()
    bf16 = cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and cuda)
    ds = TokenDataset(cfg.data)
    model = load_pretrained(cfg.model, dtype=torch.float32)
    if ds.vocab_size > model.config.vocab_size:
        raise ValueError(f"{cfg.data} was prepared with a tokenizer of {ds.vocab_size} ids but {cfg.model} has "
                         f"{model.config.vocab_size}: prepare it with --tokenizer hf:MODEL_FOLDER")
    if cfg.method == "si-p-rope":
        model = convert(model, method="si-p-rope", tau=cfg.tau, p_rope_base=scaled_p_rope_base(cfg.seq_len))
    device = torch.device("cuda" if cuda else "cpu")
    model.to(device)
    lengths = [m * cfg.seq_len for m in cfg.eval_multipliers]
    n_eval = max(lengths) * max(1, cfg.eval_tokens // max(lengths))
    t0 = time.perf_counter()
    before = loss_by_length(model, ds.val, lengths, n_eval, cfg.progress)
    log(f"before: {before}")

    world = max(1, int(os.environ.get("WORLD_SIZE", "1")))
    if cfg.batch_size % (cfg.micro_batch_size * world):
        raise ValueError(f"batch_size {cfg.batch_size} is not a multiple of micro_batch_size {cfg.micro_batch_size} "
                         f"× {world} processes")
    accumulation = cfg.batch_size // (cfg.micro_batch_size * world)
    windows = PackedWindows(ds.train, cfg.seq_len, cfg.steps * cfg.batch_size, seed=cfg.seed,
                            eod_id=ds.eod_id if cfg.pack_documents else None)
    args = TrainingArguments(
        output_dir=str(out / "trainer"), max_steps=cfg.steps, per_device_train_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=accumulation, learning_rate=cfg.lr, warmup_steps=cfg.warmup_steps,
        lr_scheduler_type="constant_with_warmup", weight_decay=cfg.weight_decay, bf16=bf16,
        logging_steps=max(1, cfg.steps // 20), save_strategy="no",
        report_to=[], seed=cfg.seed, data_seed=cfg.seed, disable_tqdm=not cfg.progress, use_cpu=not cuda,
        dataloader_drop_last=True, remove_unused_columns=False)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    trainer = Trainer(model=model, args=args, train_dataset=windows, data_collator=flatten_windows)
    with training_mode(model):
        train_output = trainer.train()
    history = [{k: v for k, v in row.items() if isinstance(v, int | float)} for row in trainer.state.log_history]
    after = loss_by_length(model, ds.val, lengths, n_eval, cfg.progress)
    log(f"after: {after}")
    result: dict[str, Any] = {
        "config": dataclasses.asdict(cfg), "lengths": lengths, "eval_tokens": n_eval, "before": before,
        "after": after, "train_loss": train_output.training_loss, "history": history,
        "tokens": cfg.steps * cfg.batch_size * cfg.seq_len, "processes": world,
        "seconds": round(time.perf_counter() - t0, 1),
        "device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
    }
    if trainer.is_world_process_zero():
        write_folder(out / "model", lambda folder: save_model(model, cfg.model, folder, log))
        write_json(out / "result.json", result)
    return result


def save_model(model: torch.nn.Module, source: str, folder: Path, log: Any = print) -> None:
    """``model`` with the tokenizer of ``source`` (its model folder or .gguf file) into ``folder``."""
    model.save_pretrained(folder)
    try:
        load_pretrained_tokenizer(source).save_pretrained(folder)
    except (OSError, ValueError) as err:  # a model folder without a tokenizer: the dataset's serves
        log(f"no tokenizer saved with the model ({source} has none transformers can load: {err})")


def recovered(result: dict[str, Any], baseline: dict[str, Any], tolerance: float = 0.02) -> bool:
    """Whether ``result``'s loss at the training length is back within ``tolerance`` (relative) of the
    unconverted model's loss there (``baseline``'s loss before training)."""
    length = str(result["lengths"][0])
    return math.isfinite(result["after"][length]) and (
        result["after"][length] <= baseline["before"][length] * (1 + tolerance))
