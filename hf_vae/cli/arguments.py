"""Command-line options from dataclasses, for every `hf-vae` command: one vocabulary, one error style, fast help.

Like `transformers.HfArgumentParser` (a field becomes `--name`, its type, default, choices and help come from the
field), built on argparse alone so that `hf-vae <command> --help` imports neither torch nor transformers. What it adds:
abbreviations are refused (`--num_train_epoch` is not `--num_train_epochs`), an unknown option is named with the
nearest known one, old option names stay as aliases, and every usage error is a `UsageError` (exit code 2), which the
dispatcher prints as one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import sys
import types
import typing
from collections.abc import Sequence
from typing import Any, Literal


class UsageError(ValueError):
    """A command line that cannot be parsed or an option value that is not allowed; exit code 2."""


def string_to_bool(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    if value.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if value.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        raise UsageError(message[0].upper() + message[1:] if message else message)


def _field_type(hint: Any) -> tuple[Any, bool]:
    """(the non-None type, whether None is allowed)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return (options[0] if len(options) == 1 else hint), len(options) < len(typing.get_args(hint))
    return hint, False


def _add_field(parser: argparse.ArgumentParser, item: dataclasses.Field, hint: Any, aliases: Sequence[str]) -> None:
    kind, optional = _field_type(hint)
    names = [f"--{item.name}", *aliases]
    help_text = item.metadata.get("help", "")
    options: dict[str, Any] = {"dest": item.name, "help": help_text}
    has_default = item.default is not dataclasses.MISSING or item.default_factory is not dataclasses.MISSING
    if has_default:
        default = item.default if item.default is not dataclasses.MISSING else item.default_factory()
        options["default"] = default
        if default not in (None, False, "", []) and "default" not in help_text.lower():
            options["help"] = f"{help_text} (default: {default})".strip()
    else:
        options["required"] = True
    if typing.get_origin(kind) is Literal:
        options["choices"] = list(typing.get_args(kind))
        options["type"] = type(options["choices"][0])
    elif kind is bool:
        options.update(type=string_to_bool, nargs="?", const=True, metavar="true|false")
    elif typing.get_origin(kind) is list:
        options.update(type=typing.get_args(kind)[0], nargs="+")
    elif kind in (int, float, str):
        options["type"] = kind
    else:
        raise TypeError(f"{item.name}: unsupported option type {hint!r}")
    del optional  # None is what an option left out gives; it is never typed on the command line
    parser.add_argument(*names, **options)


def build_parser(
    groups: Sequence[type],
    prog: str,
    description: str | None = None,
    aliases: dict[str, Sequence[str]] | None = None,
) -> argparse.ArgumentParser:
    """An argparse parser with one option per field of each dataclass in `groups`; `aliases` maps a field name to
    extra option strings (old names)."""
    parser = _Parser(prog=prog, description=description, allow_abbrev=False)
    parser.dataclass_types = list(groups)  # read by the arguments-file checks of `hf-vae train FILE`
    for group in groups:
        hints = typing.get_type_hints(group)
        for item in dataclasses.fields(group):
            if item.init:
                _add_field(parser, item, hints[item.name], (aliases or {}).get(item.name, ()))
    return parser


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> tuple[list[Any], argparse.Namespace]:
    """Parse `argv` into one instance per dataclass of the parser (and the namespace, for extra positionals).
    Unknown options are named with the nearest known one; a value the dataclass refuses is a `UsageError`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    namespace, unknown = parser.parse_known_args(argv)
    if unknown:
        raise UsageError(_unknown(parser, unknown))
    instances = []
    for group in parser.dataclass_types:
        names = {item.name for item in dataclasses.fields(group) if item.init}
        try:
            instances.append(group(**{name: getattr(namespace, name) for name in names}))
        except ValueError as error:
            raise UsageError(str(error)) from None
    return instances, namespace


def _unknown(parser: argparse.ArgumentParser, unknown: list[str]) -> str:
    known = [option for action in parser._actions for option in action.option_strings]
    flags = [item.split("=")[0] for item in unknown if item.startswith("-")]
    if not flags:
        return f"Unexpected argument(s) {unknown}. `{parser.prog} --help` lists what it takes."
    parts = []
    for flag in flags:
        close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
        parts.append(f"unknown option {flag}" + (f" (did you mean {close[0]}?)" if close else ""))
    return "; ".join(parts).capitalize() + f". `{parser.prog} --help` lists the options."


__all__ = ["UsageError", "build_parser", "parse", "string_to_bool"]
