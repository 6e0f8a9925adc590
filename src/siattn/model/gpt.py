"""A modded-nanogpt-style GPT whose attention is any method of :data:`siattn.METHODS`.

Reads top to bottom: norm, attention (with its KV cache), MLP, block, GPT, generate.

    x = norm(wte(idx))                                  # RMSNorm on the embeddings
    for block: x = x + attn(norm(x)); x = x + mlp(norm(x))
    logits = lm_head(norm(x))                           # untied head

Attention: q, k, v projections; QK-norm (RMSNorm without gain over each head); the method's rotary embedding
(cos/sin computed once per forward and shared by the blocks); then :func:`siattn.attention`, which applies the
method's logit transform (LogN with a learned scale per head and layer, ALiBi, or the scale-invariant a_t, m_t).
MLP: ReLU². Output projections and the head start at zero (modded-nanogpt).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from siattn.backends.varlen import check_cu_seqlens_values, positions_in_documents
from siattn.errors import check_float, check_int
from siattn.functional import attention
from siattn.methods import get_method
from siattn.model.config import GPTConfig
from siattn.positional import RotaryConfig, apply_rotary, logn_init


def norm(x: torch.Tensor) -> torch.Tensor:
    """RMSNorm over the last dim, without a gain."""
    return F.rms_norm(x, (x.size(-1),))


class Linear(nn.Linear):
    """Bias-free linear layer, initialised U(±√3·σ) with σ = 0.5/√fan_in (modded-nanogpt's CastedLinear)."""

    def __init__(self, in_features: int, out_features: int, zero_init: bool = False):
        super().__init__(in_features, out_features, bias=False)
        self.zero_init = zero_init
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if getattr(self, "zero_init", False):
            nn.init.zeros_(self.weight)
        else:
            bound = math.sqrt(3) * 0.5 / math.sqrt(self.in_features)
            nn.init.uniform_(self.weight, -bound, bound)


class KVCache:
    """Keys (after QK-norm and rotary) and values of every layer, for up to ``max_length`` positions.

    The buffers are allocated on the first update, in the dtype the keys arrive in (bfloat16 under autocast).
    """

    def __init__(self, config: GPTConfig, batch_size: int, max_length: int, device: torch.device | str):
        self.shape = (config.n_layer, batch_size, config.n_kv_head, max_length, config.head_dim)
        self.device = device
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.max_length = max_length
        self.length = 0  # positions filled (for every layer, once a forward has finished)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, Hkv, T, D) after the cached positions; return every key and value so far."""
        end = self.length + k.shape[2]
        if end > self.max_length:
            raise ValueError(f"KV cache holds {self.max_length} positions; {end} needed")
        if self.k is None:
            self.k = torch.zeros(self.shape, device=self.device, dtype=k.dtype)
            self.v = torch.zeros(self.shape, device=self.device, dtype=v.dtype)
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.method = get_method(config.method)
        self.tau = config.tau
        self.backend = config.attn_backend
        self.c_q = Linear(config.n_embd, config.n_head * config.head_dim)
        self.c_k = Linear(config.n_embd, config.n_kv_head * config.head_dim)
        self.c_v = Linear(config.n_embd, config.n_kv_head * config.head_dim)
        self.c_proj = Linear(config.n_head * config.head_dim, config.n_embd, zero_init=True)
        # LogN: logits × s_h·log n with s_h learned; s·log(L_train) = 1 at the start
        self.logn_scale = (nn.Parameter(torch.full((config.n_head,), logn_init(config.train_length)))
                           if self.method.uses_logn else None)

    def queries_keys(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor] | None,
                     rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """q (B, H, R, D) of the query rows ``rows`` (default: all T, R = T) and k (B, Hkv, T, D) of the input
        x (B, T, C): projections, QK-norm (RMSNorm without gain over each head), then the rotary (cos, sin)."""
        B, T, _ = x.shape
        xq = x if rows is None else x[:, rows]
        q = self.c_q(xq).view(B, xq.shape[1], self.n_head, self.head_dim).transpose(1, 2)  # (B, H, R, D)
        k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        q, k = norm(q), norm(k)  # QK-norm
        if rotary is not None:
            cos, sin = rotary
            q_cos, q_sin = (cos, sin) if rows is None else (cos[rows], sin[rows])
            q, k = apply_rotary(q, q_cos, q_sin), apply_rotary(k, cos, sin)
        return q, k

    def forward(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor] | None,
                cache: KVCache | None = None, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q, k = self.queries_keys(x, rotary)  # (B, H, T, D), (B, Hkv, T, D)
        v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        q, k = q.to(v.dtype), k.to(v.dtype)  # under autocast the norm may have returned float32
        q_offset = 0
        if cache is not None:  # keys and values of earlier positions; this chunk's queries start after them
            q_offset = cache.length
            k, v = cache.update(self.layer, k, v)
        y = attention(q, k, v, method=self.method, causal=True, q_offset=q_offset, backend=self.backend,
                      tau=self.tau, logn_scale=self.logn_scale, cu_seqlens=cu_seqlens)  # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        hidden = int(config.mlp_ratio * config.n_embd)
        self.c_fc = Linear(config.n_embd, hidden)
        self.c_proj = Linear(hidden, config.n_embd, zero_init=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.relu(self.c_fc(x)).square())  # ReLU²


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.attn = CausalSelfAttention(config, layer)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor] | None,
                cache: KVCache | None = None, cu_seqlens: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(norm(x), rotary, cache, cu_seqlens)
        return x + self.mlp(norm(x))


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor, *, per_token: bool = False) -> torch.Tensor:
    """Cross-entropy of ``logits`` (B, T, V) float32 against ``targets`` (B, T), −1 = not scored: the mean in
    nats/token over scored targets, or with ``per_token`` the (B, T) losses (0 where the target is −1)."""
    batch, length = targets.shape
    losses = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1,
                             reduction="none").view(batch, length)
    if per_token:
        return losses
    return losses.sum() / (targets != -1).sum().clamp(min=1)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.method = get_method(config.method)
        self.rotary: RotaryConfig | None = self.method.rotary_config(
            config.head_dim, config.train_length, theta=config.rope_theta, p_rope_base=config.p_rope_base,
            p_rope_fraction=config.p_rope_fraction)
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
            h=nn.ModuleList([Block(config, i) for i in range(config.n_layer)]),
        ))
        self.lm_head = Linear(config.n_embd, config.padded_vocab_size, zero_init=True)
        self._rotary_cache: dict[tuple[int, int, int, str], tuple[torch.Tensor, torch.Tensor]] = {}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @torch.compiler.disable
    def rotary_cos_sin(self, start: int, length: int, context_length: int,
                       device: torch.device) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(cos, sin) (length, head_dim) for positions start.., adapted to ``context_length`` (NTK, YaRN)."""
        if self.rotary is None:
            return None
        if self.rotary.kind in ("rope", "p-rope"):
            context_length = 0  # the frequencies do not depend on it
        key = (start, length, context_length, str(device))
        if key not in self._rotary_cache:
            if len(self._rotary_cache) > 64:
                self._rotary_cache.clear()
            self._rotary_cache[key] = self.rotary.cos_sin(start, length, context_length or start + length,
                                                          device=device)
        return self._rotary_cache[key]

    def _packed_rotary(self, idx: torch.Tensor, cu_seqlens: torch.Tensor, context_length: int | None,
                       kv_cache: KVCache | None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(cos, sin) (T, head_dim) of packed documents: each position's row at its position within its document."""
        if kv_cache is not None:
            raise ValueError("cu_seqlens (packed documents) cannot be combined with kv_cache; generate each "
                             "document on its own")
        if idx.shape[0] != 1:
            raise ValueError(f"with cu_seqlens, idx must hold one packed row (batch 1), got batch {idx.shape[0]}")
        cu = check_cu_seqlens_values(cu_seqlens, idx.shape[1], idx.device)
        if self.rotary is None:
            return None
        longest = int((cu[1:] - cu[:-1]).max())
        cos, sin = self.rotary_cos_sin(0, longest, context_length or longest, idx.device)
        positions = positions_in_documents(cu, idx.shape[1])
        return cos[positions], sin[positions]

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, context_length: int | None = None,
                return_per_token_loss: bool = False, kv_cache: KVCache | None = None,
                cu_seqlens: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx: (B, T) token ids -> (logits (B, T, padded_vocab) float32, loss or None).

        loss: mean cross-entropy in nats/token over targets != -1, or with ``return_per_token_loss`` the (B, T)
        losses (0 where the target is -1). ``context_length`` is the sequence length NTK/YaRN adapt to
        (default: the positions this forward reaches); with ``kv_cache`` the tokens continue the cached ones.
        ``cu_seqlens``: packed documents in one row (B = 1, no KV cache; :func:`siattn.attention`'s contract):
        attention stays within each document and rotary positions restart at each one, so every document's logits
        are those of the document run alone; ``context_length`` then defaults to the longest document.
        """
        T = idx.shape[1]
        start = kv_cache.length if kv_cache is not None else 0
        if cu_seqlens is None:
            rotary = self.rotary_cos_sin(start, T, context_length or start + T, idx.device)
        else:
            rotary = self._packed_rotary(idx, cu_seqlens, context_length, kv_cache)
        x = norm(self.transformer.wte(idx))  # (B, T, C)
        for block in self.transformer.h:
            x = block(x, rotary, kv_cache, cu_seqlens)
        if kv_cache is not None:
            kv_cache.length += T
        logits = self.lm_head(norm(x)).float()  # (B, T, V)
        if targets is None:
            return logits, None
        return logits, next_token_loss(logits, targets, per_token=return_per_token_loss)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0, top_k: int | None = None,
                 eod_id: int | None = None, generator: torch.Generator | None = None,
                 return_logits: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Continue ``idx`` (B, T) by ``max_new_tokens`` tokens with a KV cache; temperature 0 is greedy.

        NTK/YaRN see context_length = T + max_new_tokens for the whole generation. Stops early when every row
        has produced ``eod_id``. Returns (B, T + n) ids, and with ``return_logits`` also the (B, n, vocab)
        float32 logits each new token was drawn from.
        """
        check_int("max_new_tokens", max_new_tokens, min=0)
        check_float("temperature", temperature, min=0.0)
        if top_k is not None:
            check_int("top_k", top_k, min=1)
        B, T = idx.shape
        context_length = T + max_new_tokens
        cache = KVCache(self.config, B, context_length, idx.device)
        steps_logits = []
        done = torch.zeros(B, dtype=torch.bool, device=idx.device)
        logits, _ = self(idx, context_length=context_length, kv_cache=cache)  # prefill
        for i in range(max_new_tokens):
            last = logits[:, -1, : self.config.vocab_size]  # (B, V) without the padding rows
            steps_logits.append(last)
            if temperature == 0:
                nxt = last.argmax(dim=-1, keepdim=True)
            else:
                scaled = last / temperature
                if top_k is not None:
                    kth = torch.topk(scaled, min(top_k, scaled.size(-1))).values[:, [-1]]
                    scaled = scaled.masked_fill(scaled < kth, float("-inf"))
                nxt = torch.multinomial(F.softmax(scaled, dim=-1), 1, generator=generator)
            idx = torch.cat((idx, nxt), dim=1)
            if eod_id is not None:
                done |= nxt.squeeze(1) == eod_id
                if bool(done.all()):
                    break
            if i + 1 < max_new_tokens:
                logits, _ = self(nxt, context_length=context_length, kv_cache=cache)
        if return_logits:
            empty = logits.new_zeros(B, 0, self.config.vocab_size)
            return idx, torch.stack(steps_logits, dim=1) if steps_logits else empty
        return idx


def count_parameters(config: GPTConfig) -> int:
    """Parameters of ``GPT(config)`` without allocating them (built on the meta device)."""
    with torch.device("meta"):
        return GPT(config).num_parameters()
