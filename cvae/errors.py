"""One base class for every error a user can cause, so the entry points can tell them from bugs.

``cvae`` (and the shims ``train_cli.py``, ``demo_app.py``) print a ``CvaeError`` as one line and
exit with its ``exit_code``; any other exception is a bug and keeps its traceback. Each class
keeps a second, built-in base so ``except ValueError`` in older callers still catches it.
"""
from __future__ import annotations


class CvaeError(Exception):
    """A mistake in the input or the environment; the message says what is wrong and where."""

    label = "error"
    exit_code = 2


class ConfigError(CvaeError, ValueError):
    """A setting out of range or not one of its choices; the message names the flag."""


class DataError(CvaeError, ValueError):
    """Bad or missing data. The message names the file and what is wrong with it."""


class CheckpointError(CvaeError, ValueError):
    """A checkpoint that cannot be loaded or saved; the message names the file and why."""


class RunError(CvaeError, RuntimeError):
    """A run folder that cannot be used as asked (already a run, busy, nothing to resume)."""


class TrainingDiverged(CvaeError, RuntimeError):
    """The loss or the weights became NaN or infinite; nothing diverged was saved."""


class Interrupted(CvaeError):
    """SIGINT or SIGTERM stopped training after saving ``last/``; exits 128 + the signal's number."""

    label = "interrupted"

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class InputError(CvaeError, ValueError):
    """A value typed into the app (or sent through its API) that cannot be used."""
