"""The ``siattn`` command line: a thin dispatcher over the recipes in ``siattn.recipes``.

Each recipe module defines ``HELP`` (one line) and either ``COMMAND`` (a :class:`siattn.recipes.arguments.Command`:
its options are the fields of a typed config, see :mod:`siattn.recipes.arguments`) or ``SUBCOMMANDS`` (name ->
``Command``). :func:`parse` turns an argv into the command and its config; :func:`main` runs it.

Errors take one path: a malformed option is reported after its usage line (exit 2); a ``ValueError``
(:class:`siattn.errors.UsageError`, the data and checkpoint errors, a typed config's checks) prints one line
``siattn CMD: error: MESSAGE`` (exit 2); an ``OSError`` or :class:`siattn.errors.WorkError` prints one line
too (exit 1: the work failed); anything else is a bug and keeps its traceback, with a line asking to report it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from siattn import __version__

COMMANDS: dict[str, str] = {
    "data": "siattn.recipes.data",
    "train": "siattn.recipes.train",
    "eval": "siattn.recipes.evaluate",
    "needle": "siattn.recipes.needle",
    "analyze": "siattn.recipes.analyze",
    "reproduce": "siattn.recipes.reproduce",
    "generate": "siattn.recipes.generate",
    "bench": "siattn.recipes.bench",
    "hf-train": "siattn.recipes.hf_train",
}
OPTIONAL_COMMANDS = {"hf-train": ("transformers", "pip install 'siattn[hf]'")}
"""Commands left out of the command line when the package of their extra is not installed: (package, install)."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows an option's default unless it is None/False or its help already mentions one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("default" in text.lower() or any(action.default is v for v in (None, False, argparse.SUPPRESS))
                or not action.option_strings):
            return text
        return text + " (default: %(default)s)"


def _add(sub: argparse._SubParsersAction, name: str, help_: str, spec: Any) -> None:
    """Add command ``name``: a jsonargparse parser for a ``Command``, a group of subcommands for a dict."""
    from siattn.recipes.arguments import ConfigParser

    if isinstance(spec, dict):
        sub._parser_class = argparse.ArgumentParser
        group = sub.add_parser(name, help=help_, description=help_)
        inner = group.add_subparsers(dest=f"{name}_command", metavar="ACTION", required=True)
        for child, command in spec.items():
            _add(inner, child, command.help, command)
        return
    sub._parser_class = ConfigParser
    parser = sub.add_parser(name, help=help_, description=spec.description or help_, epilog=spec.epilog,
                            formatter_class=HelpFormatter, print_config=None)
    spec.add_arguments(parser)
    parser._siattn_command = spec


def _caused_by_package(err: BaseException | None, package: str) -> bool:
    """Whether an import error, or one it was raised from, is ``package`` missing or too old to import from."""
    while err is not None:
        if isinstance(err, ImportError) and (err.name or "").split(".")[0] == package:
            return True
        err = err.__cause__ or err.__context__
    return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="siattn",
        description="Scale-invariant attention: train a GPT with any positional method, evaluate length "
        "generalisation, benchmark the attention kernels.",
    )
    parser.add_argument("--version", action="version", version=f"siattn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parser._siattn_missing = {}  # optional commands left out: name -> what to install
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            package, install = OPTIONAL_COMMANDS.get(name, (None, None))
            if package is not None and _caused_by_package(err, package):
                text = _one_line(err)
                parser._siattn_missing[name] = text if install in text else f"{text} ({install})"
            elif getattr(err, "name", None) != module_name:
                raise
            continue
        _add(sub, name, module.HELP, getattr(module, "SUBCOMMANDS", None) or module.COMMAND)
    return parser


@dataclass
class Parsed:
    """What an argv asks for: the command's words (``["analyze", "theory"]``), its Command, its config and the
    parsed arguments (options outside the config included)."""

    words: list[str]
    command: Any
    config: Any
    args: argparse.Namespace


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def _find(argv: Sequence[str],
          parser: argparse.ArgumentParser) -> tuple[argparse.ArgumentParser, list[str], list[str]]:
    """The parser of the (sub)command that ``argv`` names, its words, and the arguments after them."""
    node, words, rest = parser, [], list(argv)
    while rest and rest[0] in _subcommands(node):
        node = _subcommands(node)[rest[0]]
        words.append(rest.pop(0))
    return node, words, rest


def parse(argv: Sequence[str], parser: argparse.ArgumentParser | None = None) -> Parsed | None:
    """The command and config that ``siattn ARGV`` runs; None when it names no command (argparse handles
    ``--help``, ``--version`` and unknown commands by exiting). A bad value raises UsageError naming its flag."""
    parser = parser or build_parser()
    node, words, rest = _find(argv, parser)
    command = getattr(node, "_siattn_command", None)
    if command is None:
        parser.parse_args(list(argv))  # exits: help, version, a missing or unknown (sub)command
        return None
    args = node.parse_args(rest)
    return Parsed(words, command, command.make_config(args), args)


BUG_REPORT = "this is a bug in siattn: please report it with the command and the traceback above"


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, OSError) and err.filename is not None and str(err.filename) not in text:
        text = f"{err.filename}: {text}"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``siattn ARGV``; returns the exit code (0 done, 1 failed work, 2 usage error, 130/143 signals)."""
    from siattn.errors import WorkError

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] in parser._siattn_missing:
        print(f"siattn {argv[0]}: error: {parser._siattn_missing[argv[0]]}", file=sys.stderr)
        return 2
    node, words, _ = _find(argv, parser)
    prog = " ".join(["siattn", *words])
    command = getattr(node, "_siattn_command", None)
    report = sys.stdout if command is not None and command.report_on_stdout else sys.stderr
    try:
        parsed = parse(argv, parser)
        if parsed is None:
            parser.print_help()
            return 0
        if parsed.args.print_config:
            print(parsed.command.config_file(parsed.config, parsed.args), end="")
            return 0
        return int(parsed.command.run(parsed.config, parsed.args) or 0)
    except ValueError as err:  # UsageError, DataError, CheckpointError, the typed configs' checks
        print(f"{prog}: error: {_one_line(err)}", file=report)
        return 2
    except (OSError, WorkError) as err:
        print(f"{prog}: error: {_one_line(err)}", file=report)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print(f"{prog}: {BUG_REPORT}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
