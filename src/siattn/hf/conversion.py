"""Converting a transformers causal LM to siattn attention in place (see :mod:`siattn.hf`): the method and τ in
its config, the rotary its method needs (``p_rope``, ``no_rope`` or the model's own RoPE, with the live
``inv_freq`` recomputed), and the attention implementation."""

from __future__ import annotations

import math
from typing import Any

import torch

from siattn.backends import backend_names
from siattn.hf.attention import DEFAULT_METHOD, check_method, check_model_features, expected_rope_type
from siattn.hf.registration import DEFAULT_NAME, register
from siattn.hf.rope import (
    NO_ROPE_TYPE,
    P_ROPE_TYPE,
    current_rope_type,
    default_p_rope_base,
    frequencies,
    head_dim,
    p_rope_parameters,
    rope_params,
)
from siattn.methods import get_method
from siattn.positional.rope import p_rope_inv_freq
from siattn.schedule import DEFAULT_TAU


def _text_config(model: Any) -> Any:
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def _set_rope(config: Any, params: dict) -> None:
    """Replace the rope dict, keeping rope_theta unless ``params`` sets it (5.x: inside ``rope_parameters``; 4.x:
    ``rope_scaling``)."""
    old = rope_params(config) or {}
    if hasattr(config, "rope_parameters"):
        theta = old.get("rope_theta", getattr(config, "rope_theta", None))
        config.rope_parameters = {**({"rope_theta": theta} if theta is not None else {}), **params}
    else:
        config.rope_scaling = dict(params)


def _rotary_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(getattr(m, "inv_freq", None), torch.Tensor)
            and hasattr(m, "rope_type")]


def _refresh_rotary(model: torch.nn.Module, config: Any, rope_type: str) -> None:
    """Recompute the live rotary embeddings' frequencies so the converted model runs without a reload."""
    inv_freq, factor = frequencies(config, current_rope_type(config))
    for mod in _rotary_modules(model):
        with torch.no_grad():
            for attr in ("inv_freq", "original_inv_freq"):
                buf = getattr(mod, attr, None)
                if isinstance(buf, torch.Tensor):
                    buf.copy_(inv_freq.to(device=buf.device, dtype=buf.dtype))
        mod.rope_type = rope_type
        mod.attention_scaling = factor
        if hasattr(mod, "rope_init_fn"):  # transformers 4.x keeps the init function for dynamic updates
            from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

            mod.rope_init_fn = ROPE_INIT_FUNCTIONS[rope_type]


def _set_attn_implementation(model: Any, config: Any, name: str) -> None:
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(name)
    else:  # older transformers: the config field is what the attention modules read
        model.config._attn_implementation = name
        config._attn_implementation = name


def convert(model: torch.nn.Module, *, method: str = DEFAULT_METHOD, tau: float = DEFAULT_TAU,
            p_rope_base: float | None = None, p_rope_fraction: float = 0.5, attn_name: str = DEFAULT_NAME,
            backend: str = "auto") -> torch.nn.Module:
    """Switch a transformers causal LM to siattn attention in place and return it.

    Sets ``config.siattn_method`` / ``config.siattn_tau`` / ``config.siattn_backend`` (saved by ``save_pretrained``;
    ``backend`` as ``backend=`` of :func:`siattn.backends.run_backend`, "auto" picks per call), the rotary the method
    needs, and the attention implementation ``attn_name`` (registered here). p-RoPE methods get the rope dict of
    :func:`siattn.hf.rope.p_rope_parameters` (``p_rope_base``, ``p_rope_fraction``, stored as transformers'
    ``proportional`` type where it exists) with base defaulting to :func:`default_p_rope_base`
    (1024 · L_train / 4096: 1024 for Llama-2); RoPE methods keep the model's RoPE; methods without rotary (nope,
    alibi, si-nope) get ``"no_rope"``. The live rotary ``inv_freq`` is recomputed.
    Raises ValueError for LogN methods, rope-ntk and yarn, models with per-layer-type or partial rotary, and
    attention features siattn does not compute (logit soft-capping, attention sinks).
    """
    resolved = get_method(method)
    check_method(resolved)
    if isinstance(tau, bool) or not isinstance(tau, int | float) or not (math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be a finite number > 0, got {tau!r}")
    if backend not in backend_names():
        raise ValueError(f"backend must be one of {backend_names()}, got {backend!r}")
    config = _text_config(model)
    check_model_features(config)
    current = rope_params(config) or {}
    if current and not any(k in current for k in ("rope_type", "type", "rope_theta")):
        raise ValueError("models with per-layer-type rope parameters are not supported by siattn.hf.convert")
    rotary = _rotary_modules(model)
    if not rotary:
        raise ValueError(f"{type(model).__name__} has no rotary embedding module (inv_freq + rope_type) to convert")
    half = head_dim(config) // 2
    if any(m.inv_freq.shape != (half,) for m in rotary):
        raise ValueError(f"partial rotary embeddings are not supported: inv_freq has {rotary[0].inv_freq.shape[0]} "
                         f"entries, head_dim / 2 = {half}")
    target = expected_rope_type(resolved)
    if target is None and current_rope_type(config) in (P_ROPE_TYPE, NO_ROPE_TYPE):
        raise ValueError(f"the model already runs {current_rope_type(config)!r}, not RoPE: load the original model "
                         f"to convert it to {resolved.name!r}")
    if target == P_ROPE_TYPE:
        base = default_p_rope_base(config) if p_rope_base is None else float(p_rope_base)
        p_rope_inv_freq(head_dim(config), base, p_rope_fraction)  # validates before anything changes
        new_params: dict | None = p_rope_parameters(head_dim(config), base, float(p_rope_fraction))
    elif target == NO_ROPE_TYPE:
        new_params = {"rope_type": NO_ROPE_TYPE}
    else:
        new_params = None

    register(attn_name)
    if new_params is not None:
        _set_rope(config, new_params)
        _refresh_rotary(model, config, new_params["rope_type"])
    for cfg in {id(c): c for c in (config, model.config)}.values():
        cfg.siattn_method = resolved.name
        cfg.siattn_tau = float(tau)
        cfg.siattn_backend = backend
    _set_attn_implementation(model, config, attn_name)
    return model
