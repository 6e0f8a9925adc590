"""``siattn.hf.models.CausalLMAdapter``: a transformers causal LM with the GPT's calling convention."""

import pytest
import torch

pytest.importorskip("transformers")

from hf_models import VOCAB, tiny_llama, tokens

from siattn.hf import convert
from siattn.hf.models import CausalLMAdapter
from siattn.training.validation import per_token_losses


@pytest.mark.parametrize("method", ["si-p-rope", None])
def test_head_slicing_through_the_adapter_gives_the_unsliced_losses(method):
    """per_token_losses swaps the head for the identity and applies it slice by slice (as it does when the logits
    would be large): through the adapter the swap must reach the wrapped model, and the head comes back after."""
    seed = 3
    print(f"seed={seed}")
    model = tiny_llama(seed)
    if method:
        model = convert(model, method=method)
    adapter = CausalLMAdapter(model)
    head = model.get_output_embeddings()
    idx = tokens(2, 33, seed=seed)
    whole = per_token_losses(adapter, idx[:, :-1], idx[:, 1:], head_chunk=0)
    sliced = per_token_losses(adapter, idx[:, :-1], idx[:, 1:], head_chunk=7)
    torch.testing.assert_close(sliced, whole, rtol=1e-5, atol=1e-6)
    assert whole.shape == (2, 32) and bool((whole > 0).all())
    assert model.get_output_embeddings() is head and adapter.lm_head is head
    assert "lm_head" not in adapter._modules and head.out_features == VOCAB
