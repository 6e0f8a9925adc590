"""DistributedDataParallel on 2 CPU processes (gloo) gives the gradients of one process on the whole batch."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from siattn.model import GPT, GPTConfig

CONFIG = GPTConfig(vocab_size=64, n_layer=2, n_head=2, n_embd=32, head_dim=16, method="logn-p-rope",
                   train_length=16)


def _model() -> GPT:
    torch.manual_seed(0)
    model = GPT(CONFIG)
    with torch.no_grad():  # non-zero output projections and head, so every parameter gets a gradient
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2)
    return model


def _batch() -> torch.Tensor:
    return torch.randint(0, 64, (4, 17), generator=torch.Generator().manual_seed(1))


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = DistributedDataParallel(_model())
        x = _batch()[rank * 2:(rank + 1) * 2]  # each rank its own half of the global batch
        model(x[:, :-1], x[:, 1:])[1].backward()
        if rank == 0:
            torch.save({n: p.grad for n, p in model.module.named_parameters()}, out)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_gradients_match_a_single_process_on_the_global_batch(tmp_path):
    out = str(tmp_path / "grads.pt")
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    ddp = torch.load(out)
    model = _model()
    x = _batch()
    model(x[:, :-1], x[:, 1:])[1].backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n
        torch.testing.assert_close(ddp[n], p.grad, atol=1e-6, rtol=1e-5, msg=n)
