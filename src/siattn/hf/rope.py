"""Rope types siattn adds to transformers' ``ROPE_INIT_FUNCTIONS``: ``p_rope`` and ``no_rope``.

``p_rope`` reads ``p_rope_base`` and ``p_rope_fraction`` from the config's rope dict (``rope_parameters`` in 5.x,
``rope_scaling`` in 4.x) and gives :func:`siattn.positional.rope.p_rope_inv_freq`; ``no_rope`` gives zero
frequencies (cos = 1, sin = 0: q and k pass unrotated). Both have attention factor 1.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from siattn.positional.rope import p_rope_inv_freq, scaled_p_rope_base

P_ROPE_TYPE = "p_rope"
NO_ROPE_TYPE = "no_rope"


def rope_params(config: Any) -> dict | None:
    """The rope dict: ``rope_parameters`` (transformers 5.x) or ``rope_scaling`` (4.x)."""
    return getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)


def current_rope_type(config: Any) -> str:
    """The config's rope type ("default" when it has none)."""
    params = rope_params(config) or {}
    return params.get("rope_type", params.get("type", "default"))


def head_dim(config: Any) -> int:
    """``config.head_dim``, else hidden_size // num_attention_heads."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _layer_params(config: Any, layer_type: str | None) -> dict:
    params = rope_params(config) or {}
    if layer_type is not None and isinstance(params.get(layer_type), dict):
        return params[layer_type]
    return params


def p_rope_init(config: Any, device: Any = None, seq_len: int | None = None, layer_type: str | None = None,
                **kwargs: Any) -> tuple[torch.Tensor, float]:
    """``ROPE_INIT_FUNCTIONS["p_rope"]``: p-RoPE ``inv_freq`` from ``p_rope_base`` / ``p_rope_fraction``."""
    params = _layer_params(config, layer_type)
    inv_freq = p_rope_inv_freq(head_dim(config), float(params["p_rope_base"]),
                               float(params.get("p_rope_fraction", 0.5)))
    return (inv_freq if device is None else inv_freq.to(device)), 1.0


def no_rope_init(config: Any, device: Any = None, seq_len: int | None = None, layer_type: str | None = None,
                 **kwargs: Any) -> tuple[torch.Tensor, float]:
    """``ROPE_INIT_FUNCTIONS["no_rope"]``: all frequencies 0, so cos = 1, sin = 0 and q, k pass unrotated."""
    return torch.zeros(head_dim(config) // 2, dtype=torch.float32, device=device), 1.0


def _check_p_rope_params(params: dict) -> None:
    missing = {"p_rope_base"} - set(params)
    if missing:
        raise KeyError(f"rope parameters of type {P_ROPE_TYPE!r} need {sorted(missing)}, got {sorted(params)}")
    base, fraction = float(params["p_rope_base"]), float(params.get("p_rope_fraction", 0.5))
    if not base > 1 or not 0 < fraction <= 1:
        raise ValueError(f"p-RoPE needs p_rope_base > 1 and p_rope_fraction in (0, 1], got {base}, {fraction}")


def _validate_p_rope_5x(self: Any, rope_parameters: dict, ignore_keys: Any = None) -> None:
    _check_p_rope_params(rope_parameters)


def _validate_no_rope_5x(self: Any, rope_parameters: dict, ignore_keys: Any = None) -> None:
    return None


def _validate_p_rope_4x(config: Any, ignore_keys: Any = None, **kwargs: Any) -> None:
    _check_p_rope_params(rope_params(config) or {})


def _validate_no_rope_4x(config: Any, ignore_keys: Any = None, **kwargs: Any) -> None:
    return None


def register_rope_types() -> None:
    """Add ``p_rope`` and ``no_rope`` to ``ROPE_INIT_FUNCTIONS`` and to the config validation (idempotent)."""
    ROPE_INIT_FUNCTIONS[P_ROPE_TYPE] = p_rope_init
    ROPE_INIT_FUNCTIONS[NO_ROPE_TYPE] = no_rope_init
    # config validation looks the type up by name and only warns when it is unknown; give it ours
    try:  # transformers 5.x: methods `_validate_<type>_rope_parameters` of RotaryEmbeddingConfigMixin
        from transformers.modeling_rope_utils import RotaryEmbeddingConfigMixin
    except ImportError:
        RotaryEmbeddingConfigMixin = None
    if RotaryEmbeddingConfigMixin is not None:
        RotaryEmbeddingConfigMixin._validate_p_rope_rope_parameters = _validate_p_rope_5x
        RotaryEmbeddingConfigMixin._validate_no_rope_rope_parameters = _validate_no_rope_5x
    try:  # transformers 4.x: a dict of validation functions
        from transformers.modeling_rope_utils import ROPE_VALIDATION_FUNCTIONS
    except ImportError:
        ROPE_VALIDATION_FUNCTIONS = None
    if ROPE_VALIDATION_FUNCTIONS is not None:
        ROPE_VALIDATION_FUNCTIONS[P_ROPE_TYPE] = _validate_p_rope_4x
        ROPE_VALIDATION_FUNCTIONS[NO_ROPE_TYPE] = _validate_no_rope_4x


def _train_length(config: Any) -> int:
    params = rope_params(config) or {}
    return int(params.get("original_max_position_embeddings")
               or getattr(config, "original_max_position_embeddings", None) or config.max_position_embeddings)


def default_p_rope_base(config: Any) -> float:
    """The paper's base 1024 at 4096-token training, scaled with the model's training length:
    1024 · L_train / 4096 (L_train: ``original_max_position_embeddings`` when the config has one, else
    ``max_position_embeddings``). It keeps the longest p-RoPE wavelength (2π·base) about 1.6 × L_train."""
    return scaled_p_rope_base(_train_length(config))
