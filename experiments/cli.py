"""What the command-line entry points share: one-line errors with exit code 2."""

from __future__ import annotations

import argparse
import json
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
