"""Checkpoints: a folder per step, written atomically, verified when read.

    run_dir/checkpoints/step_000120/
        model.safetensors       the model's weights (float32)
        optimizer.safetensors   the optimisers' tensor state, flattened to "{optimizer}/{param index}/{key}"
        state.json              format, model config, train config, step, data loader state, RNG states,
                                metrics, the optimisers' non-tensor state, and size + sha256 of both files
        COMPLETE                written last: a folder without it was interrupted while saving
    run_dir/checkpoints/LATEST  the name of the newest complete checkpoint

Writing: everything goes into a hidden temporary folder beside the target, each file is fsync'ed, then the
folder is renamed into place (os.replace) and LATEST is replaced the same way; a crash at any moment leaves the
previous checkpoint readable. A failed write (a full disk) removes its temporary folder; those of a killed
process are removed by the next save. Pruning keeps the newest ``keep`` checkpoints of the run's own line that
verify, so the last good checkpoint is never deleted. Reading checks the marker, the sizes and the hashes, and raises
:class:`CheckpointError` saying what is wrong instead of returning garbage.
"""

from __future__ import annotations

import base64
import json
import os
import random
import shutil
import sys
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from siattn.data.tokenizer import sha256_file
from siattn.fileutil import fsync_dir, remove_stale_temporaries, temporary_name, write_folder
from siattn.methods import evaluation_method
from siattn.model import GPT, GPTConfig
from siattn.training.config import TrainConfig

FORMAT = "siattn-checkpoint"
VERSION = 1
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "state.json"
COMPLETE = "COMPLETE"
LATEST = "LATEST"
CHECKPOINTS = "checkpoints"


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, truncated, corrupt or of an unknown format."""


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = temporary_name(path)
    try:
        _write_bytes(tmp, text.encode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


# ---- optimiser state <-> (tensors, JSON) ----

def flatten_optimizer_state(state: dict[str, dict]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """{name: optimizer.state_dict()} -> tensors keyed "{name}/{param}/{key}" and a JSON-able rest."""
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {}
    for name, sd in state.items():
        scalars: dict[str, dict[str, Any]] = {}
        for pid, pstate in sd["state"].items():
            for key, value in pstate.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"{name}/{pid}/{key}"] = value.detach().contiguous().cpu()
                else:
                    scalars.setdefault(str(pid), {})[key] = value
        groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
        meta[name] = {"param_groups": groups, "scalars": scalars}
    return tensors, meta


def unflatten_optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, dict]:
    """The inverse of :func:`flatten_optimizer_state`."""
    out: dict[str, dict] = {}
    for name, m in meta.items():
        state: dict[int, dict[str, Any]] = {}
        for pid, scalars in m["scalars"].items():
            state.setdefault(int(pid), {}).update(scalars)
        groups = [{k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in g.items()}
                  for g in m["param_groups"]]
        out[name] = {"state": state, "param_groups": groups}
    for key, value in tensors.items():
        name, pid, k = key.split("/", 2)
        if name not in out:
            raise CheckpointError(f"optimizer tensor {key!r} belongs to no optimizer in state.json")
        out[name]["state"].setdefault(int(pid), {})[k] = value
    return out


# ---- RNG states ----

def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.numpy().tobytes()).decode()


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def rng_state() -> dict[str, Any]:
    """Torch (CPU and CUDA), Python and NumPy global RNG states, JSON-able."""
    py = random.getstate()
    npy = np.random.get_state()
    state = {"torch": _b64(torch.get_rng_state()), "python": [py[0], list(py[1]), py[2]],
             "numpy": [npy[0], npy[1].tolist(), *npy[2:]]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(_unb64(state["torch"]))
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    npy = state["numpy"]
    np.random.set_state((npy[0], np.array(npy[1], dtype=np.uint32), *npy[2:]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])


# ---- saving ----

def save_checkpoint(path: str | Path, *, model: torch.nn.Module, config: GPTConfig,
                    optimizer: Any | None = None, train_config: TrainConfig | None = None, step: int = 0,
                    loader_state: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
                    extra: dict[str, Any] | None = None, save_rng: bool = True,
                    extra_files: dict[str, str | Path] | None = None) -> Path:
    """Write a checkpoint folder at ``path`` atomically (replacing one that is there). Returns ``path``.

    ``model`` is the bare module (not DDP- or compile-wrapped); ``optimizer`` anything with ``state_dict()``
    returning {name: torch optimizer state_dict} (an :class:`~siattn.training.optim.OptimizerSet`).
    ``extra_files`` {name: source path} are copied in (e.g. the tokenizer, so a checkpoint stands alone).
    """
    return write_folder(path, lambda tmp: _write_checkpoint_files(
        tmp, model=model, config=config, optimizer=optimizer, train_config=train_config, step=step,
        loader_state=loader_state, metrics=metrics, extra=extra, save_rng=save_rng, extra_files=extra_files))


def _write_checkpoint_files(tmp: Path, *, model: torch.nn.Module, config: GPTConfig, optimizer: Any | None,
                            train_config: TrainConfig | None, step: int, loader_state: dict[str, Any] | None,
                            metrics: dict[str, Any] | None, extra: dict[str, Any] | None, save_rng: bool,
                            extra_files: dict[str, str | Path] | None) -> None:
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(weights, tmp / MODEL_FILE, metadata={"format": FORMAT})
    files = [MODEL_FILE]
    opt_meta = None
    if optimizer is not None:
        opt_tensors, opt_meta = flatten_optimizer_state(optimizer.state_dict())
        save_file(opt_tensors, tmp / OPTIMIZER_FILE, metadata={"format": FORMAT})
        files.append(OPTIMIZER_FILE)
    for name, source in (extra_files or {}).items():
        shutil.copyfile(source, tmp / name)
        files.append(name)
    state = {
        "format": FORMAT, "version": VERSION, "step": int(step),
        "model_config": config.to_dict(),
        "train_config": train_config.to_dict() if train_config is not None else None,
        "loader": loader_state, "rng": rng_state() if save_rng else None, "metrics": metrics or {},
        "optimizer": opt_meta, "extra": extra or {}, "torch_version": torch.__version__,
        "files": {},
    }
    for name in files:
        with open(tmp / name, "rb+") as f:
            os.fsync(f.fileno())
        state["files"][name] = {"bytes": (tmp / name).stat().st_size, "sha256": sha256_file(tmp / name)}
    _write_bytes(tmp / STATE_FILE, json.dumps(state, indent=1).encode())
    _write_bytes(tmp / COMPLETE, b"ok\n")
    fsync_dir(tmp)


def save_run_checkpoint(run_dir: str | Path, step: int, keep: int = 2, *, base_step: int | None = None,
                        written: Iterable[int] = (), **kwargs: Any) -> Path:
    """Save ``run_dir/checkpoints/step_{step:06d}``, point LATEST at it and prune (:func:`prune_checkpoints`).

    ``base_step``/``written``: the run's line (the step it resumed from, the steps this process saved); only
    checkpoints of that line are pruned. None: every checkpoint of the folder counts as the run's line.
    """
    folder = Path(run_dir) / CHECKPOINTS
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder)
    path = save_checkpoint(folder / f"step_{step:06d}", step=step, **kwargs)
    _write_text_atomic(folder / LATEST, path.name + "\n")
    if keep > 0:
        line = None if base_step is None else {s for s in _steps(folder) if s <= base_step} | {*written, step}
        prune_checkpoints(folder, keep, line)
    return path


def _steps(folder: Path) -> list[int]:
    return sorted(int(p.name[5:]) for p in folder.glob("step_*") if p.name[5:].isdigit())


def _verified(path: Path) -> bool:
    """Whether ``path`` reads back as a whole checkpoint (marker, sizes and sha256 of every file)."""
    try:
        read_checkpoint_state(path, verify=True)
    except CheckpointError:
        return False
    return True


def prune_checkpoints(folder: Path, keep: int, line: Collection[int] | None = None) -> list[Path]:
    """Delete checkpoints of ``folder`` beyond the newest ``keep`` that verify (marker, sizes, sha256).

    Only steps in ``line`` (the run's own lineage; None: all) are considered. Walking from the newest, each
    checkpoint is verified until ``keep`` good ones are found; everything older than those goes (corrupt and
    incomplete ones included), everything newer stays. So the last good checkpoint is never deleted, and a
    corrupt or incomplete one never counts as kept. A folder is renamed to a temporary name before it is
    removed, so a process killed while removing it leaves no ``step_*`` folder that still has its COMPLETE marker
    but lacks files (the next save removes the leftover). Returns the deleted folders.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    steps = [s for s in reversed(_steps(folder)) if line is None or s in line]
    good, deleted = 0, []
    for s in steps:
        path = folder / f"step_{s:06d}"
        if good < keep:
            good += _verified(path)
        else:  # out of the step_* names first: a removal cut short leaves no marked, partly deleted folder
            aside = temporary_name(path, "old")
            os.replace(path, aside)
            shutil.rmtree(aside, ignore_errors=True)
            deleted.append(path)
    return deleted


# ---- reading ----

def _complete_steps(folder: Path) -> list[Path]:
    """The step_* folders of ``folder`` that carry the COMPLETE marker, oldest first."""
    return sorted(p for p in folder.glob("step_*") if (p / COMPLETE).exists())


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder from: itself, a run folder or its ``checkpoints/`` (their LATEST), or a file in it."""
    path = Path(path)
    if path.is_file():
        path = path.parent
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint or run folder")
    for folder in (path / CHECKPOINTS, path):
        latest = folder / LATEST
        if latest.is_file():
            name = latest.read_text().strip()
            if name and (folder / name).is_dir():
                return folder / name
            # a save that replaced the folder LATEST names was killed between moving the old folder aside and
            # renaming the new one in: the newest complete checkpoint is the run's state
            done = _complete_steps(folder)
            if not done:
                raise CheckpointError(f"{latest} names {name!r}, which is not a checkpoint folder, and "
                                      f"{folder} holds no complete checkpoint")
            print(f"siattn: {latest} names {name!r}, which is missing (a save was interrupted); using "
                  f"{done[-1].name}, the newest complete checkpoint", file=sys.stderr)
            return done[-1]
    if (path / STATE_FILE).exists() or (path / MODEL_FILE).exists():
        return path
    done = _complete_steps(path / CHECKPOINTS)
    if done:
        return done[-1]
    raise CheckpointError(f"{path}: neither a checkpoint folder (with {STATE_FILE}) nor a run folder with "
                          f"{CHECKPOINTS}/{LATEST}")


def read_checkpoint_state(path: str | Path, *, verify: bool = True) -> tuple[Path, dict[str, Any]]:
    """(checkpoint folder, parsed state.json) after checking the marker, the format and (``verify``) the files."""
    folder = resolve_checkpoint(path)
    if not (folder / COMPLETE).exists():
        raise CheckpointError(f"{folder}: incomplete checkpoint (no {COMPLETE} marker: the run stopped while "
                              "saving it); use an earlier checkpoint")
    try:
        state = json.loads((folder / STATE_FILE).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: {STATE_FILE} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{folder / STATE_FILE}: corrupt ({err})") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{folder / STATE_FILE}: not a siattn checkpoint (format {FORMAT!r} expected)")
    if state.get("version", 0) > VERSION:
        raise CheckpointError(f"{folder}: checkpoint version {state['version']} is newer than this siattn "
                              f"reads ({VERSION}); upgrade siattn")
    for name, info in state.get("files", {}).items():
        file = folder / name
        if not file.is_file():
            raise CheckpointError(f"{file}: missing")
        size = file.stat().st_size
        if size != info["bytes"]:
            raise CheckpointError(f"{file}: {size} bytes but {info['bytes']} were written: the file is "
                                  "truncated or was changed")
        if verify and sha256_file(file) != info["sha256"]:
            raise CheckpointError(f"{file}: sha256 does not match state.json: the file is corrupt")
    return folder, state


def _load_tensors(file: Path, device: str | torch.device) -> dict[str, torch.Tensor]:
    try:
        return load_file(file, device=str(device))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{file}: cannot be read as safetensors ({err})") from err


def load_model_state(model: torch.nn.Module, folder: Path, device: str | torch.device = "cpu") -> None:
    weights = _load_tensors(folder / MODEL_FILE, device)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    bad = [k for k in expected if k in weights and weights[k].shape != expected[k].shape]
    if missing or unexpected or bad:
        raise CheckpointError(f"{folder / MODEL_FILE}: does not match the model of its config (missing "
                              f"{missing[:5]}, unexpected {unexpected[:5]}, wrong shape {bad[:5]})")
    model.load_state_dict(weights)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", *, attn_backend: str | None = None,
                    method: str | None = None, verify: bool = True
                    ) -> tuple[torch.nn.Module, GPTConfig, dict[str, Any]]:
    """Rebuild the model of a checkpoint: (model in eval mode on ``device``, its GPTConfig, the rest of
    state.json: step, metrics, train_config, ...). ``path``: a checkpoint folder, or a run folder (its newest
    checkpoint). ``attn_backend`` overrides the backend the model was trained with; ``method`` runs the weights
    under a method that extends the trained one (``rope-ntk``/``yarn`` on ``rope``, ``logn-ntk`` on
    ``logn-rope``; :func:`siattn.methods.evaluation_method`)."""
    folder, state = read_checkpoint_state(path, verify=verify)
    try:
        config = GPTConfig.from_dict(state["model_config"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{folder / STATE_FILE}: bad model_config ({err})") from err
    if attn_backend is not None:
        config.attn_backend = attn_backend
    config.method = evaluation_method(config.method, method)
    model = GPT(config).to(device)
    load_model_state(model, folder, device)
    model.eval()
    extra = {k: v for k, v in state.items() if k not in ("model_config", "optimizer", "rng")}
    extra["path"] = str(folder)
    return model, config, extra


def load_training_state(path: str | Path, model: torch.nn.Module, optimizer: Any,
                        device: str | torch.device = "cpu", restore_rng: bool = True) -> dict[str, Any]:
    """Load weights and optimiser state into an existing model/optimiser (resuming); returns state.json."""
    folder, state = read_checkpoint_state(path)
    load_model_state(model, folder, device)
    if state.get("optimizer") is None:
        raise CheckpointError(f"{folder}: holds no optimizer state (not a training checkpoint)")
    tensors = _load_tensors(folder / OPTIMIZER_FILE, "cpu")  # load_state_dict moves them next to the params
    try:
        optimizer.load_state_dict(unflatten_optimizer_state(tensors, state["optimizer"]))
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"{folder}: optimizer state does not fit this run ({err})") from err
    if restore_rng and state.get("rng"):
        set_rng_state(state["rng"])
    state["path"] = str(folder)
    return state
