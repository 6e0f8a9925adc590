"""Registering siattn in transformers: the attention function and its mask function under one name, and the
``p_rope`` / ``no_rope`` rope types (see :mod:`siattn.hf`)."""

from __future__ import annotations

from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from siattn.hf.attention import attention_forward
from siattn.hf.rope import SIATTN_IMPLEMENTATIONS, register_rope_types

DEFAULT_NAME = "siattn"


def register(name: str = DEFAULT_NAME) -> str:
    """Register siattn's attention function and the matching mask function as ``name``, and the ``p_rope`` /
    ``no_rope`` rope types. Idempotent. Returns ``name`` (pass it as ``attn_implementation``)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    current = AttentionInterface._global_mapping.get(name)
    if current is not None and current is not attention_forward:
        raise ValueError(f"attention implementation {name!r} is already registered to another function; pick "
                         "another name for siattn")
    AttentionInterface.register(name, attention_forward)
    AttentionMaskInterface.register(name, sdpa_mask)
    SIATTN_IMPLEMENTATIONS.add(name)
    register_rope_types()
    return name
