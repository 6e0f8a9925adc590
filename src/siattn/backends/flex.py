"""FlexAttention backend: the transform as a ``score_mod``, causality as a block mask, compiled.

Works on CPU (forward only: FlexAttention has no CPU backward) and CUDA (forward and backward).
The score handed to ``score_mod`` already carries the ``scale``; q_idx is the row of the query tensor, so the
absolute distance is t = q_offset + q_idx − kv_idx.
"""

from __future__ import annotations

import functools
import math

import torch

from siattn.backends.transforms import LogitTransform
from siattn.backends.varlen import document_ids
from siattn.positional.alibi import alibi_slopes


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


# torch's compiled FlexAttention on CPU returns wrong values, NaN at times, for some inputs of length 8 (seen with
# torch 2.13, with and without a score_mod); lengths that are multiples of 16 have always matched the reference, so
# CPU inputs are padded to one and the padded keys masked (tests/backends/test_flex.py)
CPU_LENGTH_MULTIPLE = 16


# torch's eager create_block_mask evaluates the mask at every (query, key) pair at once: a (tq, tk) bool tensor and
# an int64 sum of it, 144 GiB at 131,072 tokens. Above this many pairs the mask is built by the compiled
# create_block_mask, which reduces block by block (0.5 GiB of host memory at 65,536 tokens on CPU); below it the
# eager one, which does not compile again for every new shape and query offset.
EAGER_MASK_MAX_PAIRS = 1 << 28


@functools.cache
def _compiled_create_block_mask():
    from torch.nn.attention.flex_attention import create_block_mask

    return torch.compile(create_block_mask, dynamic=False)  # a shape-generic recompile failed to build on CPU


def _create_block_mask(mask_mod, tq: int, tk: int, device: str):
    """``create_block_mask(mask_mod)`` over (tq, tk) pairs, compiled when eager would hold every pair in memory."""
    from torch.nn.attention.flex_attention import create_block_mask

    build = _compiled_create_block_mask() if tq * tk > EAGER_MASK_MAX_PAIRS else create_block_mask
    return build(mask_mod, B=None, H=None, Q_LEN=tq, KV_LEN=tk, device=device)


@functools.lru_cache(maxsize=32)
def _block_mask(tq: int, tk: int, q_offset: int, causal: bool, valid_keys: int | None, device: str):
    """The block mask of a (tq, tk) call: causal (key position <= query position), and keys below
    ``valid_keys`` when the rest is padding (None: no padding)."""

    def causal_mask(b, h, q_idx, kv_idx):
        return q_idx + q_offset >= kv_idx

    def padded_mask(b, h, q_idx, kv_idx):
        keep = kv_idx < valid_keys
        return keep & (q_idx + q_offset >= kv_idx) if causal else keep

    mask = causal_mask if valid_keys is None else padded_mask
    return _create_block_mask(mask, tq, tk, device)


def _document_block_mask(doc: torch.Tensor, causal: bool):
    """The block mask of packed documents: query i sees key j when both lie in one document (``doc``: (T,)
    document ids) and, when ``causal``, j <= i. Blocks wholly outside the documents are skipped."""

    def document_mask(b, h, q_idx, kv_idx):
        same = doc[q_idx] == doc[kv_idx]
        return same & (q_idx >= kv_idx) if causal else same

    total = doc.shape[0]
    return _create_block_mask(document_mask, total, total, str(doc.device))


def make_score_mod(transform: LogitTransform, q_offset: int, num_heads: int, device: torch.device):
    """A FlexAttention score_mod computing L = f(S; t) for ``transform`` (None for the identity).

    The function object is cached per (transform, heads, device) and reads q_offset from a captured tensor,
    so a new offset (decoding) does not recompile. The tensor is rewritten only when the offset changes; a
    backward pass must not interleave with a forward at another offset (decoding runs without gradients).
    """
    if transform.kind == "none":
        return None
    if not 0 <= q_offset < 2**31:
        raise ValueError(f"q_offset must be in [0, 2**31) for the flex backend, got {q_offset}")
    score_mod, offset, current = _score_mod(transform, num_heads, str(device))
    if current[0] != q_offset:  # write only on change: autograd saves the tensor, and training keeps q_offset = 0
        offset.fill_(q_offset)
        current[0] = q_offset
    return score_mod


@functools.lru_cache(maxsize=64)
def _score_mod(transform: LogitTransform, num_heads: int, device: str):
    offset = torch.zeros((), device=device, dtype=torch.int32)  # the dtype of q_idx and kv_idx
    current = [0]  # the value in ``offset``, kept on the host so that reading it never syncs the device
    if transform.kind == "alibi":
        slopes = alibi_slopes(num_heads).to(device=device, dtype=torch.float32)

        def alibi(score, b, h, q_idx, kv_idx):
            t = (q_idx + offset - kv_idx).abs().to(torch.float32)
            return score - slopes[h] * t

        return alibi, offset, current
    tau, alpha, beta = transform.parameters
    shift = beta / alpha - math.log(alpha)

    inv_tau = 1.0 / tau  # a multiply per score instead of a division

    def scale_invariant(score, b, h, q_idx, kv_idx):
        t = (q_idx + offset - kv_idx).abs().to(torch.float32)
        a_sq = 2.0 * (torch.log1p(t * inv_tau) + shift)
        return score * torch.sqrt(a_sq) + (beta / alpha - a_sq)

    return scale_invariant, offset, current


def flex_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, transform: LogitTransform, q_offset: int,
    causal: bool, scale: float, cu_seqlens: torch.Tensor | None = None,
) -> torch.Tensor:
    """FlexAttention with the logit transform. q: (B, H, Tq, D); k, v: (B, Hkv, Tk, D) -> (B, H, Tq, D).
    ``cu_seqlens``: packed documents (:mod:`siattn.backends.varlen`), a mask_mod on document ids (the
    score_mod's distances are unchanged: t = i − j is the same within a document)."""
    out_dtype = q.dtype
    tq, tk = q.shape[2], k.shape[2]
    if q.device.type == "cpu":
        if q.dtype != torch.float32:
            q, k, v = q.float(), k.float(), v.float()
        q, k, v = (_pad_length(x, CPU_LENGTH_MULTIPLE) for x in (q, k, v))
    padded = k.shape[2] != tk
    if cu_seqlens is not None:
        doc = document_ids(cu_seqlens, tk).to(torch.int32)
        if padded:  # the padding is a document of its own: no real query sees it, and its queries see a key
            doc = torch.cat([doc, doc.new_full((k.shape[2] - tk,), cu_seqlens.numel() - 1)])
        block_mask = _document_block_mask(doc, causal)
    elif causal or padded:
        block_mask = _block_mask(q.shape[2], k.shape[2], q_offset, causal, tk if padded else None, str(q.device))
    else:
        block_mask = None
    score_mod = make_score_mod(transform, q_offset, q.shape[1], q.device)
    out = _compiled_flex()(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale,
                           enable_gqa=q.shape[1] != k.shape[1])
    return out[:, :, :tq].to(out_dtype)


def _pad_length(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """(B, H, T, D) -> (B, H, T', D), zeros appended so that T' is a multiple of ``multiple``."""
    extra = -x.shape[2] % multiple
    return torch.nn.functional.pad(x, (0, 0, 0, extra)) if extra else x
