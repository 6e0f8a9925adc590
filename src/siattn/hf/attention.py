"""The attention function siattn registers in transformers' ``AttentionInterface`` (see :mod:`siattn.hf`)."""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers.masking_utils import AttentionMaskInterface

from siattn.backends import run_backend
from siattn.backends.reference import reference_attention
from siattn.backends.transforms import LogitTransform
from siattn.hf.rope import NO_ROPE_TYPE, P_ROPE_TYPE, current_rope_type
from siattn.methods import Method, get_method
from siattn.schedule import DEFAULT_TAU

DEFAULT_METHOD = "si-p-rope"


def check_method(method: Method) -> None:
    """Raise ValueError for methods the bridge cannot run: LogN (learned scales) and rope-ntk / yarn."""
    if method.uses_logn:
        raise ValueError(f"method {method.name!r} is not supported through transformers: LogN needs a learned "
                         "per-head scale the model has no weight for (use siattn.model.GPT or a non-LogN method)")
    if method.rotary in ("ntk", "yarn"):
        raise ValueError(f"method {method.name!r} has plain logits: use transformers' own rope_parameters "
                         "(rope_type 'dynamic' or 'yarn') with attn_implementation='sdpa' instead of siattn")


def expected_rope_type(method: Method) -> str | None:
    """The rope type the model must run for ``method`` (None: the model's own RoPE, any standard type)."""
    if method.rotary == "p-rope":
        return P_ROPE_TYPE
    if method.rotary is None:
        return NO_ROPE_TYPE
    return None


def _config_transform(config: Any) -> LogitTransform:
    """The logit transform ``config`` asks for, after checking its rotary matches the method."""
    method = get_method(getattr(config, "siattn_method", DEFAULT_METHOD))
    check_method(method)
    rope_type, expected = current_rope_type(config), expected_rope_type(method)
    if (expected is not None and rope_type != expected) or (expected is None and rope_type in (P_ROPE_TYPE,
                                                                                               NO_ROPE_TYPE)):
        raise ValueError(f"config.siattn_method is {method.name!r} but the model's rope type is {rope_type!r}: "
                         f"call siattn.hf.convert(model, method={method.name!r}) first")
    return method.logit_transform(float(getattr(config, "siattn_tau", DEFAULT_TAU)))


def _check_mask_registered(config: Any) -> None:
    name = getattr(config, "_attn_implementation", None)
    if name is not None and name not in AttentionMaskInterface._global_mapping:
        raise RuntimeError(f"no attention mask function is registered under {name!r}, so transformers would pass "
                           f"no causal or padding mask: call siattn.hf.register({name!r}) instead of registering "
                           "the attention function alone")


# --------------------------------------------------------------------------------------------------- masks
def allowed_mask(mask: torch.Tensor) -> torch.Tensor:
    """A boolean (B|1, 1|H, q, kv) mask, True = attend. Float masks are additive: very negative = blocked."""
    if mask.dim() != 4:
        raise ValueError(f"siattn expects a 4D attention mask (batch, 1, q, kv), got shape {tuple(mask.shape)}")
    if mask.dtype == torch.bool:
        return mask
    return mask > torch.finfo(mask.dtype).min / 2


def causal_mask(q_offset: int, tq: int, tk: int, device: torch.device) -> torch.Tensor:
    """(tq, tk) boolean: key c visible to query row r iff c <= q_offset + r."""
    rows = torch.arange(q_offset, q_offset + tq, device=device)
    return torch.arange(tk, device=device)[None, :] <= rows[:, None]


def query_offset(allowed: torch.Tensor) -> int | None:
    """Slot of query row 0: max over rows of (last visible key − row); None when no key is visible at all."""
    tq, tk = allowed.shape[-2:]
    visible = allowed.any(-1)
    if not bool(visible.any()):
        return None
    last = tk - 1 - allowed.flip(-1).to(torch.uint8).argmax(-1)
    rel = last - torch.arange(tq, device=allowed.device)
    return int(rel.masked_fill(~visible, -1).max())


def left_padding(allowed: torch.Tensor, q_offset: int) -> list[int] | None:
    """Per-row count of leading padded key slots when ``allowed`` is causal(q_offset) with left padding only
    (row b: key j visible iff p_b <= j <= q_offset + r), else None."""
    if allowed.shape[1] != 1:
        return None
    rows = allowed[:, 0]  # (B|1, q, kv)
    if not bool(rows[:, -1].any(-1).all()):
        return None
    pads = rows[:, -1].to(torch.uint8).argmax(-1)  # first visible key of the last (always real) query row
    tq, tk = rows.shape[-2:]
    keys = torch.arange(tk, device=rows.device)
    expected = causal_mask(q_offset, tq, tk, rows.device)[None] & (keys[None, None, :] >= pads[:, None, None])
    return pads.tolist() if bool((rows == expected).all()) else None


def left_padded_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, pads: list[int],
                          transform: LogitTransform, q_offset: int, scale: float) -> torch.Tensor:
    """Left-padded rows through the fast backends, one row at a time: drop row b's p_b padded key slots and the
    query rows that sit on them (their output is 0, as in the masked path); distances are unchanged."""
    if len(pads) == 1 and query.shape[0] > 1:
        pads = pads * query.shape[0]
    out = query.new_zeros(*query.shape[:3], value.shape[-1])
    for b, pad in enumerate(pads):
        first = max(0, pad - q_offset)  # the first query row whose slot is a real token
        if first >= query.shape[2]:
            continue
        out[b:b + 1, :, first:] = run_backend(
            query[b:b + 1, :, first:], key[b:b + 1, :, pad:], value[b:b + 1, :, pad:], transform=transform,
            q_offset=q_offset + first - pad, causal=True, scale=scale)
    return out


def masked_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, allowed: torch.Tensor,
                     transform: LogitTransform, q_offset: int, scale: float, dropout: float) -> torch.Tensor:
    """softmax(f(scale·q·kᵀ; t) masked by ``allowed``)·v with t = |q_offset + r − c|; rows with no key give 0.
    query (B, H, q, D); key, value (B, Hkv, kv, D); allowed (B|1, 1|H, q, kv). Returns (B, H, q, Dv).
    The reference backend's materialised attention with ``allowed`` as its only mask."""
    return reference_attention(query, key, value, transform=transform, q_offset=q_offset, causal=False,
                               scale=scale, mask=allowed, dropout=dropout)


# ----------------------------------------------------------------------------------------- attention function
def attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      **kwargs: Any) -> tuple[torch.Tensor, None]:
    """The function registered in ``AttentionInterface``: siattn attention with the method and tau of
    ``module.config`` (``siattn_method``, default "si-p-rope"; ``siattn_tau``, default 10).

    query (B, Hq, q, D) and key, value (B, Hkv, kv, D): rotated, cache appended, GQA heads not expanded.
    Returns (out (B, q, Hq, D), None); attention weights are never returned.
    """
    config = module.config
    transform = _config_transform(config)
    _check_mask_registered(config)
    tq, tk = query.shape[2], key.shape[2]
    scale = 1.0 / math.sqrt(query.shape[-1]) if scaling is None else float(scaling)
    dropout = float(dropout or 0.0)
    allowed, pads = None, None
    if attention_mask is None:
        # transformers' "is_causal" cases: q == 1 or q == kv (bottom-right), or a StaticCache prefill (top-left)
        q_offset = tk - tq if tq in (1, tk) else 0
        plain = True
    else:
        allowed = allowed_mask(attention_mask)
        found = query_offset(allowed)
        q_offset = max(tk - tq, 0) if found is None else found
        plain = found is not None and bool((allowed == causal_mask(q_offset, tq, tk, allowed.device)).all())
        if found is not None and not plain and dropout == 0.0:
            pads = left_padding(allowed, q_offset)
    if plain and dropout == 0.0:
        out = run_backend(query, key, value, transform=transform, q_offset=q_offset, causal=True, scale=scale)
    elif pads is not None:
        out = left_padded_attention(query, key, value, pads, transform, q_offset, scale)
    else:
        if allowed is None:
            allowed = causal_mask(q_offset, tq, tk, query.device)[None, None]
        out = masked_attention(query, key, value, allowed, transform, q_offset, scale, dropout)
    return out.transpose(1, 2).contiguous(), None

