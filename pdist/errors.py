"""The exceptions that end a run with one sentence instead of a traceback.

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
