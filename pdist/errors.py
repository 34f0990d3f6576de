"""The exceptions that end a run with one sentence instead of a traceback, and the config checks that raise them.

:class:`InputError` is bad input (a config value, a dataset, a checkpoint, a
teacher) found before anything is compiled or written; ``python -m
pdist.main`` prints its message and exits with status 2. :class:`Preempted`
(a signal, after the checkpoint at the current step) and
:class:`NonFiniteError` (a NaN or inf, naming the last good checkpoint) stop a
run that was going; they exit with 128 + the signal number and 1.
"""

from __future__ import annotations


class InputError(Exception):
    """Bad input, said in one sentence (what is wrong and how to fix it)."""


class ConfigError(InputError, ValueError):
    """A config value that is invalid or contradicts another."""


class Preempted(Exception):
    """SIGTERM or SIGINT arrived; the run saved what it had and stopped."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class NonFiniteError(FloatingPointError):
    """The loss or gradient norm became NaN or inf."""


def check_one_of(value, allowed, name: str) -> None:
    """``config.<name>`` must be one of ``allowed``."""
    if value not in allowed:
        raise ConfigError(f"config.{name}={value!r} is not valid; choose one of {sorted(allowed)}.")


def check_positive(value, name: str) -> None:
    """``config.<name>`` must be a positive integer."""
    if not (isinstance(value, int) and value > 0):
        raise ConfigError(f"config.{name}={value!r} must be a positive integer.")
