"""The options of ``siattn analyze``: :class:`TheoryRun` (a :class:`~siattn.analysis.theory.TheoryConfig` and
where its files go), :class:`ModelAnalysisConfig` (which checkpoints, and the window settings from which each
checkpoint's :class:`~siattn.analysis.model_stats.ModelStatsConfig` is made) and :class:`NeedleAttentionRun`
(which checkpoints, and the settings of each one's
:class:`~siattn.analysis.needle_attention.NeedleAttentionConfig`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from siattn.analysis.model_stats import ModelStatsConfig
from siattn.analysis.needle_attention import NeedleAttentionConfig
from siattn.analysis.theory import TheoryConfig
from siattn.errors import UsageError
from siattn.options import check_options, option

DEFAULT_DATA = "data_cache/stdlib-bytes"


@dataclass(frozen=True)
class TheoryRun(TheoryConfig):
    """IID N(0,1) scores under no scaling, LogN and scale-invariant logits."""

    out: str = option("runs/theory", "output folder for theory.json, theory.md and the PNG figures")

    def theory_config(self) -> TheoryConfig:
        """The TheoryConfig part (what the results depend on)."""
        return TheoryConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(TheoryConfig)})


def window_length(text: str | None, train_length: int) -> int:
    """A window length: None (the training length), tokens (4096, 1e4) or a multiple of it (4x)."""
    if text is None:
        return train_length
    text = str(text)
    try:
        value = float(text[:-1]) * train_length if text.lower().endswith("x") else float(text)
    except ValueError:
        raise UsageError(f"length must be a number of tokens or a multiple like 4x, got {text!r}") from None
    if not value >= 1 or (not text.lower().endswith("x") and value != int(value)):
        raise UsageError(f"length must be a positive number of tokens or a multiple like 4x, got {text!r}")
    return round(value)


@dataclass(kw_only=True)
class ModelAnalysisConfig:
    """The attention statistics of trained checkpoints' real logits (``siattn analyze model``)."""

    checkpoint: list[str] = option(help="checkpoint folders or run folders (their newest checkpoint)",
                                   metavar="DIR")
    data: str | None = option(None, "prepared dataset whose validation split is read (default: the checkpoint's "
                              f"training data, else {DEFAULT_DATA})", metavar="PATH")
    length: str | None = option(None, "tokens per window, or a multiple of the training length such as 4x "
                                "(default: the training length)", metavar="T|Mx")
    queries: int = option(ModelStatsConfig.queries, "random query rows per window, from its last tenth (N large)",
                          min=1)
    windows: int = option(ModelStatsConfig.windows, "validation windows (one forward each)", min=1)
    layers: list[int] | None = option(None, "layers to analyse (default: all)", min=0, metavar="L")
    out: str = option("runs/analysis-model", "output folder: model.json, model.md, a folder of figures per "
                      "checkpoint")
    seed: int = option(ModelStatsConfig.seed, "seed of the query-row and QQ sampling", min=0)
    device: str = option("auto", "auto (CUDA if available), cpu, cuda, ...")

    def __post_init__(self) -> None:
        check_options(self)
        self.checkpoint = [str(c) for c in self.checkpoint]
        window_length(self.length, 1 << 20)  # the text is valid (a multiple is checked at a long length)

    def stats_config(self, train_length: int) -> ModelStatsConfig:
        """The analysis settings for a checkpoint trained at ``train_length``."""
        return ModelStatsConfig(length=window_length(self.length, train_length), queries=self.queries,
                                windows=self.windows, layers=tuple(self.layers) if self.layers else None,
                                seed=self.seed)


@dataclass(kw_only=True)
class NeedleAttentionRun:
    """Attention mass on the needle tokens of trained checkpoints, per layer and head (``siattn analyze needle``)."""

    checkpoint: list[str] = option(help="checkpoint folders or run folders (their newest checkpoint), e.g. the "
                                   "fine-tuned weights that `siattn needle --save-finetuned` keeps", metavar="DIR")
    task: str = option("needle", "needle: three city/number needles in validation text; passkey: one 5-digit key "
                       "in filler sentences", choices=("needle", "passkey"))
    multipliers: list[int] = option(default_factory=lambda: [1, 16], min=1, metavar="M",
                                    help="prompt lengths as multiples of each checkpoint's training length")
    lengths: list[int] | None = option(None, "prompt lengths in tokens (override --multipliers)", min=2,
                                       metavar="T")
    trials: int = option(NeedleAttentionConfig.trials, "examples per length (the evaluation's first N, the same "
                         "as `siattn needle --seed`)", min=1)
    seed: int = option(NeedleAttentionConfig.seed, "seed of the examples", min=0)
    layers: list[int] | None = option(None, "layers to measure (default: all)", min=0, metavar="L")
    data: str | None = option(None, "prepared dataset whose validation split gives the haystacks (default: the "
                              "checkpoint's training data)", metavar="PATH")
    method: str | None = option(None, "measure under a method that extends the trained one: rope-ntk or yarn on a "
                                "rope checkpoint, logn-ntk on a logn-rope one", metavar="METHOD")
    out: str = option("runs/analysis-needle", "output folder: {task}-attention.json and .md, the comparison "
                      "figure, a folder per checkpoint with its layers × heads heat maps")
    device: str = option("auto", "auto (CUDA if available), cpu, cuda, ...")

    def __post_init__(self) -> None:
        check_options(self)
        self.checkpoint = [str(c) for c in self.checkpoint]
        if not self.checkpoint:
            raise UsageError("checkpoint must name at least one checkpoint or run folder")

    def attention_config(self, lengths: list[int]) -> NeedleAttentionConfig:
        """The measurement's settings at ``lengths`` (one checkpoint's prompt lengths)."""
        return NeedleAttentionConfig(lengths=tuple(lengths), trials=self.trials, seed=self.seed,
                                     layers=tuple(self.layers) if self.layers else None)
