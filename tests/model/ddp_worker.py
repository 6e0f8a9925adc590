"""Run by test_ddp.py as one of two gloo ranks (RANK, WORLD_SIZE, MASTER_ADDR/PORT in the environment): DDP over
the GPT, each rank on its half of the global batch; rank 0 saves the gradients to argv[1].

A hang dumps every thread's stack to stderr and exits after ``HANG_SECONDS``, and the process group's own timeout
is shorter still, so a failure in CI says where it stopped instead of timing out silently.
"""

import faulthandler
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from siattn.training.distributed import cleanup_distributed, init_distributed

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from test_ddp import HANG_SECONDS, batch, model_for_test


def main(out: str) -> None:
    faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
    torch.set_num_threads(1)
    info = init_distributed("cpu", timeout=timedelta(seconds=HANG_SECONDS // 2))
    assert info.world_size == 2, info
    try:
        model = DistributedDataParallel(model_for_test())
        x = batch()[info.rank * 2:(info.rank + 1) * 2]  # each rank its own half of the global batch
        model(x[:, :-1], x[:, 1:])[1].backward()
        if info.is_main:
            torch.save({n: p.grad for n, p in model.module.named_parameters()}, out)
        dist.barrier()
    finally:
        cleanup_distributed()
    faulthandler.cancel_dump_traceback_later()


if __name__ == "__main__":
    main(sys.argv[1])
