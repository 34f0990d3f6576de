"""The one step loop shared by teacher training and every distillation round.

:func:`run_steps` takes a compiled step, a state and a batch iterator and
steps from ``start + 1`` to ``num_steps``, logging scalars (the step's metrics
plus steps/s and ETA) one log interval late so the host never waits on the
device, stopping on a non-finite loss, saving checkpoints every
``checkpoint_every`` steps and at the end, and calling ``every(step, state)``
on a period (sample grids). Teacher training and distillation differ only in
the step's loss, its extra arguments and what goes into the checkpoint's
metadata.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator

import jax
import numpy as np
from clu import metric_writers, periodic_actions

from pdist import parallel
from pdist.checkpoint import Checkpointer


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
) -> LoopResult:
    """Steps ``state`` from ``start`` to ``num_steps``; ``metadata(step, last_scalars, seconds)`` is saved with it."""
    progress = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer, every_steps=log_every)
    pending, scalars = [], {}
    began = last_time = time.time()
    last_step = start
    for step in range(start + 1, num_steps + 1):
        state, metrics = step_fn(state, parallel.global_batch(next(batches), mesh), key, *step_args)
        pending.append(metrics)
        progress(step)
        final = step == num_steps
        if step % log_every == 0 or final:
            # Fetch every step but the newest, which is still running (all of them at the end).
            ready, pending = (pending, []) if final else (pending[:-1], pending[-1:])
            if ready:
                now = time.time()
                steps_per_sec = (step - last_step) / max(now - last_time, 1e-9)
                last_time, last_step = now, step
                scalars = mean_metrics(ready)
                check_finite(scalars, step)
                scalars["steps_per_sec"] = steps_per_sec
                scalars["eta_hours"] = (num_steps - step) / max(steps_per_sec, 1e-9) / 3600.0
                writer.write_scalars(step, scalars)
        if step % checkpoint_every == 0 or final:
            ckpt.save(step, state, metadata(step, scalars, time.time() - began))
        if every is not None and every[0] and step % every[0] == 0 and not final:
            every[1](step, state)
    return LoopResult(state, scalars, time.time() - began)


def mean_metrics(metrics: list[dict]) -> dict[str, float]:
    fetched = jax.device_get(metrics)
    return {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}


def check_finite(scalars: dict[str, float], step: int) -> None:
    bad = sorted(k for k, v in scalars.items() if not math.isfinite(v))
    if bad:
        raise FloatingPointError(
            f"{bad} became non-finite before step {step}; the last checkpoint is intact: lower "
            "config.optim.learning_rate or set config.optim.grad_clip, then rerun to resume from it."
        )
