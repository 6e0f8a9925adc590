"""Run by torchrun from test_ddp.py: two gloo ranks, DDP over the GPT, rank 0 saves the gradients to argv[1]."""

import sys

import torch
from torch.nn.parallel import DistributedDataParallel

from siattn.training.distributed import cleanup_distributed, init_distributed

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from test_ddp import batch, model_for_test


def main(out: str) -> None:
    torch.set_num_threads(1)
    info = init_distributed("cpu")
    assert info.world_size == 2, info
    try:
        model = DistributedDataParallel(model_for_test())
        x = batch()[info.rank * 2:(info.rank + 1) * 2]  # each rank its own half of the global batch
        model(x[:, :-1], x[:, 1:])[1].backward()
        if info.is_main:
            torch.save({n: p.grad for n, p in model.module.named_parameters()}, out)
    finally:
        cleanup_distributed()


if __name__ == "__main__":
    main(sys.argv[1])
