"""`siattn.analysis.model_stats`: logits captured from a GPT are the ones its attention uses; the statistics and
`siattn analyze model` run on tiny models."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from siattn.analysis import metrics
from siattn.analysis.model_stats import (
    ModelStatsConfig,
    analyze_model,
    attention_scores,
    resolve_layers,
    rows_by_distance,
    run_attention_hooks,
    scores_without_sink,
)
from siattn.cli import main

METHODS = ("si-p-rope", "logn-p-rope", "alibi", "rope")


def tiny_gpt(method: str, *, backend: str = "auto", seed: int = 0):
    """A random GPT (2 layers, 4 heads on 2 key/value heads) with its zero-initialised projections perturbed and
    LogN scales varied per head, so every layer's input and every head differ."""
    from siattn.model import GPT, GPTConfig

    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, head_dim=16,
                          train_length=16, method=method, attn_backend=backend))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "c_proj" in name or "lm_head" in name:
                p.normal_(0.0, 0.05)
            if "logn_scale" in name:
                p.uniform_(0.2, 0.8)
    return model.eval()


@pytest.mark.parametrize("backend", ["reference", "chunked"])
@pytest.mark.parametrize("method", METHODS)
def test_captured_logits_reproduce_the_attention_output(method, backend):
    model = tiny_gpt(method, backend=backend)
    T = 40  # past the training length (16): LogN factors and the transform at large distances
    idx = torch.randint(0, 64, (1, T))
    used: dict[int, torch.Tensor] = {}  # what each layer's attention produced (input of its c_proj)
    handles = [blk.attn.c_proj.register_forward_pre_hook(lambda m, a, i=i: used.__setitem__(i, a[0]))
               for i, blk in enumerate(model.transformer.h)]
    recomputed: dict[int, torch.Tensor] = {}

    def fn(i, attn, x, rotary):
        _, L = attention_scores(attn, x, rotary, torch.arange(T))  # (1, H, T, T)
        v = attn.c_v(x).view(1, T, attn.n_kv_head, attn.head_dim).transpose(1, 2)
        v = v.repeat_interleave(attn.n_head // attn.n_kv_head, dim=1)  # head h reads key/value head h // G
        recomputed[i] = (torch.softmax(L, dim=-1) @ v).transpose(1, 2).reshape(1, T, -1)

    run_attention_hooks(model, idx, [0, 1], fn, stop=False)
    for h in handles:
        h.remove()
    for i in (0, 1):
        torch.testing.assert_close(recomputed[i], used[i], atol=2e-5, rtol=1e-4)


def test_rows_for_some_queries_equal_those_of_the_full_matrix():
    model = tiny_gpt("si-p-rope")
    T, pos = 30, [0, 7, 19, 29]
    got = {}

    def fn(i, attn, x, rotary):
        got["full"] = attention_scores(attn, x, rotary, torch.arange(T))
        got["rows"] = attention_scores(attn, x, rotary, pos)

    run_attention_hooks(model, torch.randint(0, 64, (1, T)), [0], fn)
    for full, rows in zip(got["full"], got["rows"]):
        torch.testing.assert_close(rows, full[:, :, pos], atol=1e-6, rtol=1e-5)


def test_raw_scores_of_plain_rope_are_the_logits_and_keys_after_the_query_are_masked():
    model = tiny_gpt("rope")
    got = {}
    run_attention_hooks(model, torch.randint(0, 64, (1, 12)), [1],
                        lambda i, attn, x, rotary: got.update(sl=attention_scores(attn, x, rotary, [5])))
    S, L = got["sl"]
    assert torch.isneginf(L[..., 6:]).all()
    torch.testing.assert_close(L[..., :6], S[..., :6])


def test_rows_by_distance_equals_metrics_logits_by_distance():
    scores = torch.randn(2, 3, 17, 17)
    pos = [0, 4, 16]
    torch.testing.assert_close(rows_by_distance(scores[..., pos, :], pos),
                               metrics.logits_by_distance(scores)[..., pos, :])


def test_scores_without_sink_drop_the_first_key_and_the_future():
    T, pos = 10, [3, 9]
    scores = torch.arange(T, dtype=torch.float32).expand(2, len(pos), T)  # score = key index
    out = scores_without_sink(scores, pos)
    assert out.shape == (2, 3 + 9)
    assert out[0].tolist() == [1, 2, 3, *range(1, 10)]  # no key 0 (the sink), nothing after the query


def test_layers_resolve_from_either_end_and_bad_ones_are_named():
    assert resolve_layers(None, 3) == [0, 1, 2]
    assert resolve_layers([-1, 0, 2], 3) == [0, 2]
    with pytest.raises(ValueError, match=r"layers 0\.\.2"):
        resolve_layers([3], 3)


def _numbers(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v)
    elif isinstance(obj, float):
        yield obj


@pytest.mark.parametrize("method", ["si-p-rope", "logn-p-rope"])
def test_statistics_are_finite_and_the_score_samples_leave_out_the_sink(method):
    model = tiny_gpt(method)
    cfg = ModelStatsConfig(length=120, queries=6, windows=2, layers=(-1,), qq_samples=500)
    windows = [torch.randint(0, 64, (1, 120)) for _ in range(2)]
    r = analyze_model(model, windows, cfg)
    assert [e["layer"] for e in r["layers"]] == [1]
    layer = r["layers"][0]
    assert all(math.isfinite(x) for x in _numbers({k: v for k, v in layer.items() if k != "fits"}))
    for m, v in layer["sampled"].items():
        assert math.isfinite(v), m
    for d in cfg.deltas:
        assert np.isfinite(layer["range"][str(d)]["entropy"]).all()
        assert max(t * d for t in layer["range"][str(d)]["t"]) < r["sampled_n"]["min"]  # ranges end before sink
    for key in ("entropy", "entropy_no_sink", "last_k_mass", "last_k_mass_no_sink"):
        assert len(layer["global"][key]) == len(r["n"]) and np.isfinite(layer["global"][key]).all()
    assert 0 < layer["sampled"]["sink_mass"] < 1
    assert r["n"][-1] == 120 and r["sampled_n"]["min"] >= 120 - 12 + 1
    # every query row contributes the N − 1 keys it sees besides the sink, per head
    count = cfg.windows * cfg.queries * (r["sampled_n"]["mean"] - 1)
    assert layer["scores"]["per_head"]["count"] == pytest.approx([count] * 4)
    assert len(layer["qq"]["quantiles_per_head"]) == 4
    assert len(layer["qq"]["quantiles"]) == len(layer["qq"]["normal_quantiles"])
    assert abs(layer["scores"]["std"] - 1) < 0.5  # QK-norm: random-init scores are near N(0, 1)
    assert r["mean"]["fits"]["range_entropy"]["2"]["vs_log_t"]["points"] >= 3


@pytest.fixture(scope="module")
def run_folders(tmp_path_factory):
    """Two checkpoints (si-p-rope, rope) of a random byte-level GPT trained at 32 tokens, whose training config
    points at a small prepared dataset."""
    from siattn.data import prepare_dataset
    from siattn.model import GPT
    from siattn.training import resolve_config, save_run_checkpoint

    root = tmp_path_factory.mktemp("analyze-model")
    corpus = root / "corpus"
    corpus.mkdir()
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
    for i in range(10):
        (corpus / f"doc{i}.txt").write_text(" ".join(rng.choice(words, 120)) + "\n")
    prepare_dataset(str(corpus), root / "data", tokenizer="bytes", val_fraction=0.4, progress=False)
    runs = []
    for method in ("si-p-rope", "rope"):
        cfg = resolve_config("cpu-tiny", method=method, seq_len=32, n_layer=2, n_embd=32, head_dim=16,
                             data=str(root / "data"))
        torch.manual_seed(0)
        model = GPT(cfg.model).eval()
        runs.append(save_run_checkpoint(root / f"run-{method}", 1, model=model, config=cfg.model,
                                        train_config=cfg, save_rng=False).parent.parent)
    return runs


def test_cli_writes_json_markdown_and_figures_for_each_checkpoint(run_folders, tmp_path):
    out = tmp_path / "out"
    rc = main(["analyze", "model", "--checkpoint", *map(str, run_folders), "--length", "2x", "--queries", "4",
               "--windows", "2", "--out", str(out), "--seed", "1"])
    assert rc == 0
    summary = json.loads((out / "model.json").read_text())
    assert [c["label"] for c in summary["checkpoints"]] == ["si-p-rope", "rope"]
    assert all(c["length"] == 64 for c in summary["checkpoints"])  # 2 × the training length
    assert summary["commit"] and summary["hardware"].startswith("CPU ") and "analyze model" in summary["command"]
    assert "| si-p-rope |" in (out / "model.md").read_text()
    for name in ("si-p-rope", "rope"):
        details = json.loads((out / name / "model.json").read_text())
        assert details["config"]["queries"] == 4 and details["windows"] == 2
        assert [e["layer"] for e in details["layers"]] == [0, 1]
        assert len(details["figures"]) == 4
        for fig in details["figures"]:
            assert (out / name / fig).read_bytes()[:4] == b"\x89PNG"
        assert "## Raw scores" in (out / name / "model.md").read_text()
    for fig in summary["figures"]:
        assert (out / fig).read_bytes()[:4] == b"\x89PNG"
    assert len(summary["figures"]) == 3


def test_cli_reports_a_missing_layer_instead_of_raising(run_folders, tmp_path, capsys):
    rc = main(["analyze", "model", "--checkpoint", str(run_folders[0]), "--layers", "5", "--queries", "4",
               "--out", str(tmp_path)])
    assert rc == 2
    assert "layer 5 does not exist" in capsys.readouterr().out
