"""The one step loop shared by teacher training and every distillation round.

:func:`run_steps` takes a compiled step, a state and a batch iterator and
steps from ``start + 1`` to ``num_steps``, logging scalars (the step's metrics
plus steps/s and ETA) one log interval late so the host never waits on the
device, saving checkpoints every ``checkpoint_every`` steps and at the end,
and calling ``every(step, state)`` on a period (sample grids). Teacher
training and distillation differ only in the step's loss, its extra
arguments and what goes into the checkpoint's metadata.

Reliability:

- Every step's metrics are checked before a checkpoint is written, so a
  checkpoint never holds the result of a NaN or inf. A non-finite loss or
  gradient norm stops the run (:class:`~pdist.errors.NonFiniteError`, naming
  the step and the last good checkpoint), unless the step skips such updates
  (``config.train.skip_nonfinite``): then they are counted, the count is
  saved with each checkpoint, and the run stops once it exceeds the limit.
- SIGTERM / SIGINT (:mod:`pdist.preemption`): the loop saves a checkpoint at
  the current step, waits for every save and raises
  :class:`~pdist.errors.Preempted`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import time
from collections.abc import Callable, Iterator

import jax
import numpy as np
from clu import metric_writers, periodic_actions

from pdist import parallel, preemption
from pdist.checkpoint import Checkpointer
from pdist.errors import NonFiniteError, Preempted

SKIPPED = "skipped"  # the step's metric: 1.0 where a non-finite update was skipped


@dataclasses.dataclass
class LoopResult:
    state: object
    last_scalars: dict  # the newest logged scalars ({} if nothing was logged)
    seconds: float  # wall time of this call's steps


def run_steps(
    step_fn: Callable,
    state,
    batches: Iterator[dict],
    key: jax.Array,
    *,
    mesh,
    start: int,
    num_steps: int,
    writer: metric_writers.MetricWriter,
    ckpt: Checkpointer,
    metadata: Callable[[int, dict, float], dict],
    log_every: int,
    checkpoint_every: int,
    step_args: tuple = (),
    every: tuple[int, Callable] | None = None,
    resumed: dict | None = None,
    skip_limit: int = 0,
) -> LoopResult:
    """Steps ``state`` from ``start`` to ``num_steps``; ``metadata(step, last_scalars, seconds)`` is saved with it.

    ``resumed``: the metadata of the checkpoint ``state`` came from (its count
    of skipped updates and its metrics not yet logged carry on, so a resumed
    run logs what the uninterrupted one would have); ``skip_limit``: how many skipped updates
    to allow before stopping.
    """
    progress = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer, every_steps=log_every)
    health = _Health(ckpt, start, (resumed or {}).get("skipped_updates", 0), skip_limit)
    # Metrics of steps not logged yet; a checkpoint keeps them, so a resumed run logs the same windows.
    pending, scalars = list((resumed or {}).get("unlogged", [])), {}
    began = last_time = time.time()
    last_step = start

    def save(step):
        pending[:] = jax.device_get(pending)
        health.check(pending, step)
        extra = {"skipped_updates": health.skipped, "unlogged": [{k: float(v) for k, v in m.items()} for m in pending]}
        ckpt.save(step, state, {**metadata(step, scalars, time.time() - began), **extra})
        health.saved(step)

    for step in range(start + 1, num_steps + 1):
        state, metrics = step_fn(state, parallel.global_batch(next(batches), mesh), key, *step_args)
        pending.append(metrics)
        progress(step)
        final = step == num_steps
        at_log = step % log_every == 0 or final
        if at_log:
            # Fetch every step but the newest, which is still running (all of them at the end).
            ready, pending = (pending, []) if final else (pending[:-1], pending[-1:])
            if ready:
                now = time.time()
                steps_per_sec = (step - last_step) / max(now - last_time, 1e-9)
                last_time, last_step = now, step
                scalars = health.check(ready, step - len(pending))
                scalars["steps_per_sec"] = steps_per_sec
                scalars["eta_hours"] = (num_steps - step) / max(steps_per_sec, 1e-9) / 3600.0
                writer.write_scalars(step, scalars)
        if step % checkpoint_every == 0 or final:
            save(step)
        if every is not None and every[0] and step % every[0] == 0 and not final:
            try:
                every[1](step, state)
            except Preempted:
                pass  # the sampler stopped between batches; the checkpoint below keeps the step
        signum = preemption.stop_signal(sync=at_log)
        if signum:
            if health.last_saved != step:
                save(step)
            ckpt.wait()
            raise Preempted(
                f"Stopped by {signal.Signals(signum).name} at step {step}; its checkpoint is in "
                f"{os.path.join(ckpt.directory, str(step))}: rerun the same command to resume.",
                signum,
            )
    return LoopResult(state, scalars, time.time() - began)


class _Health:
    """Checks fetched metrics step by step; remembers the last checkpoint written and the skipped updates."""

    def __init__(self, ckpt: Checkpointer, start: int, skipped: int, limit: int):
        self.ckpt, self.last_saved, self.skipped, self.limit = ckpt, start or None, skipped, limit
        self.checked = start  # steps up to here have been checked

    def saved(self, step: int) -> None:
        self.last_saved = step

    def check(self, metrics: list, last_step: int) -> dict[str, float]:
        """Checks the metrics of steps ``last_step - len(metrics) + 1 .. last_step``; returns their means.

        Steps already checked (a checkpoint fetches them early) are not counted twice.
        """
        fetched = jax.device_get(metrics)
        first = last_step - len(fetched) + 1
        kept = []
        for step, m in enumerate(fetched, start=first):
            if m.get(SKIPPED, 0.0) > 0:
                if step > self.checked:
                    self.skipped += 1
                    if self.skipped > self.limit:
                        self._stop(step, m, f"and {self.skipped} updates were skipped (limit {self.limit})")
                continue
            bad = {k: float(v) for k, v in m.items() if not math.isfinite(float(v))}
            if bad:
                self._stop(step, m, "")
            kept.append(m)
        self.checked = max(self.checked, last_step)
        out = {
            k: float(np.mean(np.asarray([float(m[k]) for m in kept], np.float64)))
            for k in (kept[0] if kept else {})
            if k != SKIPPED
        }
        if self.limit:
            out["skipped_updates"] = float(self.skipped)
        return out

    def _stop(self, step: int, metrics: dict, extra: str) -> None:
        bad = ", ".join(f"{k}={float(v)}" for k, v in sorted(metrics.items()) if not math.isfinite(float(v)))
        if self.last_saved is None:
            good = "no checkpoint was written yet"
        else:
            self.ckpt.wait()
            good = f"the last good checkpoint is {os.path.join(self.ckpt.directory, str(self.last_saved))}"
        raise NonFiniteError(
            f"Non-finite values at step {step} ({bad or 'all finite'}{', ' if bad and extra else ''}{extra}); "
            f"{good}: lower config.optim.learning_rate or set config.optim.grad_clip (or "
            "config.train.skip_nonfinite=N to skip up to N such updates), then rerun to resume from it."
        )
