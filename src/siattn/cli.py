"""The ``siattn`` command line: a thin dispatcher over the recipes in ``siattn.recipes``.

Each recipe module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``main(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(args._recipe.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
