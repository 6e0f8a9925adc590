"""Tiny random transformers models for the bridge's tests: built from configs, never from the hub."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

HEAD_DIM, HEADS, KV_HEADS, VOCAB, MAX_POS = 16, 4, 2, 100, 256


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=64, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, head_dim=HEAD_DIM,
                         intermediate_size=128, num_hidden_layers=2, vocab_size=VOCAB, max_position_embeddings=MAX_POS,
                         bos_token_id=None, eos_token_id=None, pad_token_id=0)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def tokens(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))
