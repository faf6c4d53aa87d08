"""What the commands share: parsers generated from config dataclasses, and one path from
bad input to one error line with exit code 2.

Every command's flags are the fields of its config dataclass
(:class:`experiments.training.TrainConfig`, :class:`experiments.sweep.SweepConfig`, ...):
:func:`add_dataclass_arguments` makes ``--name`` of every field, typed by its
annotation and documented by its ``help`` metadata, and :func:`dataclass_from_args`
reads them back. So a flag means the same in every command that has it.
:func:`run_command` turns a :class:`ConfigError` raised anywhere below into
``prog: error: message`` and exit code 2.

Example:
  >>> @dataclasses.dataclass(frozen=True)
  ... class Config:
  ...     steps: int | None = dataclasses.field(default=None, metadata={"help": "updates"})
  ...     test_envs: tuple[int, ...] = (0,)
  >>> parser = ArgumentParser(prog="demo")
  >>> add_dataclass_arguments(parser, Config)
  >>> dataclass_from_args(Config, parser.parse_args(["--test_envs", "1", "2"]))
  Config(steps=None, test_envs=(1, 2))
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, NoReturn


class ConfigError(ValueError):
    """Bad input (arguments, data_dir, output_dir): reported in one line, exit code 2."""


class ArgumentParser(argparse.ArgumentParser):
    """An ``argparse`` parser that reports a bad flag in one line (no usage block),
    with exit code 2, like every other input error of the commands."""

    def error(self, message: str) -> NoReturn:
        """Prints ``prog: error: message`` to stderr and exits with code 2."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def json_object(text: str) -> dict[str, Any]:
    """An ``argparse`` type: a JSON object (the ``--hparams`` flag)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _optional(annotation: Any) -> tuple[Any, bool]:
    """``(T, True)`` for ``T | None``, else ``(annotation, False)``."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        members = [member for member in typing.get_args(annotation) if member is not type(None)]
        if len(members) == 1:
            return members[0], True
    return annotation, False


def _flag_options(annotation: Any) -> dict[str, Any]:
    """The ``add_argument`` options of a field of type ``annotation``."""
    annotation, _ = _optional(annotation)
    origin = typing.get_origin(annotation)
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is tuple:
        return {"type": typing.get_args(annotation)[0], "nargs": "+"}
    if origin is dict or annotation is dict:
        return {"type": json_object}
    if annotation in (int, float, str):
        return {"type": annotation}
    raise TypeError(f"no command-line flag for a field of type {annotation!r}")


def add_dataclass_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    exclude: Sequence[str] = (),
    defaults: dict[str, Any] | None = None,
) -> None:
    """Adds ``--<field>`` for every field of dataclass ``cls`` (but ``exclude``).

    A field whose type is itself a dataclass adds its own fields (but those in its
    ``exclude`` metadata) as an argument group titled by its ``help``. The flag's
    default is the field's (or ``defaults[name]``); a field without a default is
    required. ``metadata`` may hold ``help``, ``metavar`` and ``flags`` (more spellings
    of the flag).
    """
    hints = typing.get_type_hints(cls)
    defaults = defaults or {}
    for field in dataclasses.fields(cls):
        if field.name in exclude or not field.init:
            continue
        annotation = hints[field.name]
        help_text = field.metadata.get("help")
        if dataclasses.is_dataclass(annotation):
            group = parser.add_argument_group(help_text) if isinstance(
                parser, argparse.ArgumentParser) else parser
            inner_exclude = field.metadata.get("exclude", ())
            add_dataclass_arguments(group, annotation, exclude=inner_exclude, defaults=defaults)
            continue
        options = _flag_options(annotation)
        if field.name in defaults:
            options["default"] = defaults[field.name]
        elif field.default is not dataclasses.MISSING:
            options["default"] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            options["default"] = field.default_factory()
        else:
            options["required"] = True
        if isinstance(options.get("default"), tuple):
            options["default"] = list(options["default"])
        if help_text:
            options["help"] = help_text
        if "metavar" in field.metadata:
            options["metavar"] = field.metadata["metavar"]
        flags = [f"--{field.name}", *field.metadata.get("flags", ())]
        parser.add_argument(*flags, dest=field.name, **options)


def dataclass_from_args(
    cls: type, args: argparse.Namespace, *, exclude: Sequence[str] = (), **values: Any
) -> Any:
    """An instance of dataclass ``cls`` from parsed flags (and ``values``, which win); the
    fields in ``exclude`` (a nested field's ``exclude`` metadata) keep their defaults."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in values or field.name in exclude or not field.init:
            continue
        annotation = hints[field.name]
        if dataclasses.is_dataclass(annotation):
            values[field.name] = dataclass_from_args(
                annotation, args, exclude=field.metadata.get("exclude", ()))
        elif hasattr(args, field.name):
            value = getattr(args, field.name)
            if typing.get_origin(_optional(annotation)[0]) is tuple and value is not None:
                value = tuple(value)
            values[field.name] = value
    return cls(**values)


def deprecated(old: str, new: str) -> type[argparse.Action]:
    """An ``argparse`` action for a renamed flag: warns on stderr, then stores as ``new``."""

    class Deprecated(argparse._StoreAction):
        def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                     values: Any, option_string: str | None = None) -> None:
            print(f"{parser.prog}: warning: {old} is deprecated; use {new}", file=sys.stderr)
            super().__call__(parser, namespace, values, option_string)

    return Deprecated


def run_command(
    parser: argparse.ArgumentParser,
    body: Callable[[argparse.Namespace], int],
    argv: Sequence[str] | None = None,
) -> int:
    """Parses ``argv`` and runs ``body``; a :class:`ConfigError` becomes one line on stderr
    and exit code 2 (argparse's own errors too, see :class:`ArgumentParser`)."""
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        return body(args)
    except ConfigError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2

