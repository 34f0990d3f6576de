"""SIGTERM and SIGINT as a request to stop at the next safe point, not at once.

``python -m pdist.main`` runs its job inside :func:`guard`. The first signal
only sets a flag (and puts the default handlers back, so a second one stops
the process at once, like ``kill -9``); the step loop then saves a checkpoint
at the current step, waits for it, and raises :class:`pdist.errors.Preempted`.
Sampling loops stop between batches with :func:`raise_if_stopped`.

In a multi-process run every process must stop at the same step, so the
processes agree on the flag with a collective, only at points where they all
call :func:`stop_signal` with ``sync=True`` (the loop's log steps).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading

import jax
import numpy as np

from pdist.errors import Preempted

SIGNALS = (signal.SIGTERM, signal.SIGINT)
_received = 0


def _handler(signum, frame) -> None:
    global _received
    _received = signum
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if jax.process_index() == 0:  # one unbuffered write: a handler may interrupt a print in progress
        name = signal.Signals(signum).name
        os.write(2, f"\n{name}: saving a checkpoint at the current step, then stopping; send it again to stop at "
                    "once without saving.\n".encode())  # fmt: skip


@contextlib.contextmanager
def guard():
    """Turns SIGTERM and SIGINT into :func:`stop_signal` while the block runs (main thread only)."""
    global _received
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    for s in SIGNALS:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _received = 0


def stop_signal(sync: bool = True) -> int:
    """The signal that asked this run to stop, or 0.

    In a multi-process run this is a collective: with ``sync=True`` it returns
    the flag of any process, and with ``sync=False`` it returns 0 (the
    processes would otherwise stop at different steps).
    """
    if jax.process_count() == 1:
        return _received
    if not sync:
        return 0
    from jax.experimental import multihost_utils

    return int(np.max(multihost_utils.process_allgather(np.int32(_received))))


def raise_if_stopped(what: str, sync: bool = False) -> None:
    """Raises Preempted if a signal arrived (see :func:`stop_signal` for ``sync``)."""
    signum = stop_signal(sync)
    if signum:
        raise Preempted(
            f"Stopped by {signal.Signals(signum).name} during {what}; rerun the same command to resume.", signum
        )
