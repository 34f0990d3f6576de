"""The phase runner: one resumable run of the train step, for teacher training and every distillation round.

A :class:`Phase` says what to train (a loss, an init function, an optimizer, a
step count, a data stream, the step's extra arguments such as a frozen
teacher) and where (a folder). :func:`run` resumes from the folder's newest
checkpoint, or does nothing when the phase is complete, compiles the step
once, and steps from there to ``num_steps``:

- scalars (the step's metrics plus steps/s and ETA) are logged one log
  interval late, so the host never waits on the device, to TensorBoard in the
  phase's folder and the console (clu; process 0 writes);
- checkpoints every ``config.train.checkpoint_every`` steps and at the end,
  asynchronous, the newest ``keep_checkpoints`` kept, each with its metadata:
  the phase's config, the step, pdist's version, the phase's own entries
  (``Phase.metadata``), the newest logged loss, the wall time spent, and what
  a resumed run needs to log the same windows (the metrics not logged yet and
  the count of skipped updates);
- ``snapshot(step, state, writer)`` every ``snapshot_every`` steps and at the
  last one (sample grids).

Reliability:

- Every step's metrics are checked before a checkpoint is written, so a
  checkpoint never holds the result of a NaN or inf. A non-finite loss or
  gradient norm stops the run (:class:`~pdist.errors.NonFiniteError`, naming
  the step and the last good checkpoint), unless the step skips such updates
  (``config.train.skip_nonfinite``): then they are counted, the count is
  saved with each checkpoint, and the run stops once it exceeds the limit.
- SIGTERM / SIGINT (:mod:`pdist.runtime.preemption`): the loop saves a
  checkpoint at the current step, waits for every save and raises
  :class:`~pdist.errors.Preempted`.
- A bad dataset or a corrupt checkpoint fails before anything is written or
  compiled.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import jax
import ml_collections
import numpy as np

from pdist.errors import NonFiniteError, Preempted
from pdist.importance import LossAwareSampler
from pdist.losses import Loss
from pdist.optim import Optimizer
from pdist.runtime import console, files, layout, preemption
from pdist.runtime import mesh as mesh_lib
from pdist.runtime.checkpoint import Checkpointer
from pdist.runtime.step import StepMetrics, TrainState, abstract_state, compile_step, create_state, make_train_step

if TYPE_CHECKING:  # clu's writers import TensorFlow: imported where a phase runs, so a job's checks run without it
    from clu import metric_writers

SKIPPED = "skipped"  # key of the skipped-update flag in a checkpoint's unlogged metrics


@dataclasses.dataclass(frozen=True)
class Phase:
    """What to train, and where."""

    name: str  # for the log: "teacher", "round 2 (4 -> 2 steps)"
    directory: str  # checkpoints in <directory>/checkpoints, TensorBoard events in <directory>
    config: ml_collections.ConfigDict  # saved with every checkpoint; its train section sets the loop
    loss: Loss
    init_fn: Callable[[], TrainState]  # pure: jitted to create the state, eval_shape'd to restore it
    optimizer: Optimizer
    num_steps: int
    batches: Callable[[int], Iterator[dict]]  # first step -> this process's batches from that step on
    key: jax.Array  # every step folds its number into it
    step_args: tuple = ()  # passed to the step after (state, batch, key, the schedule's numbers): the teacher
    importance: LossAwareSampler | None = None
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)  # more entries for every checkpoint
    snapshot: Callable[[int, TrainState, metric_writers.MetricWriter], None] | None = None  # sample grids
    snapshot_every: int = 0  # steps between snapshots (0: only the last step's)
    # A hashable name of the program the step is (its loss, the optimizer's form, config.train's settings):
    # phases that give equal names on one mesh share one compiled step, in this process (None: compile afresh).
    program: Any = None


@dataclasses.dataclass
class Result:
    state: TrainState
    metadata: dict  # of the final checkpoint
    trained: bool = True  # False: the phase was complete already (nothing ran)


def run(phase: Phase, mesh) -> Result:
    """Resumes ``phase`` from its newest checkpoint (or starts it) and runs it to ``num_steps``."""
    from clu import metric_writers  # TensorFlow with it: here, not at import (see TYPE_CHECKING above)

    from pdist.runtime import events

    train = phase.config.train
    ckpt = Checkpointer(layout.checkpoints(phase.directory), keep=train.keep_checkpoints, writer=True)
    try:
        state, resumed = ckpt.resume(
            abstract_state(phase.init_fn, mesh_lib.replicated(mesh)), fallback=train.fallback_checkpoint
        )
        start = resumed.get("step", 0)
        changed = config_changes(resumed.get("config"), phase.config) if start else ""
        if start >= phase.num_steps:
            if changed:
                console.say(
                    f"{phase.name}: complete at step {start}; the given config differs from the one it ran with in "
                    f"{changed} (nothing was trained; a new run needs another workdir)"
                )
            else:
                console.say(f"{phase.name}: complete at step {start} (nothing to train)")
            return Result(state, resumed, trained=False)
        batches = phase.batches(start)  # a dataset that is not there fails here, before anything is written
        if start:
            console.say(f"{phase.name}: resuming at step {start} from {layout.step_folder(ckpt.directory, start)}")
            if changed:
                console.say(
                    f"{phase.name}: the given config differs from the checkpoint's in {changed}; the run continues "
                    "with the new values (a schedule over num_steps changes shape)"
                )
        else:
            state = create_state(phase.init_fn, mesh)
        files.makedirs(phase.directory)
        step_fn = _compiled_step(phase, mesh)
        writer = events.writer(phase.directory, just_logging=jax.process_index() > 0)
        if start == 0:
            writer.write_hparams(_flat(phase.config.to_dict()))
        # where the model came from (an imported checkpoint's "source") stays with every checkpoint trained from it
        carried = {k: resumed[k] for k in CARRIED if k in resumed}
        base = {"config": json.loads(phase.config.to_json()), **carried, **phase.metadata}
        shown = console.Progress(phase.name, phase.num_steps, done=start)
        try:
            with metric_writers.ensure_flushes(writer):
                state, metadata = _loop(phase, step_fn, state, batches, mesh, start, writer, ckpt, base, resumed, shown)
        finally:
            shown.close()
        ckpt.wait()
    finally:
        ckpt.close()
    return Result(state, metadata)


CARRIED = ("source",)  # metadata a resumed run keeps from the checkpoint it resumed
_STEPS: dict = {}  # compiled steps by (Phase.program, mesh, loss code), newest last
_MAX_STEPS = 16


def _compiled_step(phase: Phase, mesh) -> Callable:
    """The phase's compiled step: jitted here, or the one an earlier phase of the same program on this mesh
    compiled (tracing and lowering the step take seconds on a CPU; a resumed or repeated run skips them)."""
    train = phase.config.train
    step = make_train_step(
        phase.loss,
        phase.optimizer,
        ema_decay=train.ema_decay,
        importance=phase.importance,
        accum_steps=train.grad_accum_steps,
        skip_nonfinite=train.skip_nonfinite > 0,
    )
    if phase.program is None:
        return compile_step(step, mesh)
    key = (phase.program, mesh, getattr(phase.loss.fn, "__code__", phase.loss.fn))
    if key not in _STEPS:
        while len(_STEPS) >= _MAX_STEPS:
            _STEPS.pop(next(iter(_STEPS)))
        _STEPS[key] = compile_step(step, mesh)
    return _STEPS[key]


def _loop(phase: Phase, step_fn, state, batches, mesh, start, writer, ckpt, base, resumed, shown):
    """Steps ``state`` from ``start`` to ``phase.num_steps``; returns it and its final checkpoint's metadata."""
    train, num_steps = phase.config.train, phase.num_steps
    rates = mesh_lib.put_replicated(phase.optimizer.args, mesh)  # placed once, not copied at every step
    health = _Health(ckpt, start, resumed.get("skipped_updates", 0), train.skip_nonfinite)
    # Metrics of steps not logged yet; a checkpoint keeps them, so a resumed run logs the same windows.
    pending = [_from_saved(m) for m in resumed.get("unlogged", [])]
    scalars, before = {}, resumed.get("seconds", 0.0)
    began = last_time = time.time()
    last_step = start

    def metadata(step):
        return {**base, "step": step, "loss": scalars.get("loss"), "seconds": before + time.time() - began}

    def save(step):
        pending[:] = jax.device_get(pending)
        health.check(pending, step)
        unlogged = [{**{k: float(v) for k, v in m.scalars.items()}, SKIPPED: float(m.skipped)} for m in pending]
        ckpt.save(step, state, {**metadata(step), "skipped_updates": health.skipped, "unlogged": unlogged})
        health.saved(step)

    for step in range(start + 1, num_steps + 1):
        state, metrics = step_fn(state, mesh_lib.global_batch(next(batches), mesh), phase.key, rates, *phase.step_args)
        pending.append(metrics)
        shown.update(step)
        final = step == num_steps
        at_log = step % train.log_every == 0 or final
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
                if "loss" in scalars:
                    shown.update(step, loss=scalars["loss"])
        if step % train.checkpoint_every == 0 or final:
            save(step)
        if phase.snapshot is not None and (final or phase.snapshot_every and step % phase.snapshot_every == 0):
            try:
                phase.snapshot(step, state, writer)
            except Preempted:
                pass  # the sampler stopped between batches; the checkpoint below keeps the step
        signum = preemption.stop_signal(sync=at_log)
        if signum:
            if health.last_saved != step:
                save(step)
            ckpt.wait()
            raise Preempted(
                f"Stopped by {signal.Signals(signum).name} at step {step}; its checkpoint is in "
                f"{layout.step_folder(ckpt.directory, step)}: rerun the same command to resume.",
                signum,
            )
    return state, {**metadata(num_steps), "skipped_updates": health.skipped}


def _from_saved(metrics: dict) -> StepMetrics:
    """A checkpoint's unlogged metrics (floats; the skipped flag among them) as the step reported them."""
    return StepMetrics({k: v for k, v in metrics.items() if k != SKIPPED}, metrics.get(SKIPPED, 0.0))


def config_changes(saved: dict | None, config: ml_collections.ConfigDict) -> str:
    """``key: old -> new`` for every setting of ``config`` that differs from the ``saved`` one (a checkpoint's
    metadata), comma-separated; empty when they agree or nothing was saved."""
    if not saved:
        return ""
    old, new = _flat(saved), _flat(json.loads(config.to_json()))
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)} -> {new.get(k)}" for k in keys)


def _flat(tree: dict, prefix: str = "") -> dict:
    """A nested config dict as TensorBoard hyperparameters (``a.b`` keys, plain values)."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


class _Health:
    """Checks fetched metrics step by step; remembers the last checkpoint written and the skipped updates."""

    def __init__(self, ckpt: Checkpointer, start: int, skipped: int, limit: int):
        self.ckpt, self.last_saved, self.skipped, self.limit = ckpt, start or None, skipped, limit
        self.checked = start  # steps up to here have been checked

    def saved(self, step: int) -> None:
        self.last_saved = step

    def check(self, metrics: list[StepMetrics], last_step: int) -> dict[str, float]:
        """Checks the metrics of steps ``last_step - len(metrics) + 1 .. last_step``; returns their means.

        Steps already checked (a checkpoint fetches them early) are not counted twice.
        """
        fetched = jax.device_get(metrics)
        first = last_step - len(fetched) + 1
        kept = []
        for step, m in enumerate(fetched, start=first):
            if float(m.skipped) > 0:
                if step > self.checked:
                    self.skipped += 1
                    if self.skipped > self.limit:
                        self._stop(step, m.scalars, f"and {self.skipped} updates were skipped (limit {self.limit})")
                continue
            if not all(math.isfinite(float(v)) for v in m.scalars.values()):
                self._stop(step, m.scalars, "")
            kept.append(m.scalars)
        self.checked = max(self.checked, last_step)
        out = {
            k: float(np.mean(np.asarray([float(m[k]) for m in kept], np.float64))) for k in (kept[0] if kept else {})
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
            good = f"the last good checkpoint is {layout.step_folder(self.ckpt.directory, self.last_saved)}"
        raise NonFiniteError(
            f"Non-finite values at step {step} ({bad or 'all finite'}{', ' if bad and extra else ''}{extra}); "
            f"{good}: lower config.optim.learning_rate or set config.optim.grad_clip (or "
            "config.train.skip_nonfinite=N to skip up to N such updates), then rerun to resume from it."
        )
