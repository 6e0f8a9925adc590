"""What an evaluation runs on: the device, the checkpoints to evaluate (loaded one at a time) and their data.

    device = resolve_device("auto")                                   # CUDA when available
    ckpt = load_for_eval("runs/cpu-tiny-si-p-rope", device=device)    # model in eval mode + its configs
    ds = open_validation_data(None, ckpt)                             # the dataset it was trained on
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from siattn.precision import use_tf32


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for but CUDA is not available; use --device cpu")
    return device


@dataclass
class Checkpoint:
    """A model to evaluate with what the evaluations need to know about how it was trained."""

    label: str
    path: str
    model: torch.nn.Module
    config: Any  # siattn.model.GPTConfig
    train_config: Any | None  # siattn.training.TrainConfig, when the checkpoint holds one
    step: int
    device: torch.device
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return self.config.method

    @property
    def train_length(self) -> int:
        return int(self.config.train_length)

    def describe(self) -> dict[str, Any]:
        """The JSON-able facts a result file records about this checkpoint."""
        return {"label": self.label, "path": self.path, "method": self.method,
                "train_length": self.train_length, "step": self.step,
                "params": sum(p.numel() for p in self.model.parameters())}


@dataclass(frozen=True)
class CheckpointLoader:
    """A checkpoint format defined by a higher layer: ``accepts(path)``, ``load(path, device, label=,
    attn_backend=, method=) -> Checkpoint`` and ``state(path)``: what a siattn checkpoint's state.json says
    before loading (at least ``model_config.method`` and ``model_config.train_length``)."""

    accepts: Callable[[str | Path], bool]
    load: Callable[..., Checkpoint]
    state: Callable[[str | Path], dict[str, Any]]


# formats other than siattn's own checkpoints; siattn.hf adds Hugging Face model folders when it is imported
CHECKPOINT_LOADERS: list[CheckpointLoader] = []


def register_checkpoint_loader(accepts: Callable[[str | Path], bool], load: Callable[..., Checkpoint],
                               state: Callable[[str | Path], dict[str, Any]]) -> None:
    """Let :func:`load_for_eval` load the folders ``accepts`` recognises with ``load`` (idempotent per ``load``)."""
    CHECKPOINT_LOADERS[:] = [entry for entry in CHECKPOINT_LOADERS if entry.load is not load]
    CHECKPOINT_LOADERS.append(CheckpointLoader(accepts, load, state))


def is_hf_model_dir(path: str | Path) -> bool:
    """A Hugging Face model folder: a transformers ``config.json`` (with ``model_type``) and no siattn
    checkpoint state."""
    folder = Path(path).expanduser()
    config = folder / "config.json"
    if not config.is_file() or (folder / "state.json").exists():
        return False
    try:
        return "model_type" in json.loads(config.read_text())
    except (OSError, ValueError):
        return False


def is_siattn_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` loads as a siattn GPT checkpoint rather than through a registered other format (no weights
    are read)."""
    return _other_loader(path) is None


def _other_loader(path: str | Path) -> CheckpointLoader | None:
    for entry in CHECKPOINT_LOADERS:
        if entry.accepts(path):
            return entry
    if is_hf_model_dir(path):
        raise ValueError(f"{path} is a Hugging Face model folder: evaluating it needs transformers "
                         "(pip install 'siattn[hf]') and `import siattn.hf`, which registers its loader")
    return None


def load_for_eval(path: str | Path, device: torch.device | str = "cpu", *, label: str | None = None,
                  attn_backend: str | None = None, method: str | None = None) -> Checkpoint:
    """Load a checkpoint (a checkpoint folder or a run folder: its newest) in eval mode on ``device``;
    ``method``: evaluate under a method that extends the trained one (see :func:`siattn.training.load_checkpoint`).
    Folders of another registered format (:data:`CHECKPOINT_LOADERS`: Hugging Face model folders once
    :mod:`siattn.hf` is imported) go to their loader. On CUDA it turns TF32 on, as training does
    (:func:`siattn.precision.use_tf32`)."""
    from siattn.training import TrainConfig, load_checkpoint

    use_tf32(device)  # the float32 matmul precision the model was trained with
    other = _other_loader(path)
    if other is not None:
        return other.load(path, device, label=label, attn_backend=attn_backend, method=method)

    device = torch.device(device)
    model, config, extra = load_checkpoint(path, device=device, attn_backend=attn_backend, method=method)
    train_config = None
    if extra.get("train_config"):
        train_config = TrainConfig.from_dict(dict(extra["train_config"]))
    return Checkpoint(label=label or config.method, path=str(extra.get("path", path)), model=model,
                      config=config, train_config=train_config, step=int(extra.get("step", 0)), device=device,
                      info={k: extra[k] for k in ("metrics",) if k in extra})


def unique_labels(names: Sequence[str]) -> list[str]:
    """``names`` with repeats made distinct by a suffix: [rope, rope, alibi] -> [rope, rope-2, alibi]."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return out


def load_checkpoints(paths: Sequence[str], device: torch.device, labels: Sequence[str] | None = None,
                     attn_backend: str | None = None, method: str | None = None) -> Iterator[Checkpoint]:
    """Load the checkpoints one at a time (only one model in memory), labelled by ``labels`` or their method
    (made unique). The labels are settled before any model is loaded, from each checkpoint's state.json."""
    if labels and len(labels) != len(paths):
        raise ValueError(f"{len(labels)} labels for {len(paths)} checkpoints: give one label per checkpoint")
    if not labels:
        methods = [method or checkpoint_state(p)["model_config"]["method"] for p in paths]
        labels = unique_labels(methods)
    for path, label in zip(paths, labels):
        yield load_for_eval(path, device, label=label, attn_backend=attn_backend, method=method)


def checkpoint_state(path: str | Path) -> dict[str, Any]:
    """What a checkpoint says about itself before loading (no weights read): a siattn checkpoint's state.json
    (``model_config``, ``train_config``, ...), or the same keys from another registered format."""
    from siattn.training import read_checkpoint_state

    other = _other_loader(path)
    if other is not None:
        return other.state(path)
    return read_checkpoint_state(path, verify=False)[1]


def open_validation_data(data: str | None, checkpoint: Checkpoint) -> Any:
    """The :class:`siattn.data.TokenDataset` at ``data``, or the one the checkpoint was trained on."""
    from siattn.data import TokenDataset

    path = data or (checkpoint.train_config.data if checkpoint.train_config is not None else None)
    if path is None:
        raise ValueError(f"{checkpoint.path}: the checkpoint does not say what data it was trained on; pass "
                         "--data PATH (a prepared dataset folder)")
    if not Path(path).expanduser().exists():
        where = "--data" if data else checkpoint.path
        raise ValueError(f"dataset {path!r} (from {where}) does not exist here; pass --data PATH, or prepare "
                         "it with `siattn data prepare`")
    return TokenDataset(path)
