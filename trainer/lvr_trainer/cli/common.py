"""Helpers shared by the CLI modules."""

from __future__ import annotations


def load_trainer_config(path: str):
    """The trainer config at `path`, or a CLIError naming the file and every bad key."""
    from lvr_trainer.cli import CLIError
    from lvr_trainer.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as err:
        raise CLIError(str(err)) from None


def run_reporting(fn, *errors: type[Exception]):
    """`fn()`, with the listed user-facing errors turned into a CLIError (message, no traceback)."""
    from lvr_trainer.cli import CLIError

    try:
        return fn()
    except errors as err:
        raise CLIError(str(err)) from None
