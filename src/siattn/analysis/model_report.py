"""Reports of :mod:`siattn.analysis.model_stats`: Markdown tables and figures of one checkpoint's attention
statistics, and the comparison of several checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from siattn.plotting import pyplot, save_figure


def _f(x, fmt: str = ".3f") -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x + 0.0, fmt)


def _fit(f: dict) -> str:
    return f"{_f(f['slope'])} ({_f(f['r2'])})"


def to_markdown(results: dict, title: str) -> str:
    """Tables of one checkpoint's analysis: per layer and the mean over layers."""
    cfg, m, sn = results["config"], results["model"], results["sampled_n"]
    k = cfg["last_k"]
    rows = [*[(str(e["layer"]), e) for e in results["layers"]], ("mean", results["mean"])]
    lines = [f"# Attention statistics of {title}", "",
             f"method {m['method']} (transform: {m['transform']}), trained at {m['train_length']}; "
             f"{results['windows']} validation windows of {cfg['length']} tokens, {cfg['queries']} random query "
             f"rows per window with N in [{sn['min']}, {sn['max']}] keys; seed {cfg['seed']}. Entropies in nats; "
             "values are averages over heads, rows and windows (per layer) and over layers (mean). "
             "'no sink': first token of the window excluded, the rest renormalised.", "",
             f"## At the sampled N (mean N = {sn['mean']:.0f})", "",
             f"| layer | entropy | entropy, no sink | last-{k} mass | last-{k} mass, no sink | sink mass | "
             "entropy slope vs log N, N ≥ 100 (R²) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, e in rows:
        s = e["sampled"]
        lines.append(f"| {name} | {_f(s['entropy'])} | {_f(s['entropy_no_sink'])} | {_f(s['last_k_mass'], '.4g')} "
                     f"| {_f(s['last_k_mass_no_sink'], '.4g')} | {_f(s['sink_mass'], '.4g')} | "
                     f"{_fit(e['fits']['global_entropy']['vs_log_n'])} |")
    lines += ["", f"## Entropy within [t, tΔ) vs t (fits over t ≥ {cfg['fit_t_min']}; IID theory: standard "
              "attention slope → 1 vs log t, scale-invariant linear in √log t)", "",
              "| layer | Δ | slope vs log t (R²) | slope vs √log t (R²) | H at t_min | H at t_max |",
              "| --- | --- | --- | --- | --- | --- |"]
    for name, e in rows:
        for d in cfg["deltas"]:
            f, r = e["fits"]["range_entropy"][str(d)], e["range"][str(d)]
            i0 = next((i for i, t in enumerate(r["t"]) if t >= cfg["fit_t_min"]), 0)
            lines.append(f"| {name} | {d} | {_fit(f['vs_log_t'])} | {_fit(f['vs_sqrt_log_t'])} | "
                         f"{_f(r['entropy'][i0])} (t={r['t'][i0]}) | {_f(r['entropy'][-1])} (t={r['t'][-1]:,}) |")
    lines += ["", "## Raw scores S = q·k/√d, sink excluded (the transform assumes N(0, 1))", "",
              "| layer | mean | std | skew | excess kurtosis |", "| --- | --- | --- | --- | --- |"]
    for name, e in rows:
        s = e["scores"]
        lines.append(f"| {name} | {_f(s['mean'])} | {_f(s['std'])} | {_f(s['skew'])} | "
                     f"{_f(s['excess_kurtosis'])} |")
    if results.get("figures"):
        lines += ["", "Figures: " + ", ".join(f"`{p}`" for p in results["figures"]) + "."]
    return "\n".join(lines) + "\n"


def summary_markdown(all_results: list[dict]) -> str:
    """One row per checkpoint: the means over layers."""
    deltas = all_results[0]["config"]["deltas"]
    k = all_results[0]["config"]["last_k"]
    lines = ["# Attention statistics of trained models (means over layers and heads)", "",
             "| checkpoint | method | step | length | mean N | entropy | entropy, no sink | "
             f"last-{k} mass | sink mass | " + " | ".join(f"range slope vs log t, Δ={d}" for d in deltas) + " | "
             + " | ".join(f"vs √log t, Δ={d}" for d in deltas) + " | S std | S excess kurtosis |",
             "| --- " * (11 + 2 * len(deltas)) + "|"]
    for r in all_results:
        ck, mean, s = r.get("checkpoint", {}), r["mean"], r["mean"]["sampled"]
        fr = mean["fits"]["range_entropy"]
        lines.append(f"| {ck.get('label', '?')} | {r['model']['method']} | {ck.get('step', '—')} | "
                     f"{r['config']['length']} | {r['sampled_n']['mean']:.0f} | {_f(s['entropy'])} | "
                     f"{_f(s['entropy_no_sink'])} | {_f(s['last_k_mass'], '.4g')} | {_f(s['sink_mass'], '.4g')} | "
                     + " | ".join(_f(fr[str(d)]["vs_log_t"]["slope"]) for d in deltas) + " | "
                     + " | ".join(_f(fr[str(d)]["vs_sqrt_log_t"]["slope"]) for d in deltas) + " | "
                     f"{_f(mean['scores']['std'])} | {_f(mean['scores']['excess_kurtosis'])} |")
    return "\n".join(lines) + "\n"


# ---- figures ----

def _series_of_layers(results: dict) -> list[tuple[str, dict, dict, list[int]]]:
    """(label, entry, line style, N grid) per layer (viridis) and the mean (thick black)."""
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    ls = results["layers"]
    n = results["n"]
    out = [(f"layer {e['layer']}", e, {"color": cmap(j / max(1, len(ls) - 1)), "lw": 1, "alpha": 0.8}, n)
           for j, e in enumerate(ls)]
    return [*out, ("mean", results["mean"], {"color": "black", "lw": 2.2}, n)]


def _metric_figures(series: list[tuple[str, dict, dict, list[int]]], cfg: dict, out: Path, title: str,
                    prefix: str = "", mean_no_sink: bool = True) -> list[Path]:
    """The three metric figures for ``series`` (label, entry, line style, N grid), like
    :func:`siattn.analysis.theory.plot_figures`; dashed: sink excluded (the mean's only, with
    ``mean_no_sink``)."""
    plt = pyplot()

    k, paths = cfg["last_k"], []
    n_arr = np.array(sorted({v for *_, n in series for v in n}))
    dashed = [s for s in series if s[0] == "mean" or not mean_no_sink]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for lab, e, st, n in series:
        ax.plot(n, e["global"]["entropy"], "o-", ms=2.5, label=lab, **st)
    for lab, e, st, n in dashed:
        ax.plot(n, e["global"]["entropy_no_sink"], "--", color=st["color"], lw=1.2,
                label=f"{lab}, sink excluded")
    ax.plot(n_arr, np.log(n_arr), ":", color="gray", lw=1, label="log N (uniform)")
    ax.plot(n_arr, np.log(n_arr) - 0.5, "k:", lw=1, label="log N − 1/2 (IID N(0,1))")
    ax.set(xscale="log", xlabel="number of keys N", ylabel="attention entropy (nats)",
           title=f"Global entropy, {title}")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    paths.append(save_figure(fig, out / f"{prefix}global_entropy.png"))

    deltas = cfg["deltas"]
    fig, axes = plt.subplots(1, len(deltas), figsize=(4.2 * len(deltas), 4), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, d in zip(axes, deltas):
        for lab, e, st, _ in series:
            r = e["range"][str(d)]
            ax.plot(r["t"], r["entropy"], "o-", ms=2.5, label=lab, **st)
        ax.set(xscale="log", xlabel="distance t", title=f"entropy within [t, {d}t)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("entropy (nats)")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Range entropy, {title}", fontsize=10)
    paths.append(save_figure(fig, out / f"{prefix}range_entropy.png"))

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for lab, e, st, n in series:
        ax.plot(n, e["global"]["last_k_mass"], "o-", ms=2.5, label=lab, **st)
    for lab, e, st, n in dashed:
        ax.plot(n, e["global"]["last_k_mass_no_sink"], "--", color=st["color"], lw=1.2,
                label=f"{lab}, sink excluded")
    ax.plot(n_arr, np.minimum(1, k / n_arr), "k:", lw=1, label=f"{k}/N (IID)")
    ax.set(xscale="log", yscale="log", xlabel="number of keys N", ylabel=f"attention on the last {k} keys",
           title=f"Last-{k} attention mass, {title}")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    paths.append(save_figure(fig, out / f"{prefix}last_k_mass.png"))
    return paths


def plot_figures(results: dict, out: Path, title: str = "trained model") -> list[Path]:
    """global_entropy.png, range_entropy.png, last_k_mass.png (one line per layer and the mean) and qq.png (a
    panel per layer: raw-score quantiles of each head against N(0, 1), sink excluded)."""
    plt = pyplot()

    paths = _metric_figures(_series_of_layers(results), results["config"], out, title)
    ls = results["layers"]
    cols = min(4, len(ls))
    rws = math.ceil(len(ls) / cols)
    fig, axes = plt.subplots(rws, cols, figsize=(3.2 * cols, 3.1 * rws), squeeze=False)
    for ax in axes.flat[len(ls):]:
        ax.set_visible(False)
    for ax, e in zip(axes.flat, ls):
        z = np.array(e["qq"]["normal_quantiles"])
        for h, q in enumerate(e["qq"]["quantiles_per_head"]):
            ax.plot(z, q, ".-", ms=2, lw=0.8, label=f"head {h}")
        ax.plot(z, z, "k--", lw=1, label="N(0, 1)")
        ax.set(title=f"layer {e['layer']} (std {e['scores']['std']:.2f})", xlabel="normal quantile",
               ylabel="score quantile")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=6)
    fig.suptitle(f"QQ plots of raw scores q·k/√d vs N(0, 1), sink excluded, {title}", fontsize=10)
    paths.append(save_figure(fig, out / "qq.png"))
    return paths


def plot_comparison(all_results: list[dict], out: Path) -> list[Path]:
    """compare_*.png: the mean over layers of each checkpoint, one line each (dashed: sink excluded)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    series = [(r.get("checkpoint", {}).get("label", str(j)), r["mean"], {"color": cmap(j % 10), "lw": 1.6},
               r["n"]) for j, r in enumerate(all_results)]
    return _metric_figures(series, all_results[0]["config"], out, "mean over layers", prefix="compare_",
                           mean_no_sink=False)
