"""DistributedDataParallel on 2 CPU processes (gloo, launched by torchrun) gives the gradients of one process on
the whole batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from siattn.model import GPT, GPTConfig

CONFIG = GPTConfig(vocab_size=64, n_layer=2, n_head=2, n_embd=32, head_dim=16, method="logn-p-rope",
                   train_length=16)


def model_for_test() -> GPT:
    torch.manual_seed(0)
    model = GPT(CONFIG)
    with torch.no_grad():  # non-zero output projections and head, so every parameter gets a gradient
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    return model


def batch() -> torch.Tensor:
    return torch.randint(0, 64, (4, 17), generator=torch.Generator().manual_seed(1))


def test_ddp_gradients_match_a_single_process_on_the_global_batch(tmp_path):
    out = tmp_path / "grads.pt"
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # a fresh torchrun, so nothing this pytest process started (compile workers, threads) is inherited
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(worker), str(out)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ddp = torch.load(out)
    model = model_for_test()
    x = batch()
    model(x[:, :-1], x[:, 1:])[1].backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n
        torch.testing.assert_close(ddp[n], p.grad, atol=1e-6, rtol=1e-5, msg=n)
