"""The attention function siattn registers in transformers' ``AttentionInterface`` (see :mod:`siattn.hf`)."""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from transformers.masking_utils import AttentionMaskInterface

from siattn.backends import run_backend
from siattn.backends.reference import (
    attention_with_terms,
    compute_dtype,
    distances,
    masked_logit_terms,
    reference_attention,
)
from siattn.backends.transforms import LogitTransform
from siattn.backends.varlen import same_document
from siattn.hf.packing import packed_cu_seqlens
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


# keyword arguments some transformers models pass for attention features siattn does not compute
_UNSUPPORTED_KWARGS = {
    "softcap": "attention logit soft-capping (Gemma-2's attn_logit_softcapping)",
    "s_aux": "attention sinks (s_aux, gpt-oss)",
}
# config fields that switch those features on, checked by convert
_UNSUPPORTED_CONFIG = {
    "attn_logit_softcapping": "attention logit soft-capping (Gemma-2)",
}


def check_model_features(config: Any) -> None:
    """Raise ValueError naming the config field when the model uses an attention feature siattn does not compute.
    Sliding windows are supported: transformers builds their mask and the bridge applies it."""
    for field_name, what in _UNSUPPORTED_CONFIG.items():
        value = getattr(config, field_name, None)
        if value is not None:
            raise ValueError(f"{what} is not supported by siattn: config.{field_name} = {value!r}; it would be "
                             f"silently dropped (set config.{field_name} = None to convert without it)")


def _check_call_features(kwargs: dict) -> None:
    for name, what in _UNSUPPORTED_KWARGS.items():
        if kwargs.get(name) is not None:
            raise ValueError(f"{what} is not supported by siattn's attention function: the model passed "
                             f"{name}={kwargs[name]!r}")


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


def query_offset_tensor(allowed: torch.Tensor) -> torch.Tensor:
    """Slot of query row 0 as a 0-dim int64 tensor, without a host sync: max over rows of (last visible key − row),
    or kv − q when no key is visible at all. ``allowed``: boolean (B|1, 1|H, q, kv)."""
    tq, tk = allowed.shape[-2:]
    visible = allowed.any(-1)
    last = tk - 1 - allowed.flip(-1).to(torch.uint8).argmax(-1)
    rel = (last - torch.arange(tq, device=allowed.device)).masked_fill(~visible, -1).amax()
    return torch.where(rel < 0, torch.full_like(rel, max(tk - tq, 0)), rel)


def query_offset(allowed: torch.Tensor) -> int | None:
    """Slot of query row 0: max over rows of (last visible key − row); None when no key is visible at all."""
    if not bool(allowed.any()):
        return None
    return int(query_offset_tensor(allowed))


@dataclass(frozen=True)
class MaskLayout:
    """What a mask is, read once on the host: the query slot offset and, when the mask is causal within one key
    window per batch row (left and right padding), the windows [starts[b], ends[b]). ``kind``: "causal" (no
    padding), "windows", "general" (anything else: sliding windows, packing) or "empty" (no key visible)."""

    kind: str
    q_offset: int
    starts: tuple[int, ...] = ()
    ends: tuple[int, ...] = ()


def mask_layout(allowed: torch.Tensor) -> MaskLayout:
    """Classify a boolean (B|1, 1|H, q, kv) mask (one host sync). Row b is a key window when its mask equals
    causal(q_offset) ∧ starts[b] <= key < ends[b], starts[b] / ends[b] being its first / last visible key (+1)."""
    tq, tk = allowed.shape[-2:]
    device = allowed.device
    visible = allowed.any(-1)  # (B, H, q)
    if allowed.shape[1] != 1:
        offset = query_offset(allowed)
        return MaskLayout("empty", max(tk - tq, 0)) if offset is None else MaskLayout("general", offset)
    rows = allowed[:, 0]  # (B, q, kv)
    q_offset = query_offset_tensor(allowed)
    keys = torch.arange(tk, device=device)
    any_key = rows.any(-2)  # (B, kv): keys some query sees
    starts = any_key.to(torch.uint8).argmax(-1)
    ends = tk - any_key.flip(-1).to(torch.uint8).argmax(-1)
    qpos = q_offset + torch.arange(tq, device=device)
    expected = ((keys[None, None, :] <= qpos[None, :, None]) & (keys[None, None, :] >= starts[:, None, None])
                & (keys[None, None, :] < ends[:, None, None]))
    summary = torch.stack((q_offset, visible.any().long(), (rows == expected).all().long()))
    offset, anything, windows = summary.tolist()
    if not anything:
        return MaskLayout("empty", max(tk - tq, 0))
    if not windows:
        return MaskLayout("general", offset)
    bounds = torch.stack((starts, ends)).tolist()
    if all(s == 0 for s in bounds[0]) and all(e == tk for e in bounds[1]):
        return MaskLayout("causal", offset)
    return MaskLayout("windows", offset, tuple(bounds[0]), tuple(bounds[1]))


class PerMaskCache:
    """Values derived from an attention mask, remembered while the mask tensor is alive and unchanged.
    transformers builds one mask per forward (two for models that mix sliding and full layers) and hands the same
    tensor to every layer, so what is read from it is computed in the first layer only. Not used inside
    torch.compile."""

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self.entries: list[tuple[weakref.ref, int, Any, Any]] = []  # (mask, its version, key, value)

    def get(self, mask: torch.Tensor, key: Any, compute: Any) -> Any:
        """The value for (``mask``, ``key``), from ``compute()`` when not remembered."""
        for ref, version, entry_key, value in self.entries:
            if ref() is mask and version == mask._version and entry_key == key:
                return value
        value = compute()
        self.entries = [(weakref.ref(mask), mask._version, key, value), *self.entries[: self.size - 1]]
        return value


_LAYOUTS = PerMaskCache()
_DECODE_TERMS = PerMaskCache()


def cached_mask_layout(attention_mask: torch.Tensor, allowed: torch.Tensor) -> MaskLayout:
    """:func:`mask_layout` of ``allowed``, remembered for the tensor ``attention_mask`` while it is unchanged."""
    return _LAYOUTS.get(attention_mask, None, lambda: mask_layout(allowed))


def masked_terms(allowed: torch.Tensor, transform: LogitTransform, num_heads: int, num_kv_heads: int,
                 dtype: torch.dtype) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """:func:`~siattn.backends.reference.masked_logit_terms` of a boolean (B|1, 1|H, q, kv) mask, the query offset
    read from the mask on the device (no host sync)."""
    tq, tk = allowed.shape[-2:]
    signed = distances(query_offset_tensor(allowed), tq, 0, tk, allowed.device)
    return masked_logit_terms(allowed, signed, transform, num_heads, num_kv_heads, dtype)


def left_padding(allowed: torch.Tensor, q_offset: int) -> list[int] | None:
    """Per-row count of leading padded key slots when ``allowed`` is causal(q_offset) with left padding only
    (row b: key j visible iff p_b <= j <= q_offset + r), else None."""
    layout = mask_layout(allowed)
    tk = allowed.shape[-1]
    if layout.q_offset != q_offset or layout.kind not in ("causal", "windows"):
        return None
    if layout.kind == "causal":
        return [0] * allowed.shape[0]
    return list(layout.starts) if all(e == tk for e in layout.ends) else None


def key_window_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, starts: tuple[int, ...],
                         ends: tuple[int, ...], transform: LogitTransform, q_offset: int, scale: float,
                         backend: str = "auto") -> torch.Tensor:
    """Causal attention where batch row b sees only key slots [starts[b], ends[b]) (left / right padding), through
    the fast backends one row at a time on its own keys: nothing is materialised. Query rows whose slot precedes
    starts[b] see no key and give 0, as in the masked path; distances stay slot distances."""
    batch = query.shape[0]
    if len(starts) == 1 and batch > 1:
        starts, ends = starts * batch, ends * batch
    out = query.new_zeros(*query.shape[:3], value.shape[-1])
    for b, (start, end) in enumerate(zip(starts, ends)):
        first = max(0, start - q_offset)  # the first query row whose slot is at or after the window's start
        if first >= query.shape[2] or end <= start:
            continue
        out[b:b + 1, :, first:] = run_backend(
            query[b:b + 1, :, first:], key[b:b + 1, :, start:end], value[b:b + 1, :, start:end],
            transform=transform, q_offset=q_offset + first - start, causal=True, scale=scale, backend=backend)
    return out


def left_padded_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, pads: list[int],
                          transform: LogitTransform, q_offset: int, scale: float) -> torch.Tensor:
    """Left-padded rows (p_b padded key slots in row b) through :func:`key_window_attention`."""
    tk = key.shape[2]
    return key_window_attention(query, key, value, tuple(pads), (tk,) * len(pads), transform, q_offset, scale)


def masked_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, allowed: torch.Tensor,
                     transform: LogitTransform, q_offset: int | torch.Tensor, scale: float,
                     dropout: float) -> torch.Tensor:
    """softmax(f(scale·q·kᵀ; t) masked by ``allowed``)·v with t = |q_offset + r − c|; rows with no key give 0.
    query (B, H, q, D); key, value (B, Hkv, kv, D); allowed (B|1, 1|H, q, kv); q_offset an int or a 0-dim
    tensor (no host sync). Returns (B, H, q, Dv). The reference backend's materialised attention with ``allowed``
    as its only mask: memory O(B·H·q·kv)."""
    return reference_attention(query, key, value, transform=transform, q_offset=q_offset, causal=False,
                               scale=scale, mask=allowed, dropout=dropout)


# query rows up to which a masked call is computed in one batched, materialised, sync-free step: with q <= 16 the
# scores take B·H·q·kv floats, no more than the key cache itself at head dimension 16
SMALL_QUERY = 16


# ----------------------------------------------------------------------------------------- attention function
def packed_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, transform: LogitTransform, scale: float,
                     kwargs: dict, backend: str = "auto") -> torch.Tensor | None:
    """One packed row (position ids that restart at 0, or ``cu_seq_lens_q/k``) through the backends'
    ``cu_seqlens`` path, each sequence attending only to itself with distances from its own start; None when the
    inputs are not packed, or when a mask is given that is not exactly the sequences' block-diagonal causal mask
    (padding inside the row: the general path handles it)."""
    cu_seqlens = packed_cu_seqlens(**kwargs)
    if cu_seqlens is None:
        return None
    if attention_mask is not None:
        allowed = allowed_mask(attention_mask)
        expected = same_document(cu_seqlens.to(query.device), query.shape[2], causal=True)
        if not torch.equal(allowed.reshape(-1, *expected.shape).all(0), expected):
            return None
    return run_backend(query, key, value, transform=transform, causal=True, scale=scale, backend=backend,
                       cu_seqlens=cu_seqlens.to(query.device))


def autocast_inputs(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v in the autocast dtype when autocast is on for their device, as SDPA takes them: the rotary
    embedding's float32 cos/sin lift q and k to float32 while v stays in the autocast dtype."""
    device = query.device.type
    if not torch.is_autocast_enabled(device):
        return query, key, value
    dtype = torch.get_autocast_dtype(device)
    return query.to(dtype), key.to(dtype), value.to(dtype)


def attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      **kwargs: Any) -> tuple[torch.Tensor, None]:
    """The function registered in ``AttentionInterface``: siattn attention with the method and tau of
    ``module.config`` (``siattn_method``, default "si-p-rope"; ``siattn_tau``, default 10) on the backend
    ``config.siattn_backend`` (default "auto", as :func:`siattn.backends.run_backend`) where a fast backend runs.

    query (B, Hq, q, D) and key, value (B, Hkv, kv, D): rotated, cache appended, GQA heads not expanded.
    Returns (out (B, q, Hq, D), None); attention weights are never returned.

    Paths: one packed row (:func:`packed_attention`) → the backends' cu_seqlens path; no mask → the fast
    backends (causal, offset from the shapes). Inside torch.compile, with attention dropout, or with a mask and q <=
    :data:`SMALL_QUERY` rows (decoding) → one batched masked call with the offset as a tensor read from the mask (no
    host sync, no Python loop over the cache length, so decoding compiles once); outside torch.compile the mask's
    logit terms (:func:`masked_terms`) are computed in the first layer and reused by the others. Otherwise the
    mask's layout is read once per forward (:func:`cached_mask_layout`): causal → the fast backends; one key window
    per row (left / right padding) → :func:`key_window_attention`; anything else → the masked call.
    """
    config = module.config
    query, key, value = autocast_inputs(query, key, value)
    transform = _config_transform(config)
    backend = getattr(config, "siattn_backend", "auto")
    _check_mask_registered(config)
    _check_call_features(kwargs)
    tq, tk = query.shape[2], key.shape[2]
    scale = 1.0 / math.sqrt(query.shape[-1]) if scaling is None else float(scaling)
    dropout = float(dropout or 0.0)
    compiling = torch.compiler.is_compiling()
    if not compiling and dropout == 0.0 and query.shape[0] == 1 and tq == tk:
        packed = packed_attention(query, key, value, attention_mask, transform, scale, kwargs, backend)
        if packed is not None:
            return packed.transpose(1, 2).contiguous(), None
    if attention_mask is None:
        # transformers' "is_causal" cases: q == 1 or q == kv (bottom-right), or a StaticCache prefill (top-left)
        q_offset = tk - tq if tq in (1, tk) else 0
        if dropout == 0.0 and not compiling:
            out = run_backend(query, key, value, transform=transform, q_offset=q_offset, causal=True, scale=scale,
                              backend=backend)
        else:  # inside torch.compile the cache length may be symbolic: no Python loop over it
            allowed = causal_mask(q_offset, tq, tk, query.device)[None, None]
            out = masked_attention(query, key, value, allowed, transform, q_offset, scale, dropout)
        return out.transpose(1, 2).contiguous(), None
    if compiling or dropout > 0.0 or tq <= SMALL_QUERY:
        terms_key = (transform, query.shape[1], key.shape[1], compute_dtype(query.dtype))  # transform, H, Hkv, dtype

        def terms_of_mask() -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
            return masked_terms(allowed_mask(attention_mask), *terms_key)

        # outside torch.compile, the terms of this forward's mask are computed in the first layer only
        terms = terms_of_mask() if compiling else _DECODE_TERMS.get(attention_mask, terms_key, terms_of_mask)
        out = attention_with_terms(query, key, value, *terms, scale=scale, dropout=dropout)
        return out.transpose(1, 2).contiguous(), None
    allowed = allowed_mask(attention_mask)
    layout = cached_mask_layout(attention_mask, allowed)
    if layout.kind == "causal":
        out = run_backend(query, key, value, transform=transform, q_offset=layout.q_offset, causal=True,
                          scale=scale, backend=backend)
    elif layout.kind == "windows":
        out = key_window_attention(query, key, value, layout.starts, layout.ends, transform, layout.q_offset, scale,
                                   backend)
    else:
        out = masked_attention(query, key, value, allowed, transform, layout.q_offset, scale, dropout)
    return out.transpose(1, 2).contiguous(), None
