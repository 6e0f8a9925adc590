"""Training: configuration and presets, optimisers (Muon + Adam groups), lr schedules, checkpoints, the training
step shared by every loop, the loop behind ``siattn train`` (:func:`siattn.training.trainer.train`) and its
distributed set-up.

    from siattn.training import resolve_config, train, load_checkpoint
    result = train(resolve_config("cpu-tiny", method="si-p-rope", steps=100))
    model, config, extra = load_checkpoint(result.run_dir, device="cpu")
"""

from siattn.training.checkpointing import (
    CheckpointError,
    load_checkpoint,
    load_training_state,
    read_checkpoint_state,
    resolve_checkpoint,
    save_checkpoint,
    save_run_checkpoint,
)
from siattn.training.config import PRESETS, SCHEDULES, TrainConfig, describe_presets, resolve_config
from siattn.training.distributed import DistInfo, init_distributed
from siattn.training.lr_schedules import lr_multiplier
from siattn.training.metrics import plot_metrics, read_metrics
from siattn.training.optim import OptimizerSet, build_optimizer, parameter_groups
from siattn.training.step import optimizer_step
from siattn.training.trainer import RunResult, train
from siattn.training.validation import evaluate

__all__ = [
    "PRESETS",
    "SCHEDULES",
    "CheckpointError",
    "DistInfo",
    "OptimizerSet",
    "RunResult",
    "TrainConfig",
    "build_optimizer",
    "describe_presets",
    "evaluate",
    "init_distributed",
    "load_checkpoint",
    "load_training_state",
    "lr_multiplier",
    "optimizer_step",
    "parameter_groups",
    "plot_metrics",
    "read_checkpoint_state",
    "read_metrics",
    "resolve_checkpoint",
    "resolve_config",
    "save_checkpoint",
    "save_run_checkpoint",
    "train",
]
