"""Where a model looks while it answers a retrieval prompt: attention mass on the needle tokens, per layer and head.

For each example (:mod:`siattn.evaluation.needle` or :mod:`~siattn.evaluation.passkey`, drawn exactly as the
evaluation draws them: :func:`~siattn.evaluation.needle.example_rng`), the prompt and the answer go through the
model teacher-forced. For the query rows that predict the answer tokens (rows len(prompt) − 1 …
len(prompt) + len(answer) − 2), the attention weights of every chosen layer are recomputed from the layer's own q
and k (:func:`siattn.analysis.model_stats.attention_scores`: LogN factor, the method's transform, causal mask)
and summed over the keys of the needle sentences:

    mass[layer, head] = mean over rows and examples of Σ_{j ∈ needle tokens} softmax(L_row)_j

beside the share of those keys among the keys the row sees (what uniform attention would give), so that
``mass / uniform`` is the needle's enrichment. A model that retrieves puts much of some heads' mass there; one
that fails at long lengths spreads it or keeps it local.

:func:`plot_mass_by_length` draws the best head's mass against the length for several models (one panel per
task), :func:`plot_mass_maps` one model's layers × heads at each length.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from siattn.analysis.model_stats import attention_scores, resolve_layers, run_attention_hooks
from siattn.errors import check_int
from siattn.evaluation.needle import RetrievalExample, RetrievalTask, example_rng
from siattn.plotting import pyplot, save_figure


@dataclass(frozen=True)
class NeedleAttentionConfig:
    """What one analysis depends on (written to the JSON as is)."""

    lengths: tuple[int, ...]           # prompt + answer positions of the examples
    trials: int = 10                   # examples per length (the evaluation's first ``trials``)
    seed: int = 0                      # the evaluation's seed: the same examples as `siattn needle --seed`
    layers: tuple[int, ...] | None = None  # None: every layer

    def __post_init__(self) -> None:
        if not self.lengths:
            raise ValueError("lengths must name at least one length")
        for length in self.lengths:
            check_int("lengths", length, min=2)
        check_int("trials", self.trials, min=1)


def needle_positions(example: RetrievalExample) -> np.ndarray:
    """Prompt indices of every needle sentence's tokens (sorted)."""
    spans = [np.arange(n.start, n.start + n.tokens) for n in example.needles]
    if any(n.tokens < 1 for n in example.needles):
        raise ValueError("the example's needles do not record their token counts (Needle.tokens)")
    return np.concatenate(spans)


def answer_rows(example: RetrievalExample) -> np.ndarray:
    """Rows of the teacher-forced input (prompt + answer[:-1]) whose next token is an answer token."""
    return np.arange(len(example.prompt) - 1, len(example.prompt) + len(example.answer) - 1)


@torch.no_grad()
def example_needle_mass(model: torch.nn.Module, example: RetrievalExample, layers: Sequence[int]
                        ) -> tuple[np.ndarray, float]:
    """(mass (layers, heads): mean attention on the needle tokens over the answer rows, uniform share)."""
    device = next(model.parameters()).device
    x = np.concatenate([example.prompt, example.answer[:-1]]).astype(np.int64)
    rows = answer_rows(example)
    keys = torch.as_tensor(needle_positions(example), device=device)
    out = np.zeros((len(layers), model.config.n_head))

    def measure(i: int, attn: torch.nn.Module, h: torch.Tensor, rotary: tuple | None) -> None:
        _, logits = attention_scores(attn, h, rotary, rows.tolist())  # (1, H, R, T) float32
        probs = torch.softmax(logits[0], dim=-1)
        out[layers.index(i)] = probs[..., keys].sum(-1).mean(-1).double().cpu().numpy()

    run_attention_hooks(model, torch.as_tensor(x, device=device)[None], list(layers), measure)
    uniform = float(np.mean([len(keys) / (r + 1) for r in rows]))
    return out, uniform


def needle_attention(model: torch.nn.Module, task: RetrievalTask, cfg: NeedleAttentionConfig,
                     progress: Callable[[int], None] | None = None) -> dict:
    """Attention mass on the needles of ``cfg.trials`` examples of ``task`` at each length; a JSON-ready dict:
    per length, ``mass`` (layers × heads, mean over examples), its per-layer mean and max over heads, the
    uniform share and the best head (layer, head, mass)."""
    layers = resolve_layers(cfg.layers, model.config.n_layer)
    results: dict = {"config": asdict(cfg) | {"layers": layers}, "task": task.name, "lengths": {}}
    for length in cfg.lengths:
        masses, uniforms = [], []
        for trial in range(cfg.trials):
            example = task.example(length, example_rng(cfg.seed, length, trial))
            mass, uniform = example_needle_mass(model, example, layers)
            masses.append(mass)
            uniforms.append(uniform)
            if progress is not None:
                progress(1)
        mean = np.mean(masses, axis=0)
        layer, head = np.unravel_index(int(np.argmax(mean)), mean.shape)
        results["lengths"][str(length)] = {
            "mass": mean.round(5).tolist(),
            "layer_mean": mean.mean(1).round(5).tolist(),
            "layer_max": mean.max(1).round(5).tolist(),
            "uniform": round(float(np.mean(uniforms)), 6),
            "best_head": {"layer": layers[layer], "head": int(head), "mass": round(float(mean[layer, head]), 5)},
        }
    return results


def best_head_mass(result: dict) -> dict[int, float]:
    """length -> the best head's mass on the needle tokens in a :func:`needle_attention` result."""
    return {int(length): cell["best_head"]["mass"] for length, cell in result["lengths"].items()}


def uniform_share(result: dict) -> dict[int, float]:
    """length -> the needle tokens' share of the keys (what attention spread evenly would put on them)."""
    return {int(length): cell["uniform"] for length, cell in result["lengths"].items()}


def plot_mass_by_length(panels: Sequence[dict[str, Any]], path: str | Path, *, title: str) -> Path:
    """One panel per entry of ``panels`` (``title``; ``series``: dicts with ``label``, ``lengths`` and ``mass``,
    the best head's mass at each length; ``uniform``: length -> uniform share, drawn dotted), the length on a
    log-2 axis and the mass on a log axis from the uniform share up to 1."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4.2), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for s in panel["series"]:
            ax.plot(s["lengths"], s["mass"], marker="o", label=s["label"])
        if panel.get("uniform"):
            lengths = sorted(panel["uniform"])
            ax.plot(lengths, [panel["uniform"][n] for n in lengths], "k:", lw=1.2, label="uniform share")
        ax.set_xscale("log", base=2)
        ax.set(yscale="log", xlabel="context length (tokens)", ylabel="best head's attention mass on the needle",
               title=panel["title"])
        ax.set_ylim(top=1.05)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, dpi=120)


def plot_mass_maps(result: dict, path: str | Path, *, title: str) -> Path:
    """Heat maps of one :func:`needle_attention` result: the mass of every layer (rows) and head (columns), one
    panel per length, cells annotated."""
    plt = pyplot()
    lengths = sorted(result["lengths"], key=int)
    layers = result["config"]["layers"]
    heads = len(result["lengths"][lengths[0]]["mass"][0])
    size = (len(lengths) * (0.6 * heads + 1.2) + 1.5, 0.5 * len(layers) + 1.8)
    fig, axes = plt.subplots(1, len(lengths), figsize=size, squeeze=False, sharey=True)
    image = None
    for ax, length in zip(axes[0], lengths):
        cell = result["lengths"][length]
        mass = np.asarray(cell["mass"], dtype=float)
        image = ax.imshow(mass, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
        for (i, j), m in np.ndenumerate(mass):
            ax.text(j, i, f"{m:.2f}", ha="center", va="center", fontsize=7, color="white" if m < 0.6 else "black")
        ax.set_xticks(range(mass.shape[1]))
        ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
        ax.set(xlabel="head", title=f"{length} tokens\nuniform {cell['uniform']:.4f}")
    axes[0][0].set_ylabel("layer")
    fig.colorbar(image, ax=list(axes[0]), shrink=0.85, label="attention mass on the needle tokens")
    fig.suptitle(title, fontsize=10, y=1.0 + 0.45 / fig.get_figheight())  # above the panels' two-line titles
    return save_figure(fig, path, dpi=120)
