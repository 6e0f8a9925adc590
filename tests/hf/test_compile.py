"""torch.compile(fullgraph=True) of a converted model: masks without host syncs, decoding without recompiles.

Compiled with the "eager" backend: dynamo's graph capture (where a host sync or a guard on the cache position
would break the graph or recompile) is what is tested; inductor's code generation is torch's concern."""

import inspect

import pytest
import torch

transformers = pytest.importorskip("transformers")
hf = pytest.importorskip("siattn.hf")

from hf_models import tiny_llama, tokens  # noqa: E402
from torch._dynamo.utils import counters  # noqa: E402
from transformers import DynamicCache, StaticCache  # noqa: E402

STEPS = 32


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def compiled_graphs() -> int:
    return counters["stats"]["unique_graphs"]


def padded_batch(length: int, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two rows of ``length`` tokens, the second left-padded by 3; a 2D mask of ``total`` slots."""
    ids = tokens(2, length)
    ids[1, :3] = 0
    mask = torch.ones(2, total, dtype=torch.long)
    mask[1, :3] = 0
    return ids, mask


def test_fullgraph_forward_with_a_padding_mask_equals_eager():
    model = hf.convert(tiny_llama(), method="si-p-rope")
    ids, mask = padded_batch(20, 20)
    mask[0, 15:] = 0  # right padding in the other row
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    with torch.no_grad():
        expected = model(ids, attention_mask=mask).logits
        out = compiled(ids, attention_mask=mask).logits
    assert compiled_graphs() == 1
    keep = mask.bool()
    torch.testing.assert_close(out[keep], expected[keep], atol=1e-5, rtol=1e-5)


def decode(step, model, cache, ids, mask, static: bool) -> tuple[list[torch.Tensor], list[int]]:
    """Greedy decoding of STEPS tokens after the prompt ``ids``; returns the logits and the compiled-graph counts
    after each step."""
    length = ids.shape[1]
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    kw = {cache_kw: cache, "use_cache": True}
    prompt_mask = mask if static else mask[:, :length]
    out = step(input_ids=ids, attention_mask=prompt_mask, position_ids=(mask[:, :length].cumsum(-1) - 1).clamp(min=0),
               **({"cache_position": torch.arange(length)} if static else {}), **kw)
    logits, graphs = [out.logits[:, -1]], []
    for i in range(STEPS):
        slot = length + i
        step_mask = mask if static else mask[:, :slot + 1]
        out = step(input_ids=logits[-1].argmax(-1, keepdim=True), attention_mask=step_mask,
                   position_ids=mask[:, :slot + 1].sum(-1, keepdim=True) - 1,
                   **({"cache_position": torch.tensor([slot])} if static else {}), **kw)
        logits.append(out.logits[:, -1])
        graphs.append(compiled_graphs())
    return logits, graphs


def test_static_cache_decoding_compiles_once_and_matches_eager():
    model = hf.convert(tiny_llama(), method="si-p-rope")
    total = 8 + STEPS + 1
    ids, mask = padded_batch(8, total)
    with torch.no_grad():
        eager, _ = decode(model.forward, model, StaticCache(config=model.config, max_cache_len=total), ids, mask, True)
        step = torch.compile(model.forward, fullgraph=True, backend="eager")
        compiled, graphs = decode(step, model, StaticCache(config=model.config, max_cache_len=total), ids, mask, True)
    assert graphs[0] == 2  # the prefill and the decoding step
    assert graphs[-1] == graphs[0], f"decoding recompiled: graphs after each step {graphs}"
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("padded", [True, False])
def test_dynamic_cache_decoding_stops_recompiling_after_warm_up(padded):
    model = hf.convert(tiny_llama(), method="si-p-rope")
    ids, mask = padded_batch(8, 8 + STEPS + 1) if padded else (tokens(1, 8), torch.ones(1, 8 + STEPS + 1,
                                                                                         dtype=torch.long))
    with torch.no_grad():
        eager, _ = decode(model.forward, model, DynamicCache(config=model.config), ids, mask, False)
        step = torch.compile(model.forward, fullgraph=True, backend="eager")
        compiled, graphs = decode(step, model, DynamicCache(config=model.config), ids, mask, False)
    # warm-up: the prefill, one decoding step, then one graph with the cache length symbolic
    assert graphs[1] <= 3 and graphs[-1] == graphs[1], f"decoding recompiled: graphs after each step {graphs}"
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
