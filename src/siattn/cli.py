"""The ``siattn`` command line: a thin dispatcher over the recipes in ``siattn.recipes``.

Each recipe module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``main(args) -> int``.

Errors take one path: argparse reports a malformed option after its usage line (exit 2); a ``ValueError``
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
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows an option's default unless it is None/False or its help already mentions one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="siattn",
        description="Scale-invariant attention: train a GPT with any positional method, evaluate length "
        "generalisation, benchmark the attention kernels.",
    )
    parser.add_argument("--version", action="version", version=f"siattn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name != module_name:
                raise
            continue
        p = sub.add_parser(name, help=module.HELP, description=module.HELP,
                           formatter_class=HelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_recipe=module)
    return parser


BUG_REPORT = "this is a bug in siattn: please report it with the command and the traceback above"


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, OSError) and err.filename is not None and str(err.filename) not in text:
        text = f"{err.filename}: {text}"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``siattn ARGV``; returns the exit code (0 done, 1 failed work, 2 usage error, 130/143 signals)."""
    from siattn.errors import WorkError

    parser = build_parser()
    args = parser.parse_args(argv)  # argparse's usage errors exit with 2 after the usage line
    if args.command is None:
        parser.print_help()
        return 0
    prog = f"siattn {args.command}"
    try:
        return int(args._recipe.main(args) or 0)
    except ValueError as err:  # UsageError, DataError, CheckpointError, the typed configs' checks
        print(f"{prog}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except (OSError, WorkError) as err:
        print(f"{prog}: error: {_one_line(err)}", file=sys.stderr)
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
