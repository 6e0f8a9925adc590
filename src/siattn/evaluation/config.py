"""The options of the evaluations of trained checkpoints: :class:`EvalConfig` (loss by length, ``siattn eval``),
:class:`NeedleConfig` (needle and passkey retrieval, ``siattn needle``) and :class:`GenerateConfig`
(``siattn generate``). Each field is declared once with :func:`siattn.options.option`; the command line is
derived from these declarations.
"""

from __future__ import annotations

from dataclasses import dataclass

from siattn.errors import UsageError
from siattn.evaluation.lengths import DEFAULT_MULTIPLIERS
from siattn.options import check_options, option
from siattn.precision import DTYPES

DEFAULT_TOKENS = 1 << 20
DEFAULT_TRIALS = {"needle": 100, "passkey": 50}


@dataclass(kw_only=True)
class CheckpointOptions:
    """Which checkpoints to evaluate, at which lengths, on which device (shared by eval and needle)."""

    checkpoint: list[str] = option(help="checkpoint folders, or run folders (their newest checkpoint)",
                                   metavar="DIR")
    labels: list[str] | None = option(None, "one name per checkpoint for tables and plots (default: the method, "
                                      "made unique)", metavar="NAME")
    data: str | None = option(None, "prepared dataset folder (default: the one each checkpoint was trained on)",
                              metavar="PATH")
    multipliers: list[int] = option(default_factory=lambda: list(DEFAULT_MULTIPLIERS), min=1, metavar="M",
                                    help="evaluation lengths as multiples of each checkpoint's training length")
    lengths: list[int] | None = option(None, "evaluation lengths in tokens (override --multipliers)", min=1,
                                       metavar="T")
    device: str = option("auto", "auto (CUDA if available), cpu, cuda, cuda:1, ...")
    dtype: str = option("auto", "autocast dtype (auto: bfloat16 on CUDA, float32 on CPU)", choices=DTYPES)
    attn_backend: str | None = option(None, "attention backend to run the model with (default: the "
                                      "checkpoint's, normally auto)")
    method: str | None = option(None, "evaluate under a method that extends the trained one: rope-ntk or yarn on "
                                "a rope checkpoint, logn-ntk on a logn-rope checkpoint (default: the "
                                "checkpoint's own)", metavar="METHOD")
    resume: bool = option(True, "keep results already in the output JSON for the same checkpoint and settings")
    progress: bool = option(True, "tqdm progress bars")

    def __post_init__(self) -> None:
        check_options(self)
        self.checkpoint = [str(c) for c in self.checkpoint]
        if not self.checkpoint:
            raise UsageError("checkpoint must name at least one checkpoint or run folder")
        if self.labels is not None and len(self.labels) != len(self.checkpoint):
            raise UsageError(f"labels must be one per checkpoint: {len(self.checkpoint)} checkpoints, "
                             f"{len(self.labels)} labels")


@dataclass(kw_only=True)
class EvalConfig(CheckpointOptions):
    """Validation loss of checkpoints at several lengths and by position (``siattn eval``)."""

    tokens: int | None = option(None, "scored tokens per length, the same at every length (rounded down to a "
                                "multiple of every length; default: the smallest eval_tokens of the checkpoints, "
                                f"else {DEFAULT_TOKENS})", min=1)
    batch_tokens: int | None = option(None, "tokens per forward: windows per batch = max(1, batch_tokens // "
                                      "length) (default: the checkpoints' eval_batch_tokens)", min=1)
    head_chunk: int | None = option(None, "tokens per slice of the output head (default: slice only when the "
                                    "logits are large)", min=1)
    bins_per_decade: int = option(10, "log-spaced position bins per factor of 10", min=1)
    out: str = option("runs/eval", "output folder")

    def __post_init__(self) -> None:
        super().__post_init__()


@dataclass(kw_only=True)
class NeedleConfig(CheckpointOptions):
    """Needle-in-a-haystack or passkey retrieval, after fine-tuning or zero-shot (``siattn needle``)."""

    task: str = option("needle", "needle: three city/number needles in validation text (the paper's task); "
                       "passkey: one 5-digit key in filler sentences (Mohtashami & Jaggi)",
                       choices=tuple(DEFAULT_TRIALS))
    tokenizer: str | None = option(None, "tokenizer to write the prompts with (default: the dataset's); needed "
                                   "when the dataset holds bare ids, e.g. hf:/path/to/gpt2/tokenizer.json",
                                   metavar="SPEC")
    trials: int | None = option(None, "examples per length (default: 100 needle, 50 passkey)", min=1)
    seed: int = option(0, "seeds the examples and the fine-tuning data", min=0)
    finetune: bool | None = option(None, "fine-tune before evaluating (default: yes for needle, no for passkey)")
    zero_shot: bool | None = option(None, "also evaluate before fine-tuning (default: no for needle, yes for "
                                    "passkey)")
    warmup: int = option(100, "fine-tuning: linear warm-up steps", min=0)
    constant: int = option(100, "fine-tuning: constant-lr steps", min=0)
    decay: int = option(100, "fine-tuning: steps of linear decay to 0", min=0)
    batch_size: int | None = option(None, "fine-tuning sequences per step (default: the checkpoint's training "
                                    "batch size)", min=1)
    micro_batch_size: int | None = option(None, "sequences per forward (default: the checkpoint's, else the batch "
                                          "size)", min=1)
    lr_scale: float = option(1.0, "multiplies every learning rate of the checkpoint's training configuration",
                             min=0.0, min_open=True)
    margin: int = option(2, "tokens decoded beyond the answer's length", min=0)
    depth_bins: int = option(10, "rows of the depth × length heat map", min=1)
    attention_trials: int = option(0, "also measure, after each stage, the attention mass on the needle tokens per "
                                   "layer and head over the first N examples of every length "
                                   "(siattn.analysis.needle_attention; 0: off)", min=0, metavar="N")
    save_finetuned: bool = option(False, "save the fine-tuned weights under OUT/finetuned-{task}/{label} (reused "
                                  "on resume)")
    out: str | None = option(None, "output folder (default: runs/{task})")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.finetune is False and self.zero_shot is False:
            raise UsageError("finetune and zero_shot are both off: no stage is left to run")

    @property
    def trial_count(self) -> int:
        """``trials``, or the task's default."""
        return DEFAULT_TRIALS[self.task] if self.trials is None else self.trials

    @property
    def do_finetune(self) -> bool:
        return self.finetune if self.finetune is not None else self.task == "needle"

    @property
    def do_zero_shot(self) -> bool:
        return self.zero_shot if self.zero_shot is not None else self.task == "passkey"

    @property
    def out_dir(self) -> str:
        return self.out or f"runs/{self.task}"


@dataclass(kw_only=True)
class GenerateConfig:
    """Continue a prompt with a trained checkpoint (``siattn generate``)."""

    checkpoint: str = option(help="checkpoint folder, or a run folder (its newest checkpoint)")
    prompt: str | None = option(None, "text to continue (give this or prompt_file)")
    prompt_file: str | None = option(None, "read the prompt from a file")
    max_new_tokens: int = option(200, "tokens to generate", min=0)
    temperature: float = option(0.8, "sampling temperature; 0 means greedy", min=0.0)
    greedy: bool = option(False, "same as --temperature 0")
    top_k: int | None = option(None, "sample among the k most likely tokens", min=1)
    num_samples: int = option(1, "samples to draw", min=1)
    seed: int = option(0, "seed of the sampling", min=0)
    device: str | None = option(None, "cpu or cuda (default: cuda when available)")
    tokenizer: str | None = option(None, "override the checkpoint's tokenizer (spec or prepared dataset folder)")
    attn_backend: str | None = option(None, "attention backend (default: auto)")
    stop_at_eod: bool = option(False, "stop a sample at the end-of-document token")
    json: bool = option(False, "print one JSON object instead of plain text")

    def __post_init__(self) -> None:
        check_options(self)
        if (self.prompt is None) == (self.prompt_file is None):
            raise UsageError("prompt must be given, or prompt_file, but not both")


def study_names() -> list[str]:
    """The studies of :data:`siattn.evaluation.grid.STUDIES`."""
    from siattn.evaluation.grid import STUDIES

    return sorted(STUDIES)


@dataclass(kw_only=True)
class ReproduceConfig:
    """Run a study's runs (train, loss by length, needle, passkey) and its table (``siattn reproduce``)."""

    study: str = option(help="which comparison (its protocol is fixed in code)", positional=True,
                        choices=study_names)
    list_runs: bool = option(False, "print the study's runs and which are done, and exit", flag="--list")
    run: list[str] | None = option(None, "these runs (ids as --list prints them)", metavar="RUN_ID")
    next_runs: int | None = option(None, "the first N runs of the study not yet in --out", min=1, metavar="N",
                                   flag="--next")
    table: bool = option(False, "only regenerate the table and plots from --out")
    out: str | None = option(None, "results folder: run folders in OUT/runs, table.md and plots in OUT (default: "
                             "runs/reproduce/STUDY/results)")
    scratch: str = option("runs/reproduce", "where runs train (checkpoints stay there)")
    parallel: int = option(1, "runs at once, each in its own process (they share the device)", min=1, metavar="P")
    deadline: float | None = option(None, "stop every run still going after this many seconds (it writes nothing)",
                                    min=0.0, min_open=True, metavar="SECONDS")
    device: str | None = option(None, "cpu, cuda or cuda:N (default: cuda when available)")
    progress: bool = option(True, "progress bars")

    def __post_init__(self) -> None:
        check_options(self)
        given = [name for name in ("list_runs", "run", "next_runs", "table")
                 if getattr(self, name) not in (None, False)]
        if len(given) > 1:
            raise UsageError(f"{given[-1]} cannot be combined with {given[0]} (give one of list, run, next, table)")
