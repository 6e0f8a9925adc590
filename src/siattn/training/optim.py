"""Optimisers as in the paper: Muon for the hidden matrices, Adam for the rest.

| group | parameters | optimiser | paper lr |
| --- | --- | --- | --- |
| matrix | q, k, v, output and MLP weights of every block | Muon, momentum 0.95 (Nesterov) | 0.02 |
| embed | token embedding | Adam, betas (0.9, 0.95) | 0.3 |
| head | untied output head | Adam | 0.002 |
| scalar | LogN scales (one per head and layer) | Adam | 0.002 |

No weight decay anywhere (torch.optim.Muon's default of 0.1 is overridden). Muon scales each matrix's step by
sqrt(max(1, rows/cols)) (``adjust_lr_fn="original"``, Keller Jordan's rule), so a (3072, 768) MLP matrix steps
2× the base lr and the square attention matrices 1×. Muon is torch.optim.Muon (every supported torch has
it). Every rank runs the Newton–Schulz iteration on the all-reduced gradients (no work split across ranks:
simple, and cheap next to the model at these sizes).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from siattn.training.config import TrainConfig


def muon_lr_ratio(shape: torch.Size | tuple[int, ...], adjust_lr_fn: str | None = "original") -> float:
    """How much Muon multiplies the lr for a matrix of ``shape`` (as torch.optim.Muon does)."""
    rows, cols = shape[:2]
    if adjust_lr_fn in (None, "original"):
        return math.sqrt(max(1.0, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return 1.0


def parameter_groups(model: nn.Module) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """Split a GPT's parameters into the groups of the table above (names as in ``named_parameters``)."""
    groups: dict[str, list[tuple[str, nn.Parameter]]] = {"matrix": [], "embed": [], "head": [], "scalar": []}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name.endswith("wte.weight"):
            groups["embed"].append((name, p))
        elif name.endswith("lm_head.weight"):
            groups["head"].append((name, p))
        elif p.dim() == 2:
            groups["matrix"].append((name, p))
        else:
            groups["scalar"].append((name, p))
    return groups


class OptimizerSet:
    """Several optimisers stepped as one: ``step``, ``zero_grad``, ``state_dict``, ``load_state_dict``, and
    ``set_lr_multiplier(m)`` which sets every group's lr to its ``base_lr`` × m."""

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer]):
        self.optimizers = optimizers
        for opt in optimizers.values():
            for g in opt.param_groups:
                g.setdefault("base_lr", g["lr"])

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers.values() for g in opt.param_groups]

    def set_lr_multiplier(self, multiplier: float) -> None:
        for g in self.param_groups:
            g["lr"] = g["base_lr"] * multiplier

    def step(self) -> None:
        for opt in self.optimizers.values():
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, dict]:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict[str, dict]) -> None:
        if set(state) != set(self.optimizers):
            raise ValueError(f"optimizer state holds {sorted(state)}, this run has {sorted(self.optimizers)}")
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])


def build_optimizer(model: nn.Module, config: TrainConfig) -> OptimizerSet:
    """Muon for the matrices, Adam for embeddings, head and LogN scales, with ``config``'s learning rates."""
    groups = parameter_groups(model)
    fused = {"fused": True} if all(p.is_cuda for _, p in groups["embed"]) else {}
    adam_groups = [{"params": [p for _, p in groups[k]], "lr": lr, "name": k}
                   for k, lr in (("embed", config.lr_embed), ("head", config.lr_head),
                                 ("scalar", config.lr_scalar)) if groups[k]]
    optimizers: dict[str, torch.optim.Optimizer] = {
        "adam": torch.optim.Adam(adam_groups, betas=config.adam_betas, eps=config.adam_eps,
                                 weight_decay=config.weight_decay, **fused),
    }
    if groups["matrix"]:
        optimizers["muon"] = torch.optim.Muon(
            [{"params": [p for _, p in groups["matrix"]], "name": "matrix"}], lr=config.lr_muon,
            momentum=config.muon_momentum, nesterov=True, weight_decay=config.weight_decay,
            adjust_lr_fn=config.muon_adjust_lr)
    return OptimizerSet(optimizers)
