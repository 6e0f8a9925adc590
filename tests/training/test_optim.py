"""Optimisers and schedules: Muon orthogonalises, the groups follow the paper, the lr schedule has its shape."""

from __future__ import annotations

import pytest
import torch

from siattn.model import GPT
from siattn.training import build_optimizer, lr_multiplier, resolve_config
from siattn.training.optim import muon_lr_ratio, parameter_groups


@pytest.mark.parametrize("shape", [(64, 256), (256, 64), (96, 160)])
def test_muon_update_has_singular_values_near_one(shape):
    torch.manual_seed(0)
    w = torch.randn(shape)
    p = torch.nn.Parameter(w.clone())
    opt = torch.optim.Muon([p], lr=0.02, momentum=0.95, weight_decay=0.0, adjust_lr_fn="original")
    p.grad = torch.randn(shape) * 1e-3  # the scale of the gradient does not matter
    opt.step()
    update = (w - p.detach()) / (0.02 * muon_lr_ratio(shape))  # undo torch.optim.Muon's lr adjustment
    s = torch.linalg.svdvals(update)
    assert s.min() > 0.5 and s.max() < 1.5  # NS5 lands in roughly [0.7, 1.2], not exactly 1
    assert abs(s.mean().item() - 1) < 0.25
    g = torch.linalg.svdvals(p.grad)
    assert g.max() / g.min() > 1.5  # the gradient itself was far from orthogonal


def test_muon_lr_adjustment_follows_the_shape():
    assert muon_lr_ratio((3072, 768)) == 2.0 and muon_lr_ratio((768, 3072)) == 1.0
    assert muon_lr_ratio((768, 768), "match_rms_adamw") == pytest.approx(0.2 * 768**0.5)


def test_parameter_groups_follow_the_paper():
    cfg = resolve_config("paper-162m", method="logn-p-rope", n_layer=2, n_embd=64, n_head=2, head_dim=32,
                         vocab_size=100)
    model = GPT(cfg.model)
    groups = parameter_groups(model)
    assert [n for n, _ in groups["embed"]] == ["transformer.wte.weight"]
    assert [n for n, _ in groups["head"]] == ["lm_head.weight"]
    assert len(groups["scalar"]) == 2 and all("logn_scale" in n for n, _ in groups["scalar"])
    assert len(groups["matrix"]) == 2 * 6 and all(p.dim() == 2 for _, p in groups["matrix"])
    opt = build_optimizer(model, cfg)
    adam, muon = opt.optimizers["adam"], opt.optimizers["muon"]
    lrs = {g["name"]: g["lr"] for g in adam.param_groups}
    assert lrs == {"embed": 0.3, "head": 0.002, "scalar": 0.002}
    assert adam.defaults["betas"] == (0.9, 0.95) and adam.defaults["weight_decay"] == 0
    assert muon.defaults["lr"] == 0.02 and muon.defaults["momentum"] == 0.95
    assert muon.defaults["weight_decay"] == 0 and muon.defaults["nesterov"]
    total = sum(len(g["params"]) for g in opt.param_groups)
    assert total == len(list(model.parameters()))


def test_lr_multiplier_sets_every_group_from_its_base_lr():
    cfg = resolve_config("cpu-tiny", n_layer=1)
    opt = build_optimizer(GPT(cfg.model), cfg)
    opt.set_lr_multiplier(0.5)
    assert all(g["lr"] == 0.5 * g["base_lr"] for g in opt.param_groups)


def test_constant_then_linear_cooldown_schedule():
    # the paper: 4578 steps, constant for 3270, linear to 0 over 1308
    f = lambda s: lr_multiplier(s, 4578, schedule="constant-cooldown", cooldown_frac=1308 / 4578)  # noqa: E731
    assert f(0) == f(3270) == 1.0
    assert f(3271) == pytest.approx(1307 / 1308)
    assert f(3270 + 654) == pytest.approx(0.5)
    assert f(4577) == pytest.approx(1 / 1308) and f(4578) == 0.0


def test_cosine_constant_and_warmup_schedules():
    assert lr_multiplier(0, 100, schedule="cosine") == 1.0
    assert lr_multiplier(50, 100, schedule="cosine") == pytest.approx(0.5)
    assert lr_multiplier(100, 100, schedule="cosine") == pytest.approx(0.0)
    assert lr_multiplier(77, 100, schedule="constant") == 1.0
    assert lr_multiplier(0, 100, schedule="constant", warmup_steps=10) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="schedule"):
        lr_multiplier(0, 10, schedule="linear")
