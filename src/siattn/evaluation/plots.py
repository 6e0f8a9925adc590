"""Figures of the evaluations (matplotlib, Agg backend, PNG).

- :func:`plot_loss_by_position`: mean loss vs position on a log x axis, one line per checkpoint, a dashed
  vertical line at each training length.
- :func:`plot_loss_by_length`: validation loss vs evaluation length (log x), one line per checkpoint.
- :func:`plot_depth_heatmaps`: Kamradt-style accuracy heat maps, needle depth (rows) × context length
  (columns), one panel per checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from siattn.plotting import pyplot, save_figure


def plot_loss_by_position(curves: Sequence[dict[str, Any]], path: str | Path, *, title: str | None = None
                          ) -> Path:
    """``curves``: dicts with ``label``, ``center`` (positions), ``loss`` (mean loss per bin) and
    ``train_length``; each is drawn as one line, each distinct training length as a dashed vertical line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for c in curves:
        ax.plot(c["center"], c["loss"], label=c["label"], lw=1.6)
    for i, tl in enumerate(sorted({int(c["train_length"]) for c in curves if c.get("train_length")})):
        ax.axvline(tl, color="0.4", ls="--", lw=1, label="training length" if i == 0 else None)
    ax.set_xscale("log")
    ax.set_xlabel("position in the sequence (tokens)")
    ax.set_ylabel("mean loss (nats/token)")
    ax.set_title(title or "validation loss by position")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path, dpi=120)


def plot_loss_by_length(rows: Sequence[dict[str, Any]], path: str | Path, *,
                        title: str | None = None) -> Path:
    """``rows``: dicts with ``label``, ``lengths``, ``losses`` and ``train_length``: loss vs eval length."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for r in rows:
        ax.plot(r["lengths"], r["losses"], marker="o", label=r["label"])
    for i, tl in enumerate(sorted({int(r["train_length"]) for r in rows if r.get("train_length")})):
        ax.axvline(tl, color="0.4", ls="--", lw=1, label="training length" if i == 0 else None)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("evaluation length (tokens)")
    ax.set_ylabel("validation loss (nats/token)")
    ax.set_title(title or "validation loss by context length")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path, dpi=120)


def plot_depth_heatmaps(panels: Sequence[dict[str, Any]], path: str | Path, *,
                        title: str | None = None, ncols: int = 5) -> Path:
    """``panels``: dicts with ``title``, ``accuracy`` (depth bins × lengths, NaN where empty) and
    ``col_labels``; rows are depth bins [k/n, (k+1)/n) from 0 % (top) to 100 % (bottom), cells annotated.
    At most ``ncols`` panels per row of the figure."""
    plt = pyplot()
    n = len(panels)
    cols, rows = min(n, ncols), -(-n // ncols)
    width = max(3.2, 1.1 * max(p["accuracy"].shape[1] for p in panels) + 1.6)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, 4.8 * rows), squeeze=False, sharey=True)
    image = None
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.set_visible(False)
            continue
        p = panels[k]
        acc = np.asarray(p["accuracy"], dtype=float)
        n_bins = acc.shape[0]
        image = ax.imshow(np.ma.masked_invalid(acc), vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(acc.shape[1]), p["col_labels"])
        ax.set_yticks(range(n_bins), [f"{100 * b // n_bins}%" for b in range(n_bins)])
        ax.set_xlabel("context length")
        if k % cols == 0:  # the panels of a row share the depth axis: one label, no overlap with the neighbour
            ax.set_ylabel("needle depth")
        ax.set_title(p["title"], fontsize=10)
        for i in range(acc.shape[0]):
            for j in range(acc.shape[1]):
                if np.isfinite(acc[i, j]):
                    ax.text(j, i, f"{acc[i, j]:.2f}", ha="center", va="center", fontsize=7)
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), label="accuracy", shrink=0.9)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path, dpi=120)
