"""The command line is derived from the typed configs: every field of every command's config is in its
``--help``, ``--print-config`` round-trips through ``--config``, derived fields are refused, and every
TrainConfig field can be set from the command line."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from siattn.cli import build_parser, main, parse
from siattn.options import documented_fields, field_types, unwrap_optional
from siattn.recipes.arguments import flags
from siattn.training.config import PRESETS, TrainConfig

# per command: the arguments it needs to make a config (nothing is run)
COMMANDS: dict[str, list[str]] = {
    "train": [],
    "eval": ["--checkpoint", "runs/a", "runs/b"],
    "needle": ["--checkpoint", "runs/a", "--task", "passkey"],
    "generate": ["--checkpoint", "runs/a", "--prompt", "def f("],
    "analyze theory": [],
    "analyze model": ["--checkpoint", "runs/a", "--length", "4x"],
    "analyze needle": ["--checkpoint", "runs/a", "--task", "passkey"],
    "bench attention": ["--sizes", "1kx2", "--decode-lengths", ""],
    "bench accuracy": ["--device", "cpu", "--suite", "small"],
    "data prepare": ["some/folder"],
    "data info": ["some/dataset"],
    "reproduce": ["cpu-tiny", "--next", "2"],
    "hf-train": ["--model", "models/m", "--data", "data_cache/d"],
}


def leaf_parsers() -> dict[str, object]:
    """'analyze theory' -> its parser, for every command that has a config."""
    out = {}

    def walk(parser, words):
        for action in parser._actions:
            if action.__class__.__name__ == "_SubParsersAction":
                for name, sub in action.choices.items():
                    walk(sub, [*words, name])
        if hasattr(parser, "_siattn_command"):
            out[" ".join(words)] = parser

    walk(build_parser(), [])
    return out


def all_fields(cls: type) -> list[dataclasses.Field]:
    out = []
    for f in documented_fields(cls):
        tp, _ = unwrap_optional(field_types(cls)[f.name])
        out += all_fields(tp) if dataclasses.is_dataclass(tp) else [f]
    return out


def test_every_command_with_a_config_is_covered_here():
    assert set(leaf_parsers()) == set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_lists_every_field_of_the_config(command):
    parser = leaf_parsers()[command]
    config = parser._siattn_command.config
    text = parser.format_help()
    fields = all_fields(config)
    assert fields
    for f in fields:
        spelling = f.name if f.metadata.get("positional") else flags(config)[f.name]
        assert spelling in text, f"{command}: {f.name} ({spelling}) is not in --help"
        first_words = " ".join(f.metadata["help"].split()[:3])
        assert first_words in " ".join(text.split()), f"{command}: the help of {f.name} is not in --help"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_print_config_round_trips_through_a_config_file(command, tmp_path, capsys):
    argv = [*command.split(), *COMMANDS[command]]
    assert main([*argv, "--print-config"]) == 0
    text = capsys.readouterr().out
    path = tmp_path / "config.yaml"
    path.write_text(text)
    words = command.split()
    positional = [a for a in COMMANDS[command][:1] if not a.startswith("-")] if command != "train" else []
    again = parse([*words, *positional, "--config", str(path)])
    first = parse(argv)
    assert again.config == first.config
    assert main([*words, *positional, "--config", str(path), "--print-config"]) == 0
    assert capsys.readouterr().out == text


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_round_trips_through_a_config_file(preset, tmp_path, capsys):
    assert main(["train", "--preset", preset, "--print-config"]) == 0
    path = tmp_path / "c.yaml"
    path.write_text(capsys.readouterr().out)
    assert parse(["train", "--config", str(path)]).config == parse(["train", "--preset", preset]).config
    assert parse(["train", "--config", str(path)]).config == PRESETS[preset]


def test_flags_after_the_config_file_override_it(tmp_path, capsys):
    assert main(["train", "--steps", "7", "--print-config"]) == 0
    path = tmp_path / "c.yaml"
    path.write_text(capsys.readouterr().out)
    assert parse(["train", "--config", str(path)]).config.steps == 7
    assert parse(["train", "--config", str(path), "--steps", "9"]).config.steps == 9


@pytest.mark.parametrize(("flag", "key"), [("--vocab-size", "vocab_size"), ("--train-length", "train_length")])
def test_derived_fields_are_documented_and_refused(flag, key, tmp_path, capsys):
    parser = leaf_parsers()["train"]
    assert "derived from" in " ".join(parser.format_help().split())
    with pytest.raises(SystemExit) as stop:
        main(["train", flag, "100"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert flag in err and "derived" in err and "cannot be set" in err
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": {key: 100}}))
    with pytest.raises(SystemExit) as stop:
        main(["train", "--config", str(path)])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert key in err and "cannot be set" in err


def test_print_config_leaves_derived_fields_out(capsys):
    assert main(["train", "--print-config"]) == 0
    config = yaml.safe_load(capsys.readouterr().out)
    assert "vocab_size" not in config["model"] and "train_length" not in config["model"]


def _a_new_value(f: dataclasses.Field, value):
    """A valid value of field ``f`` other than ``value``, and its command-line words."""
    from siattn.options import choices_of

    hints = field_types(TrainConfig) | field_types(type(PRESETS["cpu-tiny"].model))
    tp, _ = unwrap_optional(hints[f.name])
    choices = choices_of(f)
    if choices is not None:
        new = next(c for c in choices if c != value)
        return new, [new]
    if tp is bool:
        return not value, []
    if tp is int:
        new = 1 if f.name == "n_kv_head" else (value or 1) * 2
        return new, [str(new)]
    if tp is float:
        new = 0.5 if value != 0.5 else 0.25
        return new, [str(new)]
    if tp is str:
        return "elsewhere", ["elsewhere"]
    if f.name == "adam_betas":
        return (0.8, 0.9), ["0.8", "0.9"]
    if f.name == "eval_multipliers":
        return (1, 2, 8), ["1,2,8"]
    raise AssertionError(f"no test value for {f.name}: {tp}")


def test_every_train_config_field_is_settable_from_the_command_line():
    base = PRESETS["cpu-tiny"]
    names = flags(TrainConfig)
    fields = all_fields(TrainConfig)
    train_names = {f.name for f in dataclasses.fields(TrainConfig)}
    assert len(fields) == len(dataclasses.fields(TrainConfig)) - 1 + len(dataclasses.fields(type(base.model)))
    for f in fields:
        if f.metadata.get("derived"):
            continue
        owner = base if hasattr(base, f.name) else base.model
        current = getattr(owner, f.name)
        new, words = _a_new_value(f, current)
        if isinstance(new, bool):
            words = [names[f.name] if new else "--no-" + names[f.name][2:]]
        else:
            words = [names[f.name], *words]
        if f.name == "n_head":  # 4 heads need as many key/value heads or a divisor
            words += ["--n-kv-head", "2"]
        config = parse(["train", "--preset", "cpu-tiny", *words]).config
        got = getattr(config if f.name in train_names else config.model, f.name)
        assert got == new, f"{words}: {f.name} = {got!r}, expected {new!r}"


def test_a_bad_value_in_the_python_api_raises_the_command_lines_message(capsys):
    from siattn.errors import UsageError

    with pytest.raises(UsageError, match="steps must be >= 1, got 0"):
        TrainConfig(steps=0)
    assert main(["train", "--steps", "0", "--print-config"]) == 2
    assert "--steps must be >= 1, got 0" in capsys.readouterr().err


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_no_command_writes_into_results_unless_told(command, capsys):
    """Default output folders are under runs/ (ignored): tracked results/ change only through --out."""
    config = leaf_parsers()[command]._siattn_command.config
    for f in all_fields(config):
        default = f.default if f.default is not dataclasses.MISSING else None
        assert not str(default or "").startswith("results"), f"{command}: --{f.name} defaults to {default!r}"
