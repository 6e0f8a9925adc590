"""The GPT on packed documents: one row holding several documents (``cu_seqlens``) gives every document the
logits, loss and gradients it gets when run alone; rotary positions restart at each document."""

from __future__ import annotations

import itertools

import pytest
import torch

from siattn import METHODS
from siattn.backends.varlen import from_lengths
from siattn.model import GPT, GPTConfig

TINY = dict(n_layer=2, n_embd=64, n_head=4, n_kv_head=2, head_dim=16, vocab_size=50, train_length=32)


def _model(method: str, backend: str) -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(method=method, attn_backend=backend, **TINY)).double()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # the zero-initialised projections and head would make every method look alike
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
    return model


def _tokens(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    return torch.randint(0, 50, (1, total), generator=g), torch.randint(0, 50, (1, total), generator=g)


@pytest.mark.parametrize("backend", ["reference", "chunked"])
@pytest.mark.parametrize("method", sorted(m for m in METHODS if METHODS[m].extends is None))
def test_packed_logits_and_gradients_equal_documents_alone(method, backend):
    lengths = [5, 1, 9, 3]
    cu = from_lengths(lengths)
    idx, targets = _tokens(lengths)
    model = _model(method, backend)
    logits, losses = model(idx, targets, cu_seqlens=cu, return_per_token_loss=True)
    losses.sum().backward()
    packed_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    alone_logits, alone_losses = [], []
    for s, e in itertools.pairwise(cu.tolist()):
        lg, ls = model(idx[:, s:e], targets[:, s:e], return_per_token_loss=True)
        alone_logits.append(lg)
        alone_losses.append(ls)
    torch.cat(alone_losses, 1).sum().backward()
    # float64 tolerance: the linear layers see a longer row when packed, so their products may sum in another order
    torch.testing.assert_close(logits, torch.cat(alone_logits, 1), rtol=1e-10, atol=1e-11)
    for name, p in model.named_parameters():
        # LogN scales q in float32 (siattn.positional.logn), so its own gradient sums float32 terms
        tol = dict(rtol=1e-5, atol=1e-6) if name.endswith("logn_scale") else dict(rtol=1e-10, atol=1e-11)
        torch.testing.assert_close(packed_grads[name], p.grad, **tol, msg=lambda m, n=name: f"{n}: {m}")


def test_packed_documents_differ_from_the_unpacked_row():
    """The boundaries change something: without cu_seqlens the second document attends to the first."""
    idx, _ = _tokens([6, 6])
    model = _model("si-p-rope", "chunked")
    packed, _ = model(idx, cu_seqlens=from_lengths([6, 6]))
    plain, _ = model(idx)
    torch.testing.assert_close(packed[:, :6], plain[:, :6], rtol=1e-12, atol=1e-12)
    assert (packed[:, 6:] - plain[:, 6:]).abs().max() > 1e-3


def test_packed_forward_refuses_batches_and_kv_cache():
    model = _model("rope", "chunked")
    cu = from_lengths([3, 3])
    with pytest.raises(ValueError, match=r"one packed row \(batch 1\), got batch 2"):
        model(torch.zeros(2, 6, dtype=torch.long), cu_seqlens=cu)
    from siattn.model.gpt import KVCache
    with pytest.raises(ValueError, match="cannot be combined with kv_cache"):
        model(torch.zeros(1, 6, dtype=torch.long), cu_seqlens=cu, kv_cache=KVCache(model.config, 1, 8, "cpu"))
    with pytest.raises(ValueError, match=r"cu_seqlens\[-1\] must equal the packed length T = 6, got 5"):
        model(torch.zeros(1, 6, dtype=torch.long), cu_seqlens=torch.tensor([0, 5]))
