"""Attention statistics of a trained model: the theory figures' metrics on its real attention logits.

Validation windows of ``length`` tokens go through the model. A forward pre-hook on each chosen layer's
attention receives the block input x and the rotary (cos, sin) and computes q and k with the layer's own
:meth:`siattn.model.gpt.CausalSelfAttention.queries_keys` (projections, QK-norm, rotary) for a few query rows only
(memory R × T per head, never T × T), then scores and logits with the reference backend's
:func:`~siattn.backends.reference.grouped_scores` and :func:`~siattn.backends.reference.attention_logits`. From them:

- raw scores S = q·k/√d: the quantity the transform assumes is N(0, 1) (QQ plots and moments, without the first
  token of the window, which trained models use as an attention sink);
- logits L, exactly what the model's softmax sees (tested): for LogN methods S·s_h·log n (n = keys the query
  sees), then the method's transform (:func:`siattn.backends.transforms.transform_logits`: a_t·S + m_t,
  S − slope_h·t, or S), and −inf for keys after the query.

Query rows:
- grid rows: the query that sees N keys, N on a log grid up to ``length`` → global entropy and attention on the
  last 100 keys vs N;
- ``queries`` rows drawn at random from the last tenth of the window (N large) → the same two numbers at the
  sampled N, the attention on the sink, the entropy within [t, tΔ) vs t (Δ = 2, 5, 10, ranges that end before
  the sink) with fits against log t and sqrt(log t) as in :mod:`siattn.analysis.theory`, and the score samples.

Metrics are computed per head and row, averaged over rows, windows and heads for a layer, and over layers for
the mean. Global entropy and last-100 mass are given over all keys (the real attention) and with the sink
excluded and the rest renormalised (comparable with the IID theory, which has no sink). Tables and figures of the
results: :mod:`siattn.analysis.model_report`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from siattn.analysis import metrics
from siattn.analysis.theory import fit_line, log_grid
from siattn.backends.reference import attention_logits, grouped_scores

GRID_METRICS = ("entropy", "entropy_no_sink", "last_k_mass", "last_k_mass_no_sink")
SAMPLED_METRICS = (*GRID_METRICS, "sink_mass")


@dataclass(frozen=True)
class ModelStatsConfig:
    """Everything an analysis of one checkpoint depends on (written to the JSON as is)."""

    length: int                          # tokens per window (the largest N)
    queries: int = 64                    # random query rows per window, from the last tenth of it
    windows: int = 4                     # validation windows (one forward each)
    layers: tuple[int, ...] | None = None  # None: every layer
    seed: int = 0
    deltas: tuple[int, ...] = (2, 5, 10)
    last_k: int = 100
    min_n: int = 10
    points_per_decade: int = 5
    fit_t_min: int = 10                  # range-entropy fits use t >= fit_t_min
    qq_samples: int = 20_000             # raw scores kept per (layer, head, window) for the QQ quantiles

    def __post_init__(self) -> None:
        if self.length < 2 * self.min_n:
            raise ValueError(f"length must be >= {2 * self.min_n}; got {self.length}")
        if not 1 <= self.queries <= self.length // 2:
            raise ValueError(f"queries must be in [1, length/2 = {self.length // 2}]; got {self.queries}")
        if self.min_sampled_n - 1 < max(self.deltas):
            raise ValueError(f"length {self.length} leaves no room for a range [1, {max(self.deltas)}) before the "
                             f"sink of the sampled queries; use a longer length or fewer queries")
        if self.windows < 1:
            raise ValueError(f"windows must be >= 1; got {self.windows}")

    @property
    def sample_span(self) -> int:
        """Query rows are drawn from the last ``sample_span`` positions of a window."""
        return max(self.queries, math.ceil(self.length / 10))

    @property
    def min_sampled_n(self) -> int:
        return self.length - self.sample_span + 1


def resolve_layers(layers: Sequence[int] | None, n_layer: int) -> list[int]:
    """Sorted distinct layer indices (negative ones count from the end); None: all layers."""
    if layers is None:
        return list(range(n_layer))
    out = set()
    for i in layers:
        if not -n_layer <= i < n_layer:
            raise ValueError(f"layer {i} does not exist: the model has layers 0..{n_layer - 1}")
        out.add(i % n_layer)
    if not out:
        raise ValueError("no layers to analyse")
    return sorted(out)


def grid_positions(cfg: ModelStatsConfig) -> list[int]:
    """Positions of the grid rows: the query at position N − 1 sees N keys, N on a log grid min_n..length."""
    return [n - 1 for n in log_grid(cfg.min_n, cfg.length, cfg.points_per_decade)]


def sample_positions(cfg: ModelStatsConfig, generator: torch.Generator) -> list[int]:
    """``queries`` distinct random positions among the last ``sample_span`` of the window, sorted."""
    lo = cfg.length - cfg.sample_span
    return sorted((lo + torch.randperm(cfg.sample_span, generator=generator)[: cfg.queries]).tolist())


def range_grid(cfg: ModelStatsConfig) -> dict[int, list[int]]:
    """Range starts t per Δ: every [t, tΔ) ends before the sink of the nearest sampled query."""
    return {d: log_grid(1, (cfg.min_sampled_n - 1) // d, cfg.points_per_decade) for d in cfg.deltas}


# ---- capture ----

class _StopForward(Exception):
    pass


def run_attention_hooks(model: torch.nn.Module, idx: torch.Tensor, layers: Sequence[int],
                        fn: Callable[[int, torch.nn.Module, torch.Tensor, tuple | None], None], *,
                        stop: bool = True) -> None:
    """Run ``model(idx)`` without gradients, calling ``fn(layer, attn, x, rotary)`` with the input of each chosen
    layer's attention module (``model.transformer.h[layer].attn``) before it runs. With ``stop`` the forward is
    abandoned once the last chosen layer has been seen (the rest of the model is not needed)."""
    last = max(layers)

    def make(i: int):
        def hook(module, args, kwargs):
            names = ("x", "rotary", "cache")
            got = dict(zip(names, args)) | {k: v for k, v in kwargs.items() if k in names}
            if got.get("cache") is not None:
                raise ValueError("attention statistics are computed without a KV cache")
            fn(i, module, got["x"], got.get("rotary"))
            if stop and i == last:
                raise _StopForward
        return hook

    handles = [model.transformer.h[i].attn.register_forward_pre_hook(make(i), with_kwargs=True) for i in layers]
    try:
        with torch.no_grad():
            model(idx)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()


def attention_scores(attn: torch.nn.Module, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor] | None,
                     positions: Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw scores S and logits L of the query rows at ``positions`` over every key of the window.

    attn: a CausalSelfAttention; x: its input (B, T, C); rotary: the (cos, sin) it got. Returns two float32
    tensors (B, H, R, T) in key order: S = q·k/√d, and L = the logits its softmax uses (LogN factor, the
    method's transform, −inf for keys after the query).
    """
    B, T, _ = x.shape
    H, Hkv, D = attn.n_head, attn.n_kv_head, attn.head_dim
    pos = torch.as_tensor(positions, device=x.device, dtype=torch.long)
    R = pos.numel()
    q, k = attn.queries_keys(x, rotary, pos)  # (B, H, R, D), (B, Hkv, T, D): the model's own projections
    S = grouped_scores(q.float(), k.float(), 1.0 / math.sqrt(D))  # (B, Hkv, G, R, T)
    L = S
    if attn.method.uses_logn:  # s_h·log n on the whole row, n = pos + 1 keys seen (applied before the transform)
        s = attn.logn_scale.detach().float().view(Hkv, H // Hkv, 1, 1)
        L = L * (s * torch.log(pos.float() + 1).view(R, 1))
    signed = pos[:, None] - torch.arange(T, device=x.device)[None, :]
    L = attention_logits(L, signed, attn.method.logit_transform(attn.tau), H, causal=True)
    return S.reshape(B, H, R, T), L.reshape(B, H, R, T)


def rows_by_distance(x: torch.Tensor, positions: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """Rows of a causal matrix reordered by distance: x (..., R, T) for the queries at ``positions`` →
    out[..., r, t] = x[..., r, pos_r − t] for t <= pos_r, −inf beyond (the rows of
    :func:`siattn.analysis.metrics.logits_by_distance` for those queries)."""
    pos = torch.as_tensor(positions, device=x.device, dtype=torch.long).view(-1, 1)
    t = torch.arange(x.shape[-1], device=x.device).view(1, -1)
    j = (pos - t).clamp(min=0).expand(*x.shape[:-2], -1, -1)
    return torch.gather(x, -1, j).masked_fill(t > pos, float("-inf"))


def scores_without_sink(scores: torch.Tensor, positions: Sequence[int] | torch.Tensor) -> torch.Tensor:
    """The scores each query sees except the first key (the sink): scores (H, R, T) in key order → (H, M),
    keys 1..pos_r of every row r, M = Σ pos_r."""
    pos = torch.as_tensor(positions, device=scores.device, dtype=torch.long).view(-1, 1)
    j = torch.arange(scores.shape[-1], device=scores.device).view(1, -1)
    keep = (j >= 1) & (j <= pos)
    return scores[:, keep]


# ---- accumulation over windows ----

class _Layer:
    """Per-window statistics of one layer, each (H, ...)."""

    def __init__(self, heads: int):
        self.grid: dict[str, list[torch.Tensor]] = {m: [] for m in GRID_METRICS}
        self.sampled: dict[str, list[torch.Tensor]] = {m: [] for m in SAMPLED_METRICS}
        self.range: list[torch.Tensor] = []
        self.moments = torch.zeros(5, heads, dtype=torch.float64)  # count, Σx, Σx², Σx³, Σx⁴
        self.qq: list[torch.Tensor] = []

    def add(self, S: torch.Tensor, L: torch.Tensor, pos: list[int], n_grid: int,
            ranges: list[tuple[int, int]], cfg: ModelStatsConfig, gen: torch.Generator) -> None:
        Ld = rows_by_distance(L, pos)  # (H, R, T)
        for rows, out in ((Ld[:, :n_grid], self.grid), (Ld[:, n_grid:], self.sampled)):
            out["entropy"].append(metrics.global_entropy(rows))
            out["entropy_no_sink"].append(metrics.global_entropy(rows, exclude_sink=True))
            out["last_k_mass"].append(metrics.last_k_mass(rows, cfg.last_k))
            out["last_k_mass_no_sink"].append(metrics.last_k_mass(rows, cfg.last_k, exclude_sink=True))
        Ls, ps = Ld[:, n_grid:].double(), torch.tensor(pos[n_grid:], device=L.device)
        sink = Ls.gather(-1, ps.view(1, -1, 1).expand(Ls.shape[0], -1, 1)).squeeze(-1)
        self.sampled["sink_mass"].append(torch.exp(sink - torch.logsumexp(Ls, dim=-1)))
        self.range.append(metrics.range_statistics(Ls, ranges)["entropy"])  # (H, Rs, n_ranges)
        values = scores_without_sink(S[:, n_grid:], pos[n_grid:]).double()  # (H, M)
        self.moments += torch.stack([torch.full_like(values[:, 0], values.shape[1]), values.sum(1),
                                     values.pow(2).sum(1), values.pow(3).sum(1), values.pow(4).sum(1)]).cpu()
        pick = torch.randint(values.shape[1], (min(cfg.qq_samples, values.shape[1]),), generator=gen)
        self.qq.append(values[:, pick.to(values.device)].float().cpu())


def _mean(chunks: list[torch.Tensor], over_rows: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean over windows, heads and, with ``over_rows``, rows; the same per head) of per-window (H, R, ...)
    tensors."""
    x = torch.stack([c.double().cpu() for c in chunks])  # (W, H, R, ...)
    per_head = x.mean(dim=(0, 2) if over_rows else 0)
    return per_head.mean(0), per_head


def _moments(m: torch.Tensor) -> dict[str, list[float]]:
    n, s1, s2, s3, s4 = m
    mu = s1 / n
    var = s2 / n - mu ** 2
    c3 = s3 / n - 3 * mu * s2 / n + 2 * mu ** 3
    c4 = s4 / n - 4 * mu * s3 / n + 6 * mu ** 2 * s2 / n - 3 * mu ** 4
    return {"mean": mu.tolist(), "std": var.sqrt().tolist(), "skew": (c3 / var ** 1.5).tolist(),
            "excess_kurtosis": (c4 / var ** 2 - 3).tolist(), "count": n.tolist()}


def _qq(samples: list[torch.Tensor]) -> dict:
    """Sample quantiles per head (and of all heads pooled) at the normal quantiles z = −4 .. 4 that the
    number of samples resolves."""
    x = torch.cat(samples, dim=1).double()  # (H, M)
    z = torch.linspace(-4, 4, 81, dtype=torch.float64)
    p = torch.special.ndtr(z)
    keep = (p * x.shape[1] >= 1) & ((1 - p) * x.shape[1] >= 1)
    z, p = z[keep], p[keep]
    per_head = np.quantile(x.numpy(), p.numpy(), axis=1).T  # (H, P)
    pooled = np.quantile(x.flatten().numpy(), p.numpy())
    return {"normal_quantiles": z.tolist(), "quantiles": pooled.tolist(), "quantiles_per_head": per_head.tolist()}


# ---- the analysis ----

def analyze_model(model: torch.nn.Module, windows: Sequence[torch.Tensor], cfg: ModelStatsConfig,
                  progress: Callable[[int], None] | None = None) -> dict:
    """The statistics of ``model`` (a :class:`siattn.model.GPT`) over ``windows`` ((1, length) token ids each);
    returns a JSON-ready dict (see :func:`to_markdown` for what it holds)."""
    mcfg = model.config
    layers = resolve_layers(cfg.layers, mcfg.n_layer)
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(cfg.seed)
    grid = grid_positions(cfg)
    ts = range_grid(cfg)
    ranges = [(t, d) for d in cfg.deltas for t in ts[d]]
    acc = {i: _Layer(mcfg.n_head) for i in layers}
    sampled_n: list[int] = []
    for w in windows:
        if w.shape != (1, cfg.length):
            raise ValueError(f"windows must be (1, {cfg.length}) token ids; got {tuple(w.shape)}")
        pos = grid + sample_positions(cfg, gen)
        sampled_n += [p + 1 for p in pos[len(grid):]]

        def fn(i, attn, x, rotary, pos=pos):
            S, L = attention_scores(attn, x, rotary, pos)
            acc[i].add(S[0], L[0], pos, len(grid), ranges, cfg, gen)

        run_attention_hooks(model, w.to(device), layers, fn)
        if progress is not None:
            progress(1)

    results: dict = {
        "config": asdict(cfg) | {"layers": layers},
        "model": {"method": mcfg.method, "transform": model.transformer.h[0].attn.method.transform,
                  "n_layer": mcfg.n_layer, "n_head": mcfg.n_head, "n_kv_head": mcfg.n_kv_head,
                  "head_dim": mcfg.head_dim, "tau": mcfg.tau, "train_length": mcfg.train_length},
        "n": [p + 1 for p in grid],
        "sampled_n": {"min": min(sampled_n), "max": max(sampled_n), "mean": float(np.mean(sampled_n))},
        "windows": len(windows),
        "layers": [],
    }
    for i in layers:
        a = acc[i]
        entry: dict = {"layer": i, "global": {}, "sampled": {}, "sampled_per_head": {}, "range": {}}
        for m in GRID_METRICS:
            entry["global"][m] = _mean(a.grid[m], over_rows=False)[0].tolist()  # vs N
        for m in SAMPLED_METRICS:
            mean, per_head = _mean(a.sampled[m])
            entry["sampled"][m], entry["sampled_per_head"][m] = float(mean), per_head.tolist()
        r_mean, r_head = _mean(a.range)
        for d in cfg.deltas:
            cols = [c for c, (_, dd) in enumerate(ranges) if dd == d]
            entry["range"][str(d)] = {"t": ts[d], "entropy": r_mean[cols].tolist(),
                                      "entropy_per_head": r_head[:, cols].tolist()}
        per_head = _moments(a.moments)
        pooled = _moments(a.moments.sum(dim=1, keepdim=True))
        entry["scores"] = {k: v[0] for k, v in pooled.items()} | {"per_head": per_head}
        entry["qq"] = _qq(a.qq)
        logn_scale = getattr(model.transformer.h[i].attn, "logn_scale", None)
        if logn_scale is not None:  # LogN: logits × s_h·log n
            entry["logn_scale"] = logn_scale.detach().float().cpu().tolist()
        entry["fits"] = fits(entry, results["n"], cfg)
        results["layers"].append(entry)
    results["mean"] = _layer_mean(results, cfg)
    return results


def _layer_mean(results: dict, cfg: ModelStatsConfig) -> dict:
    """The per-layer curves and numbers averaged over layers, with their own fits."""
    ls = results["layers"]
    avg = lambda xs: np.mean(np.array(xs, dtype=float), axis=0).tolist()  # noqa: E731
    mean: dict = {"global": {m: avg([e["global"][m] for e in ls]) for m in GRID_METRICS},
                  "sampled": {m: avg([e["sampled"][m] for e in ls]) for m in SAMPLED_METRICS},
                  "range": {str(d): {"t": ls[0]["range"][str(d)]["t"],
                                     "entropy": avg([e["range"][str(d)]["entropy"] for e in ls])}
                            for d in cfg.deltas},
                  "scores": {k: avg([e["scores"][k] for e in ls]) for k in ("mean", "std", "skew",
                                                                            "excess_kurtosis")}}
    mean["fits"] = fits(mean, results["n"], cfg)
    return mean


def fits(entry: dict, n: list[int], cfg: ModelStatsConfig) -> dict:
    """Range entropy against log t and sqrt(log t) (t >= fit_t_min), global entropy against log N (N >= 100),
    log last-k mass against log N (N >= 10k), as :mod:`siattn.analysis.theory` reports them."""
    out: dict = {"range_entropy": {}}
    for d in cfg.deltas:
        t = np.array(entry["range"][str(d)]["t"], float)
        y = np.array(entry["range"][str(d)]["entropy"], float)
        keep = t >= cfg.fit_t_min
        out["range_entropy"][str(d)] = {
            "vs_log_t": fit_line(np.log(t[keep]), y[keep]),
            "vs_sqrt_log_t": fit_line(np.sqrt(np.log(t[keep])), y[keep]),
            "t_range": [int(t[keep].min()), int(t.max())] if keep.any() else None,
        }
    nn_ = np.array(n, float)
    big, far = nn_ >= 100, nn_ >= 10 * cfg.last_k
    g = entry["global"]
    out["global_entropy"] = {"vs_log_n": fit_line(np.log(nn_[big]), np.array(g["entropy"])[big]),
                             "vs_log_n_no_sink": fit_line(np.log(nn_[big]), np.array(g["entropy_no_sink"])[big])}
    mass = np.maximum(np.array(g["last_k_mass"])[far], 1e-300)
    out["last_k_mass"] = {"loglog_slope": fit_line(np.log(nn_[far]), np.log(mass))}
    return out
