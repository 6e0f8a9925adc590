"""Rope types siattn adds to transformers' ``ROPE_INIT_FUNCTIONS``: ``p_rope`` and ``no_rope``.

``p_rope`` reads ``p_rope_base`` and ``p_rope_fraction`` from the config's rope dict (``rope_parameters`` in 5.x,
``rope_scaling`` in 4.x) and gives :func:`siattn.positional.rope.p_rope_inv_freq`; ``no_rope`` gives zero
frequencies (cos = 1, sin = 0: q and k pass unrotated). Both have attention factor 1.

How a converted config is stored. Where transformers has the ``proportional`` rope type (5.5+), p-RoPE is written
as that type with ``rope_theta`` = base^(D / (2(n − 1))) and ``partial_rotary_factor`` = n / (D/2) (n rotating
pairs), which gives the same frequencies to float32 rounding, plus siattn's own keys ``p_rope_base`` and
``p_rope_fraction``. Plain transformers (siattn not installed) then loads the checkpoint with p-RoPE and warns
about the unrecognised keys ``p_rope_base`` / ``p_rope_fraction``, instead of failing with ``KeyError: 'p_rope'``;
it runs without the logit transform, which only siattn's attention function applies. With siattn imported, the
``proportional`` init function is wrapped: a rope dict carrying ``p_rope_base`` gets siattn's exact p-RoPE
frequencies, every other one transformers' own. Older transformers store the ``p_rope`` type.

Safe loading. The init functions run when transformers builds the model. For a config whose ``siattn_method``
changes the logits (every method but plain ``p-rope`` / ``nope``), they raise when the model is being built with
an attention implementation other than siattn's, with the call that loads it correctly: silently running p-RoPE
without the transform would give a different model. Raising was chosen over switching the implementation behind
the caller's back: ``attn_implementation`` is the caller's explicit choice (``"sdpa"`` is transformers' default
and is not saved), and the message names the fix.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from siattn.methods import METHODS
from siattn.positional.rope import p_rope_inv_freq, scaled_p_rope_base

P_ROPE_TYPE = "p_rope"
NO_ROPE_TYPE = "no_rope"
PROPORTIONAL_TYPE = "proportional"  # transformers 5.5+: a rotating fraction of the pairs, the rest fixed
P_ROPE_KEYS = ("p_rope_base", "p_rope_fraction")


def rope_params(config: Any) -> dict | None:
    """The rope dict: ``rope_parameters`` (transformers 5.x) or ``rope_scaling`` (4.x)."""
    return getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)


def current_rope_type(config: Any) -> str:
    """The config's rope type ("default" when it has none); ``p_rope`` for either stored form of p-RoPE."""
    params = rope_params(config) or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == PROPORTIONAL_TYPE and "p_rope_base" in params:
        return P_ROPE_TYPE
    return rope_type


def p_rope_parameters(dim: int, base: float, fraction: float) -> dict:
    """The rope dict :func:`siattn.hf.convert` stores for p-RoPE of head dimension ``dim``: transformers'
    ``proportional`` type with the equivalent ``rope_theta`` / ``partial_rotary_factor`` where transformers has it
    and the fraction is expressible (n / (D/2) · D // 2 == n), else the ``p_rope`` type. Both carry
    ``p_rope_base`` and ``p_rope_fraction``, from which siattn computes the exact frequencies."""
    own = {"p_rope_base": float(base), "p_rope_fraction": float(fraction)}
    pairs = dim // 2
    rotating = round(fraction * pairs)
    factor = rotating / pairs
    if _TRANSFORMERS_PROPORTIONAL is None or rotating < 2 or int(factor * dim // 2) != rotating:
        return {"rope_type": P_ROPE_TYPE, **own}
    theta = float(base) ** (dim / (2 * (rotating - 1)))
    return {"rope_type": PROPORTIONAL_TYPE, "rope_theta": theta, "partial_rotary_factor": factor, **own}


def head_dim(config: Any) -> int:
    """``config.head_dim``, else hidden_size // num_attention_heads."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _layer_params(config: Any, layer_type: str | None) -> dict:
    params = rope_params(config) or {}
    if layer_type is not None and isinstance(params.get(layer_type), dict):
        return params[layer_type]
    return params


def p_rope_frequencies(config: Any, device: Any = None, layer_type: str | None = None) -> torch.Tensor:
    """p-RoPE ``inv_freq`` (D/2,) from the rope dict's ``p_rope_base`` / ``p_rope_fraction`` (no load check)."""
    params = _layer_params(config, layer_type)
    inv_freq = p_rope_inv_freq(head_dim(config), float(params["p_rope_base"]),
                               float(params.get("p_rope_fraction", 0.5)))
    return inv_freq if device is None else inv_freq.to(device)


def no_rope_frequencies(config: Any, device: Any = None) -> torch.Tensor:
    """All D/2 frequencies 0: cos = 1, sin = 0, q and k pass unrotated."""
    return torch.zeros(head_dim(config) // 2, dtype=torch.float32, device=device)


def frequencies(config: Any, rope_type: str) -> tuple[torch.Tensor, float]:
    """(inv_freq, attention factor) of ``rope_type`` for ``config``, without the load check (for convert)."""
    if rope_type == P_ROPE_TYPE:
        return p_rope_frequencies(config), 1.0
    if rope_type == NO_ROPE_TYPE:
        return no_rope_frequencies(config), 1.0
    return ROPE_INIT_FUNCTIONS[rope_type](config)


# The attention implementations that run siattn's function; registration adds its names (checked at load time).
SIATTN_IMPLEMENTATIONS: set[str] = set()


def check_attention_implementation(config: Any) -> None:
    """Raise RuntimeError when ``config`` is a siattn conversion whose method changes the logits and the model is
    being built with another attention implementation (see the module docstring)."""
    method = getattr(config, "siattn_method", None)
    if method is None or method not in METHODS or METHODS[method].transform in ("none", "logn"):
        return  # not converted, or plain logits that any implementation computes (unknown names fail later)
    name = getattr(config, "_attn_implementation", None)
    if name in SIATTN_IMPLEMENTATIONS:
        return
    tau = getattr(config, "siattn_tau", None)
    raise RuntimeError(
        f"this model was converted by siattn.hf.convert (method {method!r}, tau {tau}) and needs siattn's attention "
        f"function, but it is being built with attn_implementation={name!r}, which would run its rotary without "
        "the logit transform: call siattn.hf.register() and pass attn_implementation='siattn' "
        "(from_pretrained(path, attn_implementation='siattn'))")


def p_rope_init(config: Any, device: Any = None, seq_len: int | None = None, layer_type: str | None = None,
                **kwargs: Any) -> tuple[torch.Tensor, float]:
    """``ROPE_INIT_FUNCTIONS["p_rope"]``: p-RoPE ``inv_freq`` from ``p_rope_base`` / ``p_rope_fraction``."""
    check_attention_implementation(config)
    return p_rope_frequencies(config, device, layer_type), 1.0


def no_rope_init(config: Any, device: Any = None, seq_len: int | None = None, layer_type: str | None = None,
                 **kwargs: Any) -> tuple[torch.Tensor, float]:
    """``ROPE_INIT_FUNCTIONS["no_rope"]``: all frequencies 0, so cos = 1, sin = 0 and q, k pass unrotated."""
    check_attention_implementation(config)
    return no_rope_frequencies(config, device), 1.0


def _unwrapped(fn: Any) -> Any:
    return getattr(fn, "__wrapped_proportional__", fn)


_TRANSFORMERS_PROPORTIONAL = _unwrapped(ROPE_INIT_FUNCTIONS.get(PROPORTIONAL_TYPE))


def proportional_init(config: Any, device: Any = None, seq_len: int | None = None, layer_type: str | None = None,
                      **kwargs: Any) -> tuple[torch.Tensor, float]:
    """``ROPE_INIT_FUNCTIONS["proportional"]`` with siattn imported: siattn's p-RoPE (with the load check) when the
    rope dict has ``p_rope_base``, else transformers' own function."""
    if "p_rope_base" in _layer_params(config, layer_type):
        return p_rope_init(config, device, seq_len, layer_type, **kwargs)
    return _TRANSFORMERS_PROPORTIONAL(config, device, seq_len, layer_type, **kwargs)


proportional_init.__wrapped_proportional__ = _TRANSFORMERS_PROPORTIONAL  # type: ignore[attr-defined]


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


def _wrap_proportional_validation(validate: Any) -> Any:
    """transformers' validation of ``proportional`` without the warning about siattn's own keys."""
    if getattr(validate, "__siattn__", False):
        return validate

    def wrapped(self: Any, rope_parameters: dict, ignore_keys: Any = None) -> None:
        if "p_rope_base" in rope_parameters:
            _check_p_rope_params(rope_parameters)
            ignore_keys = set(ignore_keys or ()) | set(P_ROPE_KEYS)
        return validate(self, rope_parameters, ignore_keys=ignore_keys)

    wrapped.__siattn__ = True  # type: ignore[attr-defined]
    return wrapped


def _validate_p_rope_4x(config: Any, ignore_keys: Any = None, **kwargs: Any) -> None:
    _check_p_rope_params(rope_params(config) or {})


def _validate_no_rope_4x(config: Any, ignore_keys: Any = None, **kwargs: Any) -> None:
    return None


def register_rope_types() -> None:
    """Add ``p_rope`` and ``no_rope`` to ``ROPE_INIT_FUNCTIONS`` and to the config validation, and wrap
    ``proportional`` (see the module docstring; idempotent)."""
    ROPE_INIT_FUNCTIONS[P_ROPE_TYPE] = p_rope_init
    ROPE_INIT_FUNCTIONS[NO_ROPE_TYPE] = no_rope_init
    if _TRANSFORMERS_PROPORTIONAL is not None:
        ROPE_INIT_FUNCTIONS[PROPORTIONAL_TYPE] = proportional_init
    # config validation looks the type up by name and only warns when it is unknown; give it ours
    try:  # transformers 5.x: methods `_validate_<type>_rope_parameters` of RotaryEmbeddingConfigMixin
        from transformers.modeling_rope_utils import RotaryEmbeddingConfigMixin
    except ImportError:
        RotaryEmbeddingConfigMixin = None
    if RotaryEmbeddingConfigMixin is not None:
        RotaryEmbeddingConfigMixin._validate_p_rope_rope_parameters = _validate_p_rope_5x
        RotaryEmbeddingConfigMixin._validate_no_rope_rope_parameters = _validate_no_rope_5x
        validate = getattr(RotaryEmbeddingConfigMixin, "_validate_proportional_rope_parameters", None)
        if validate is not None:
            RotaryEmbeddingConfigMixin._validate_proportional_rope_parameters = _wrap_proportional_validation(validate)
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
