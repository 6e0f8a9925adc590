"""Hugging Face transformers bridge: run a transformers model (Llama, Mistral, Qwen2, ...) with siattn's attention.

    import siattn.hf
    model = AutoModelForCausalLM.from_pretrained(path)
    siattn.hf.convert(model, method="si-p-rope", tau=10.0)     # p-RoPE + the scale-invariant transform, in place
    model.save_pretrained(out)                                # config.json keeps method, tau and the p-RoPE type
    siattn.hf.register()                                      # in a fresh process, before loading
    model = AutoModelForCausalLM.from_pretrained(out, attn_implementation="siattn")

What it installs (:func:`register`): an attention function in ``AttentionInterface`` and, under the same name,
transformers' ``sdpa_mask`` in ``AttentionMaskInterface`` (without it the function would get no mask at all); the
rope types ``"p_rope"`` and ``"no_rope"`` in ``ROPE_INIT_FUNCTIONS`` (also done on ``import siattn.hf``). The
attention implementation is not saved in config.json: call :func:`register` and pass ``attn_implementation``
again after every load.

Loading safely (:mod:`siattn.hf.rope`). p-RoPE is stored as transformers' ``proportional`` rope type (5.5+) with
siattn's keys ``p_rope_base`` / ``p_rope_fraction`` beside it: plain transformers without siattn loads the
checkpoint with p-RoPE frequencies and warns about those keys (no ``KeyError``), but runs no logit transform.
With siattn imported, building a converted model whose method changes the logits under any other attention
implementation raises with the call that loads it. Not caught: ``set_attn_implementation`` after loading, and
si-rope checkpoints (they keep the model's own rope type, whose init function siattn does not own).
Refused by name: attention logit soft-capping (Gemma-2) and attention sinks. Sliding windows are supported
through the mask transformers builds for them.

Positions. The transform's distance is measured in cache slots (t = i − j, query slot i, key slot j), never from
``position_ids``: with left padding the slots of one row are contiguous, so slot distances between real tokens are
the row's own token distances. The query slot offset comes from the mask when there is one (the largest
``last visible key − row`` over the call, right for dynamic and static caches); without a mask transformers means
plain causal attention: bottom-right aligned (offset kv − q) when q == 1 or q == kv, and top-left (offset 0) when
1 < q < kv, which only a StaticCache prefill produces.

Paths (:func:`siattn.hf.attention.attention_forward`). No mask: the fast backends
(:func:`siattn.backends.run_backend`). A mask in eager mode is read once per forward (one host sync, shared by
the layers): the plain causal mask runs the fast backends; one key window per batch row (left or right padding,
``generate`` on a padded batch) runs them row by row on each row's own keys; a packed row (position ids that
restart, or ``cu_seq_lens_q/k``) runs the backends' ``cu_seqlens`` path; any other mask (sliding windows) runs the
masked reference path, which materialises the scores (memory O(B·H·q·kv)). Decoding steps
(q <= 16 rows with a mask), attention dropout and every call inside ``torch.compile`` take one batched masked
call whose offset stays a tensor: no host sync and no Python loop over the cache length, so
``torch.compile(model, fullgraph=True)`` captures one graph and decoding does not recompile after warm-up
(static or dynamic cache; tests/hf/test_compile.py). Query rows that see no key give zeros. Float (additive)
masks are read as allowed / blocked only.

Methods: every method of :data:`siattn.METHODS` except the LogN ones (they need a learned per-head scale the HF
model has no weight for) and rope-ntk / yarn (plain logits: use transformers' own ``dynamic`` / ``yarn``
rope types with attn_implementation="sdpa"). Methods without rotary (nope, alibi, si-nope) switch the model to the
``no_rope`` type (identity rotation).
"""

from __future__ import annotations

try:
    from transformers import AttentionInterface  # noqa: F401 (checked here for a clear error)
    from transformers.masking_utils import AttentionMaskInterface  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without transformers
    raise ImportError(
        "siattn.hf needs transformers >= 4.53 (AttentionInterface and AttentionMaskInterface): "
        "pip install 'siattn[hf]'"
    ) from exc

from siattn.hf.attention import attention_forward
from siattn.hf.conversion import _set_attn_implementation as _set_attn_implementation
from siattn.hf.conversion import convert
from siattn.hf.models import CausalLMAdapter, load_hf_for_eval, load_model
from siattn.hf.registration import DEFAULT_NAME, register
from siattn.hf.rope import (
    NO_ROPE_TYPE,
    P_ROPE_TYPE,
    default_p_rope_base,
    no_rope_init,
    p_rope_init,
    p_rope_parameters,
    register_rope_types,
)

# the rope types (and the load check they carry) are in place as soon as siattn.hf is imported, so that loading a
# converted checkpoint without attn_implementation="siattn" fails with the way to load it
register_rope_types()

__all__ = [
    "DEFAULT_NAME",
    "NO_ROPE_TYPE",
    "P_ROPE_TYPE",
    "CausalLMAdapter",
    "attention_forward",
    "convert",
    "default_p_rope_base",
    "load_hf_for_eval",
    "load_model",
    "no_rope_init",
    "p_rope_init",
    "p_rope_parameters",
    "register",
]
