"""Every bad input gets one clear line: a table of invocations with the error each must give (a substring that
names the argument, the exit code: 2 for usage errors), and a sweep over every numeric option of every
subcommand, read from the parsers themselves, so that a new option cannot go untested."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from siattn.cli import build_parser, main

# Placeholders: {missing} does not exist, {file} is a regular file (so {file}/x cannot be created), {empty} is an
# empty folder, {corrupt} a checkpoint folder whose state.json is not JSON, {src} a folder with two documents.
ROWS: list[tuple[str, str, int]] = [
    # reproduce
    ("reproduce no-such-study", "study", 2),
    ("reproduce cpu-tiny --run no-such-run-s0 --out {tmp}/r", "run must be one of", 2),
    ("reproduce cpu-tiny --next 0 --out {tmp}/r", "--next", 2),
    ("reproduce cpu-tiny --parallel 0 --next 1 --out {tmp}/r", "--parallel", 2),
    ("reproduce cpu-tiny --deadline 0 --next 1 --out {tmp}/r", "--deadline", 2),
    ("reproduce cpu-tiny --next 1 --table --out {tmp}/r", "--table", 2),
    # data
    ("data prepare {missing}", "no such file, folder or glob", 2),
    ("data prepare {src} --val-fraction 1.5", "--val-fraction", 2),
    ("data prepare {src} --val-fraction -0.1", "--val-fraction", 2),
    ("data prepare {src} --val-fraction abc", "--val-fraction", 2),
    ("data prepare {src} --val-fraction nan", "--val-fraction", 2),
    ("data prepare {src} --max-bytes 10Q", "--max-bytes", 2),
    ("data prepare {src} --max-bytes 0", "max_bytes", 2),
    ("data prepare {src} --seed -1", "--seed", 2),
    ("data prepare {src} --tokenizer bpe:10", "bpe:10", 2),
    ("data prepare {src} --tokenizer bpe:abc", "bpe:abc", 2),
    ("data prepare {src} --out {file}/x", "--out", 2),
    ("data prepare {src} --out {file}", "--out", 2),
    ("data info {missing}", "manifest", 2),
    ("data info {empty}", "manifest", 2),
    ("data frobnicate", "invalid choice", 2),
    # train (--data {missing}: a run that got past validation would stop at the data)
    ("train --data {missing} --steps 0", "--steps must be >= 1", 2),
    ("train --data {missing} --steps -1", "--steps must be >= 1", 2),
    ("train --data {missing} --steps x", "--steps", 2),
    ("train --data {missing} --head-dim 0", "--head-dim must be >= 1", 2),
    ("train --data {missing} --head-dim 15", "--head-dim must be even", 2),
    ("train --data {missing} --n-head 3 --n-kv-head 2", "--n-head (3) must be a multiple", 2),
    ("train --data {missing} --n-layer 0", "--n-layer", 2),
    ("train --data {missing} --n-embd 0", "--n-embd", 2),
    ("train --data {missing} --seq-len 0", "--seq-len", 2),
    ("train --data {missing} --batch-size 0", "--batch-size", 2),
    ("train --data {missing} --micro-batch-size 0", "--micro-batch-size", 2),
    ("train --data {missing} --lr-muon -1", "--lr-muon", 2),
    ("train --data {missing} --lr-embed nan", "--lr-embed", 2),
    ("train --data {missing} --cooldown-frac 2", "--cooldown-frac", 2),
    ("train --data {missing} --warmup-steps -1", "--warmup-steps", 2),
    ("train --data {missing} --grad-clip 0", "--grad-clip", 2),
    ("train --data {missing} --tau 0", "--tau", 2),
    ("train --data {missing} --p-rope-base -1", "--p-rope-base", 2),
    ("train --data {missing} --eval-every 0", "--eval-every", 2),
    ("train --data {missing} --eval-tokens 0", "--eval-tokens", 2),
    ("train --data {missing} --eval-multipliers 0,1", "--eval-multipliers", 2),
    ("train --data {missing} --log-every 0", "--log-every", 2),
    ("train --data {missing} --ckpt-every 0", "--ckpt-every", 2),
    ("train --data {missing} --keep-checkpoints -1", "--keep-checkpoints", 2),
    ("train --data {missing} --seed -1", "--seed", 2),
    ("train --data {missing} --threads 0", "--threads", 2),
    ("train --data {missing} --method nope2", "--method", 2),
    ("train --preset nope", "--preset", 2),
    ("train --data {missing} --out {tmp}/run", "--data", 2),
    ("train --data {missing} --out {file}/run", "--out", 2),
    ("train --resume {empty}", "neither a checkpoint", 2),
    ("train --resume {missing}", "no such checkpoint", 2),
    ("train --resume {corrupt}", "corrupt", 2),
    # eval
    ("eval", "--checkpoint", 2),
    ("eval --checkpoint {missing}", "no such checkpoint", 2),
    ("eval --checkpoint {empty}", "neither a checkpoint", 2),
    ("eval --checkpoint {corrupt}", "corrupt", 2),
    ("eval --checkpoint {missing} --multipliers 0", "--multipliers", 2),
    ("eval --checkpoint {missing} --lengths -5", "--lengths", 2),
    ("eval --checkpoint {missing} --tokens 0", "--tokens", 2),
    ("eval --checkpoint {missing} --batch-tokens 0", "--batch-tokens", 2),
    ("eval --checkpoint {missing} --head-chunk 0", "--head-chunk", 2),
    ("eval --checkpoint {missing} --bins-per-decade 0", "--bins-per-decade", 2),
    ("eval --checkpoint {missing} --dtype float16", "--dtype", 2),
    ("eval --checkpoint {missing} --out {file}/x", "--out", 2),
    # needle
    ("needle --checkpoint {missing} --trials 0", "--trials", 2),
    ("needle --checkpoint {missing} --trials -1", "--trials", 2),
    ("needle --checkpoint {missing} --seed -1", "--seed", 2),
    ("needle --checkpoint {missing} --warmup -1", "--warmup", 2),
    ("needle --checkpoint {missing} --lr-scale 0", "--lr-scale", 2),
    ("needle --checkpoint {missing} --margin -1", "--margin", 2),
    ("needle --checkpoint {missing} --depth-bins 0", "--depth-bins", 2),
    ("needle --checkpoint {missing} --batch-size 0", "--batch-size", 2),
    ("needle --checkpoint {missing} --task foo", "--task", 2),
    ("needle --checkpoint {missing}", "no such checkpoint", 2),
    ("needle --task passkey --checkpoint {empty}", "neither a checkpoint", 2),
    ("needle --checkpoint {missing} --out {file}/x", "--out", 2),
    # generate
    ("generate --checkpoint {missing} --prompt hi --temperature -1", "--temperature", 2),
    ("generate --checkpoint {missing} --prompt hi --temperature inf", "--temperature", 2),
    ("generate --checkpoint {missing} --prompt hi --max-new-tokens -1", "--max-new-tokens", 2),
    ("generate --checkpoint {missing} --prompt hi --top-k 0", "--top-k", 2),
    ("generate --checkpoint {missing} --prompt hi --num-samples 0", "--num-samples", 2),
    ("generate --checkpoint {missing} --prompt hi --seed -1", "--seed", 2),
    ("generate --checkpoint {missing} --prompt hi", "no such checkpoint", 2),
    ("generate --checkpoint {empty} --prompt hi", "neither a checkpoint", 2),
    ("generate --checkpoint {missing}", "--prompt", 2),
    # analyze
    ("analyze theory --samples 0", "--samples", 2),
    ("analyze theory --max-n -1", "--max-n", 2),
    ("analyze theory --tau 0", "--tau", 2),
    ("analyze theory --logn-s -1", "--logn-s", 2),
    ("analyze theory --seed -1", "--seed", 2),
    ("analyze theory --out {file}/x", "--out", 2),
    ("analyze model --checkpoint {missing}", "no such checkpoint", 2),
    ("analyze model --checkpoint {missing} --length 0", "--length", 2),
    ("analyze model --checkpoint {missing} --queries 0", "--queries", 2),
    ("analyze model --checkpoint {missing} --windows 0", "--windows", 2),
    ("analyze model --checkpoint {missing} --layers -1", "--layers", 2),
    ("analyze needle --checkpoint {missing}", "no such checkpoint", 2),
    ("analyze needle --checkpoint {missing} --task haystack", "--task", 2),
    ("analyze needle --checkpoint {missing} --multipliers 0", "--multipliers", 2),
    ("analyze needle --checkpoint {missing} --trials 0", "--trials", 2),
    ("analyze needle --checkpoint {missing} --out {file}/x", "--out", 2),
    # bench
    ("bench attention --heads 0", "--heads", 2),
    ("bench attention --kv-heads 0", "--kv-heads", 2),
    ("bench attention --head-dim 0", "--head-dim", 2),
    ("bench attention --tau 0", "--tau", 2),
    ("bench attention --sizes 4kx0", "--sizes", 2),
    ("bench attention --sizes 4k", "--sizes", 2),
    ("bench attention --decode-lengths 0", "--decode-lengths", 2),
    ("bench attention --decode-batch 0", "--decode-batch", 2),
    ("bench attention --rep-ms 0", "--rep-ms", 2),
    ("bench attention --lengths -1", "--lengths", 2),
    ("bench attention --repeats 0", "--repeats", 2),
    ("bench attention --timeout-s 0", "--timeout-s", 2),
    ("bench attention --memory-cap-gb -1", "--memory-cap-gb", 2),
    ("bench attention --device tpu", "--device", 2),
    ("bench attention --out {file}/x/result.json", "--out", 2),
    ("bench attention --md {file}/x/result.md", "--md", 2),
    # top level
    ("frobnicate", "invalid choice", 2),
]


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("bad-input")
    (tmp / "file").write_text("a regular file\n")
    (tmp / "empty").mkdir()
    corrupt = tmp / "corrupt"
    corrupt.mkdir()
    (corrupt / "state.json").write_text("{not json")
    (corrupt / "COMPLETE").write_text("ok\n")
    (tmp / "src").mkdir()
    for i in range(2):
        (tmp / "src" / f"d{i}.txt").write_text(f"document {i}\n")
    return {"tmp": str(tmp), "missing": str(tmp / "missing"), "file": str(tmp / "file"),
            "empty": str(tmp / "empty"), "corrupt": str(corrupt), "src": str(tmp / "src")}


def run(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's usage errors
        code = stop.code
    captured = capsys.readouterr()
    # `siattn analyze` reports its own checks on stdout (tests/analysis hold it to that); all else on stderr
    return code, captured.err if captured.err or argv[0] != "analyze" else captured.out


def error_line(err: str) -> str:
    """The one line that reports the error: the last line on stderr."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, "no error message"
    return lines[-1]


def test_the_table_has_at_least_60_rows():
    assert len(ROWS) >= 60


@pytest.mark.parametrize(("command", "expected", "code"), ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_gives_one_line_naming_the_problem(command, expected, code, places, capsys, monkeypatch):
    monkeypatch.chdir(places["tmp"])
    argv = [part.format(**places) for part in command.split()]
    got, err = run(argv, capsys)
    assert "Traceback" not in err
    line = error_line(err)
    assert expected in line, err
    assert "error" in line, err
    assert got == code, err


# ---- every numeric option, read from the parsers ----

# per command: arguments that make a run stop at once if a bad value got through validation
BASE: dict[str, list[str]] = {
    "data prepare": ["{missing}"],
    "train": ["--data", "{missing}", "--out", "{tmp}/run"],
    "eval": ["--checkpoint", "{missing}"],
    "needle": ["--checkpoint", "{missing}"],
    "analyze theory": ["--out", "{file}/x"],
    "analyze model": ["--checkpoint", "{missing}"],
    "analyze needle": ["--checkpoint", "{missing}"],
    "generate": ["--checkpoint", "{missing}", "--prompt", "hi"],
    "bench attention": ["--out", "{file}/x/result.json"],
    "bench accuracy": ["--device", "cpu", "--out", "{file}/x/result.json"],
    "hf-train": ["--model", "{missing}", "--data", "{missing}", "--out", "{tmp}/hf-train"],
    "reproduce": ["cpu-tiny", "--out", "{tmp}/reproduce"],
}
# commands whose numeric options are exempt from the sweep (none: every option gets a check)
NOT_SWEPT: dict[str, set[str]] = {}
_NON_NUMERIC_TYPES = (None, str, Path)


def numeric_options() -> list[tuple[str, str]]:
    """(command path, option) for every option of every (sub)command whose value is converted to a number."""
    found = []

    def walk(parser: argparse.ArgumentParser, path: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, [*path, name])
            elif action.option_strings and action.type not in _NON_NUMERIC_TYPES and not action.choices:
                found.append((" ".join(path), max(action.option_strings, key=len)))

    walk(build_parser(), [])
    return found


OPTIONS = numeric_options()


def test_every_command_with_numeric_options_is_swept():
    commands = {c for c, _ in OPTIONS}
    assert commands == set(BASE) | set(NOT_SWEPT)
    for command, options in NOT_SWEPT.items():
        assert {o for c, o in OPTIONS if c == command} == options


@pytest.mark.parametrize("value", ["-1", "not-a-number"])
@pytest.mark.parametrize(("command", "option"), [o for o in OPTIONS if o[0] in BASE],
                         ids=[f"{c} {o}" for c, o in OPTIONS if c in BASE])
def test_every_numeric_option_rejects_bad_values_in_one_line(command, option, value, places, capsys, monkeypatch):
    monkeypatch.chdir(places["tmp"])
    argv = [*command.split(), *(a.format(**places) for a in BASE[command]), option, value]
    code, err = run(argv, capsys)
    assert "Traceback" not in err
    line = error_line(err)
    assert option in line, err
    assert code == 2, err
