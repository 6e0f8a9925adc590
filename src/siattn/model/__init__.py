"""The GPT network of the paper (modded-nanogpt style) with any attention method, and nothing else: its
configuration, optimisers, schedules, presets and checkpoints live in :mod:`siattn.training`.

    from siattn.model import GPT, GPTConfig
    model = GPT(GPTConfig(vocab_size=257, n_layer=4, n_head=2, n_embd=128, head_dim=64, method="si-p-rope"))
    logits, loss = model(idx, targets)                     # nats/token
"""

from siattn.model.config import GPTConfig, pad_vocab
from siattn.model.gpt import GPT, KVCache, count_parameters

__all__ = ["GPT", "GPTConfig", "KVCache", "count_parameters", "pad_vocab"]
