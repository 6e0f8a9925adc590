"""A run's metrics: ``metrics.jsonl`` written line by line (and TensorBoard events), read back and plotted.

    {"kind": "train", "step", "loss", "lr_mult", "tokens", "tokens_per_s", "seconds"}
    {"kind": "val", "step", "loss": {"512": ..., "2048": ...}}            (losses in nats/token)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class MetricsLog:
    """metrics.jsonl, appended line by line (rank 0 only); on resume, lines after the checkpoint's step go.

    With ``tensorboard_dir`` every record is also written as TensorBoard scalars (``train/loss``,
    ``train/lr_mult``, ``train/tokens_per_s``, ``val/loss@LENGTH``, x axis = step); on resume TensorBoard's
    own purge drops events after the checkpoint's step, as the JSONL does.
    """

    def __init__(self, path: Path, enabled: bool, resume_step: int | None = None,
                 tensorboard_dir: Path | None = None):
        self.path, self.enabled = path, enabled
        self._tb = None
        if not enabled:
            return
        if resume_step is not None and path.exists():
            keep = [line for line in path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            path.write_text("".join(line + "\n" for line in keep))
        elif resume_step is None:
            path.write_text("")
        if tensorboard_dir is not None:
            self._tb = tensorboard_writer(tensorboard_dir, purge_step=None if resume_step is None
                                          else resume_step + 1)
        self._file = open(path, "a")  # noqa: SIM115 (kept open for the run)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            step = record["step"]
            if record["kind"] == "val":
                for length, loss in record["loss"].items():
                    self._tb.add_scalar(f"val/loss@{length}", loss, step)
            else:
                for key in ("loss", "lr_mult", "tokens_per_s"):
                    if key in record:
                        self._tb.add_scalar(f"{record['kind']}/{key}", record[key], step)
            self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            if self._tb is not None:
                self._tb.close()


def tensorboard_writer(log_dir: Path, purge_step: int | None = None) -> Any:
    """A ``torch.utils.tensorboard.SummaryWriter`` on ``log_dir``; a clear error when tensorboard is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:  # torch imports it lazily and needs the tensorboard package
        raise RuntimeError("--tensorboard needs the tensorboard package: pip install 'siattn[tensorboard]' "
                           f"({e})") from None
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_metrics(metrics_path: Path, out: Path, *, unigram_entropy: float | None = None, title: str = "") -> Path:
    """Training loss per logged step and validation loss per length, nats/token; returns ``out``."""
    from siattn.plotting import pyplot, save_figure

    plt = pyplot()
    records = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in records if r["kind"] == "train"]
    val = [r for r in records if r["kind"] == "val"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    if train:
        ax.plot(*zip(*train), lw=1, color="0.6", label="train")
    for length in (val[-1]["loss"] if val else {}):
        pts = [(r["step"], r["loss"][length]) for r in val if length in r["loss"]]
        ax.plot(*zip(*pts), marker="o", label=f"val @ {length}")
    if unigram_entropy is not None:
        ax.axhline(unigram_entropy, ls="--", color="k", lw=0.8, label=f"unigram entropy {unigram_entropy:.2f}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, out, dpi=120)
