"""The model on CUDA (skipped without it): bf16 autocast training steps, KV-cache decoding, checkpoints."""

from __future__ import annotations

import pytest
import torch

from siattn.model import GPT, GPTConfig
from siattn.training import build_optimizer, load_checkpoint, resolve_config, save_checkpoint

pytestmark = pytest.mark.gpu
METHODS = ["si-p-rope", "logn-p-rope", "alibi", "rope-ntk", "rope"]


@pytest.mark.parametrize("method", METHODS)
def test_bf16_training_steps_lower_the_loss_on_cuda(method):
    cfg = resolve_config("gpu-small", method=method, n_layer=2, vocab_size=512, seq_len=512)
    model = GPT(cfg.model).cuda()
    opt = build_optimizer(model, cfg)
    x = torch.randint(0, 512, (4, 513), device="cuda")
    losses = []
    for _ in range(4):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


@pytest.mark.parametrize("method", METHODS)
def test_kv_cache_generation_matches_a_full_forward_on_cuda(method):
    cfg = GPTConfig(vocab_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=128, head_dim=32, method=method,
                    train_length=16, p_rope_base=8.0)
    torch.manual_seed(0)
    model = GPT(cfg).cuda().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    prompt = torch.randint(0, 64, (2, 20), device="cuda")
    out, logits = model.generate(prompt, 12, temperature=0, return_logits=True)  # past train_length 16
    full, _ = model(out[:, :-1], context_length=32)
    torch.testing.assert_close(logits, full[:, 19:, :64], atol=2e-3, rtol=2e-3)


def test_a_cuda_checkpoint_loads_on_cpu(tmp_path):
    cfg = resolve_config("cpu-tiny", n_layer=1)
    model = GPT(cfg.model).cuda()
    save_checkpoint(tmp_path / "c", model=model, config=cfg.model, optimizer=build_optimizer(model, cfg))
    loaded, _, _ = load_checkpoint(tmp_path / "c", "cpu")
    for a, b in zip(model.parameters(), loaded.parameters()):
        assert torch.equal(a.cpu(), b)
