"""The training loop (``siattn train``) and its distributed set-up; see :func:`siattn.training.trainer.train`."""

from siattn.training.distributed import DistInfo, init_distributed
from siattn.training.trainer import RunResult, evaluate, plot_metrics, read_metrics, train

__all__ = ["DistInfo", "RunResult", "evaluate", "init_distributed", "plot_metrics", "read_metrics", "train"]
