"""The command line derived from the typed configs: one ``--flag`` per field declared with
:func:`siattn.options.option`, a ``--config FILE`` and a ``--print-config``.

A field ``micro_batch_size`` becomes ``--micro-batch-size`` (a nested config's fields keep their own names:
``TrainConfig.model.n_layer`` is ``--n-layer``); its help is the field's help, its converter follows the type
(``int``, ``float``, ``bool`` as ``--x/--no-x``, a tuple as several words or, with ``sep``, one comma-separated
word), and its bounds and choices are checked by the dataclass itself, so that the Python API and the command
line give the same one-line error (the command line names the flag: ``--steps must be >= 1, got 0``). A
derived field is listed in ``--help`` and refused when given.

The parsers are jsonargparse's (an ``argparse.ArgumentParser``): ``--config`` reads a YAML or JSON file whose
keys are the field names (nested configs nested), and flags after it override it; ``--print-config`` prints the
resolved config in that form, so that ``--print-config`` then ``--config`` gives the same config back.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jsonargparse import ActionConfigFile
from jsonargparse import ArgumentParser as _JsonArgParser

from siattn.options import choices_of, documented_fields, field_types, item_type, unwrap_optional


class ConfigParser(_JsonArgParser):
    """jsonargparse's parser, reporting every error on one line (a YAML error spans several)."""

    def error(self, message: str, *args: Any, **kwargs: Any) -> Any:
        return super().error(" ".join(str(message).split()), *args, **kwargs)


class BadValue(argparse.ArgumentTypeError, ValueError):
    """A value that does not convert; argparse and jsonargparse (for config-file values) both report it."""


def integer(value: Any) -> int:
    """An integer written 100, 1e6 or 1_000_000 (config files give ints as they are)."""
    if isinstance(value, bool):
        raise BadValue(f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    try:
        number_ = float(value) if isinstance(value, float) or any(c in str(value).lower() for c in ".e") \
            else int(value)
        if number_ != int(number_):
            raise ValueError(value)
    except (TypeError, ValueError, OverflowError):
        raise BadValue(f"expected an integer, got {value!r}") from None
    return int(number_)


def number(value: Any) -> float:
    """A float (bounds are checked by the config)."""
    if isinstance(value, bool):
        raise BadValue(f"expected a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise BadValue(f"expected a number, got {value!r}") from None


def _refuse(source: str) -> Callable[[Any], Any]:
    def refuse(value: Any) -> Any:
        raise BadValue(f"derived from {source}; it cannot be set")

    refuse.__name__ = "derived"
    return refuse


def _separated(convert: Callable[[Any], Any], sep: str) -> Callable[[Any], tuple]:
    def parse(value: Any) -> tuple:
        if isinstance(value, list | tuple):
            return tuple(convert(v) for v in value)
        parts = [p for p in str(value).split(sep) if p.strip()]
        if not parts:
            raise BadValue(f"expected values separated by {sep!r}, got {value!r}")
        return tuple(convert(p.strip()) for p in parts)

    parse.__name__ = convert.__name__
    return parse


def _typed(parse: Callable[[str], Any]) -> Callable[[Any], Any]:
    """A field's own text converter, passing values that a config file already typed through."""
    def convert(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return parse(value)
        except (TypeError, ValueError) as err:
            raise BadValue(str(err)) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


def flag_of(f: dataclasses.Field) -> str:
    """The command-line spelling of field ``f``."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def flags(cls: type) -> dict[str, str]:
    """Field name -> flag for ``cls`` and the configs nested in it (nested names are not prefixed)."""
    out: dict[str, str] = {}
    hints = field_types(cls)
    for f in documented_fields(cls):
        tp, _ = unwrap_optional(hints[f.name])
        if dataclasses.is_dataclass(tp):
            out.update(flags(tp))
        else:
            out[f.name] = f.name if f.metadata.get("positional") else flag_of(f)
    return out


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, *, defaults: bool = True,
                         prefix: str = "") -> None:
    """One argument per field of ``cls`` (recursing into nested configs, dest ``model.n_layer``). ``defaults``:
    the dataclass's defaults (else None: "not given", for a caller that fills in a preset)."""
    hints = field_types(cls)
    doc = " ".join((cls.__doc__ or "").split("\n\n")[0].split())
    group = parser.add_argument_group(cls.__name__, doc or None)
    for f in documented_fields(cls):
        tp, optional = unwrap_optional(hints[f.name])
        if dataclasses.is_dataclass(tp):
            add_config_arguments(parser, tp, defaults=defaults, prefix=f"{prefix}{f.name}.")
            continue
        md = f.metadata
        default = None
        if defaults and f.default is not dataclasses.MISSING:
            default = f.default
        elif defaults and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        kw: dict[str, Any] = {"help": md["help"], "default": list(default) if isinstance(default, tuple) else default}
        if choices_of(f) is None and tp is not bool and not md.get("positional"):
            kw["metavar"] = md.get("metavar") or f.name.upper()
        if md.get("derived"):
            kw.update(type=_refuse(md["derived"]), default=None, metavar="(derived)",
                      help=f"{md['help']} (derived from {md['derived']}; not settable)")
        elif tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            item = item_type(tp)
            base = item if item is not None else tp
            convert: Callable[[Any], Any] | None
            convert = _typed(md["parse"]) if md.get("parse") else {int: integer, float: number}.get(base)
            choices = choices_of(f)
            if choices is not None:
                kw["choices"] = choices
            if item is not None and md.get("parse") is None:
                if md.get("sep"):
                    convert = _separated(convert or str, md["sep"])
                else:
                    args = [a for a in tp.__args__ if a is not Ellipsis]
                    kw["nargs"] = len(args) if Ellipsis not in tp.__args__ and len(args) > 1 else "+"
            if convert is not None:
                kw["type"] = convert
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and not optional:
                kw["help"] += " (required)"  # checked by the config, which names the flag
        if md.get("positional"):  # jsonargparse takes no default for a positional: None means the field's
            kw.pop("default", None)
            if f.default is not dataclasses.MISSING:
                kw["nargs"] = "?"
            group.add_argument(f"{prefix}{f.name}", **kw)
        else:
            group.add_argument(flag_of(f), dest=f"{prefix}{f.name}", **kw)


def config_values(cls: type, given: dict[str, Any]) -> dict[str, Any]:
    """The values of ``cls``'s settable fields in the parsed (nested) dict ``given``; tuples as tuples."""
    hints = field_types(cls)
    out: dict[str, Any] = {}
    for f in documented_fields(cls):
        tp, _ = unwrap_optional(hints[f.name])
        if f.metadata.get("derived") or f.name not in given:
            continue
        value = given[f.name]
        if value is None and f.metadata.get("positional"):
            continue
        if dataclasses.is_dataclass(tp):
            out[f.name] = config_values(tp, value or {})
        elif isinstance(value, list) and typing_origin_is_tuple(tp):
            out[f.name] = tuple(value)
        else:
            out[f.name] = value
    return out


def typing_origin_is_tuple(tp: Any) -> bool:
    return getattr(tp, "__origin__", None) is tuple


def settable_dict(config: Any) -> dict[str, Any]:
    """The config's settable fields as a plain (nested) dict, the form ``--config`` reads."""
    hints = field_types(type(config))
    out: dict[str, Any] = {}
    for f in documented_fields(type(config)):
        if f.metadata.get("derived"):
            continue
        value = getattr(config, f.name)
        tp, _ = unwrap_optional(hints[f.name])
        if dataclasses.is_dataclass(tp) and value is not None:
            out[f.name] = settable_dict(value)
        elif isinstance(value, tuple):
            out[f.name] = list(value)
        else:
            out[f.name] = value
    return out


def name_the_flag(err: ValueError, cls: type) -> ValueError:
    """``err`` with its leading field name replaced by the flag that sets it (``steps must ...`` ->
    ``--steps must ...``); other errors unchanged."""
    text = str(err)
    name = text.split(" ", 1)[0]
    flag = flags(cls).get(name)
    if flag is None or flag == name:
        return err
    return type(err)(flag + text[len(name):])


@dataclass(frozen=True)
class Command:
    """A (sub)command: its options are the fields of ``config``; ``run(config, args)`` does the work.

    ``options`` adds arguments that are not part of the config (train's ``--preset``, ``--resume``);
    ``resolve(values, args)`` makes the config from the given values (default ``config(**values)``);
    ``file_header(args)`` gives keys that ``--print-config`` writes before the config's (train's preset);
    ``defaults=False`` leaves every flag None when not given (the preset fills it in); ``report_on_stdout``:
    the command's own checks are printed on stdout (``siattn analyze``)."""

    help: str
    config: type
    run: Callable[[Any, argparse.Namespace], int]
    description: str | None = None
    epilog: str | None = None
    options: Callable[[argparse.ArgumentParser], None] | None = None
    resolve: Callable[[dict[str, Any], argparse.Namespace], Any] | None = None
    file_header: Callable[[argparse.Namespace], dict[str, Any]] | None = None
    defaults: bool = True
    report_on_stdout: bool = False

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--config", action=ActionConfigFile,
                            help="read options from a YAML or JSON file (keys: the field names below, nested "
                                 "configs nested); flags after it override it")
        parser.add_argument("--print-config", action="store_true",
                            help="print the resolved options as a config file for --config and exit")
        if self.options is not None:
            self.options(parser)
        add_config_arguments(parser, self.config, defaults=self.defaults)

    def make_config(self, args: argparse.Namespace) -> Any:
        """The config from parsed arguments; a bad value raises UsageError naming its flag."""
        given = args.as_dict() if hasattr(args, "as_dict") else vars(args)
        values = config_values(self.config, given)
        try:
            return self.resolve(values, args) if self.resolve is not None else self.config(**values)
        except ValueError as err:
            raise name_the_flag(err, self.config) from None

    def config_file(self, config: Any, args: argparse.Namespace) -> str:
        """``config`` as the YAML text that ``--config`` reads back."""
        import yaml

        header = self.file_header(args) if self.file_header is not None else {}
        return yaml.safe_dump({**header, **settable_dict(config)}, sort_keys=False, allow_unicode=True)
