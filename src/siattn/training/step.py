"""One optimiser step over micro-batches: the piece every training loop shares (the trainer's and the retrieval
fine-tuning's of :func:`siattn.evaluation.finetune`).

    losses = optimizer_step(optimizer, model.parameters(), micro_losses(), lr_multiplier=0.5,
                            grad_clip=None, accumulation=4)

``micro_losses`` is an iterable (usually a generator) that runs the forward of one micro-batch each time it is
advanced and yields that micro-batch's loss, so only one graph is alive at a time. Each loss is divided by
``accumulation`` and backpropagated; the gradients of all micro-batches add up before the optimiser steps.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from siattn.training.optim import OptimizerSet


def optimizer_step(optimizer: OptimizerSet, parameters: Iterable[torch.nn.Parameter],
                   micro_losses: Iterable[torch.Tensor], *, lr_multiplier: float, grad_clip: float | None = None,
                   accumulation: int = 1) -> list[torch.Tensor]:
    """Set every group's lr to base lr × ``lr_multiplier``, backpropagate loss / ``accumulation`` for each loss of
    ``micro_losses``, clip the gradient norm of ``parameters`` to ``grad_clip`` (None or 0: no clipping), step
    the optimisers and clear the gradients. Returns the detached micro-batch losses, undivided, in order."""
    optimizer.set_lr_multiplier(lr_multiplier)
    optimizer.zero_grad(set_to_none=True)
    losses = []
    for loss in micro_losses:
        (loss / accumulation).backward()
        losses.append(loss.detach())
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return losses
