"""The GPT of the paper (modded-nanogpt style) with any attention method, its optimisers, schedules, presets
and checkpoints.

    from siattn.model import GPT, GPTConfig, resolve_config, load_checkpoint
    model = GPT(resolve_config("cpu-tiny", method="si-p-rope").model)
    logits, loss = model(idx, targets)                     # nats/token
    model, config, extra = load_checkpoint("runs/cpu-tiny-si-p-rope", device="cpu")
"""

from siattn.model.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_training_state,
    read_checkpoint_state,
    resolve_checkpoint,
    save_checkpoint,
    save_run_checkpoint,
)
from siattn.model.config import (
    PRESETS,
    GPTConfig,
    TrainConfig,
    describe_presets,
    pad_vocab,
    resolve_config,
    scaled_p_rope_base,
)
from siattn.model.gpt import GPT, KVCache, count_parameters
from siattn.model.optim import OptimizerSet, build_optimizer, parameter_groups
from siattn.model.schedules import lr_multiplier

__all__ = [
    "GPT",
    "PRESETS",
    "CheckpointError",
    "GPTConfig",
    "KVCache",
    "OptimizerSet",
    "TrainConfig",
    "build_optimizer",
    "count_parameters",
    "describe_presets",
    "load_checkpoint",
    "load_training_state",
    "lr_multiplier",
    "pad_vocab",
    "parameter_groups",
    "read_checkpoint_state",
    "resolve_checkpoint",
    "resolve_config",
    "save_checkpoint",
    "save_run_checkpoint",
    "scaled_p_rope_base",
]
