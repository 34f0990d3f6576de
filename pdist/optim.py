"""Optimizers and learning-rate schedules from ``config.optim`` (optax).

Warm-up is linear from 0 to ``learning_rate`` over ``warmup_steps``; then the
rate follows ``schedule`` over the remaining steps:

* ``constant``;
* ``linear``: down to 0 at the last step (also the per-round distillation schedule);
* ``cosine``: half a cosine down to 0;
* ``rex``: ``lr (1 - z) / (1 - z / 2)`` with ``z`` the fraction of decay done
  (Chen et al. 2022, "REX: Revisiting Budgeted Training with an Improved Schedule");
* ``refined``: refined from the gradient norms a previous run logged
  (``optim.refine_from``, :mod:`pdist.refine`); it makes its own warm-up, and
  ``warmup_steps`` is not used.

A schedule's numbers (peak rate, warm-up and decay lengths) are data, not
constants of the compiled step: :class:`Optimizer` holds the schedule's form
(static) and its numbers (``args``, arrays the train step takes as an
argument), so runs that differ only in length or rate share one program. The
formulas are optax's (``linear_schedule``, ``cosine_decay_schedule``,
``join_schedules``) operation for operation, with the numbers traced.

Gradients are clipped by global norm (of the gradient of the mean loss over
the global batch, i.e. the averaged gradient) before Adam(W), or plain SGD
(``optimizer="sgd"``: the update is the rate times the gradient; ``b1``,
``b2``, ``eps`` and ``weight_decay`` are unused).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

SCHEDULES = ("constant", "linear", "cosine", "rex", "refined")
OPTIMIZERS = ("adam", "adamw", "radam", "sgd")  # radam: consistency models' CIFAR-10 runs (Song et al. 2023)

Array = jax.Array


def _warmup(args: dict, step) -> Array:
    """optax.linear_schedule(0, peak, warmup)."""
    count = jnp.clip(step, 0, args["warmup"])
    return (0.0 - args["peak"]) * (1 - count / jnp.maximum(args["warmup"], 1.0)) + args["peak"]


def _after(kind: str, args: dict, step) -> Array:
    """The rate ``step`` steps after the warm-up.

    ``count * (1 / decay)``: what XLA makes of optax's ``count / decay`` when ``decay`` is a
    constant, so the rates equal the former constants' to the bit (checked at every step of runs
    of 50 to 4001 steps with warm-ups of 0 to 1000).
    """
    peak, decay = args["peak"], args["decay"]
    if kind == "constant":
        return peak * jnp.ones_like(step, jnp.float32)
    if kind == "linear":  # optax.linear_schedule(peak, 0, decay)
        count = jnp.clip(step, 0, decay)
        return (peak - 0.0) * (1 - count * (1.0 / decay)) + 0.0
    if kind == "cosine":  # optax.cosine_decay_schedule(peak, decay)
        count = jnp.minimum(step, decay)
        return peak * ((1 - 0.0) * (0.5 * (1 + jnp.cos(jnp.pi * count * (1.0 / decay)))) + 0.0)
    z = jnp.clip(step / decay, 0.0, 1.0)  # rex
    return peak * (1.0 - z) / (1.0 - 0.5 * z)


def _rate(kind: str, args: dict, step) -> Array:
    """optax.join_schedules([warm-up, after], [warmup]) at ``step``; a refined schedule's table entry."""
    if kind == "refined":
        table = args["table"]
        return table[jnp.clip(step, 0, table.shape[0] - 1)]
    return jnp.where(step < args["warmup"], _warmup(args, step), _after(kind, args, step - args["warmup"]))


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """Adam(W) or SGD whose learning rate at each step is ``rate(args, step)``.

    The train step receives ``args`` as an argument and builds its
    transformation with :meth:`with_args` from the traced values. ``args`` is
    computed on first use (a refined schedule reads its source's logs then):
    restoring a state only needs ``tx.init``.
    """

    make: Callable[[optax.Schedule], optax.GradientTransformation]  # the transformation, given its schedule
    rate: Callable[[Any, Array], Array]  # (args, step) -> learning rate; the schedule's form
    numbers: Callable[[], Any]  # () -> the schedule's numbers: a pytree of arrays

    @functools.cached_property
    def args(self) -> Any:
        return self.numbers()

    def with_args(self, args) -> optax.GradientTransformation:
        return self.make(lambda step: self.rate(args, step))

    @property
    def tx(self) -> optax.GradientTransformation:
        """The transformation with this optimizer's own numbers (``init`` does not read them)."""
        return self.make(lambda step: self.rate(self.args, step))

    def learning_rate(self, step) -> Array:
        """The rate the transformation applies at ``step`` (logged)."""
        return self.rate(self.args, step)


def schedule_args(optim: ml_collections.ConfigDict, total_steps: int, table: Callable | None = None) -> dict:
    """The numbers of ``config.optim``'s schedule over a run of ``total_steps`` steps (``table()``: a refined
    schedule's multipliers at counts 0..total_steps)."""
    if optim.schedule == "refined":
        if table is None:
            raise ValueError("A refined schedule needs its table of multipliers; build it with pdist.build.optimizer.")
        return {"table": jnp.asarray(optim.learning_rate * np.asarray(table()), jnp.float32)}
    warmup = optim.warmup_steps
    return {
        "peak": jnp.asarray(optim.learning_rate, jnp.float32),
        "warmup": jnp.asarray(warmup, jnp.float32),
        "decay": jnp.asarray(max(total_steps - warmup, 1), jnp.float32),
    }


def optimizer(optim: ml_collections.ConfigDict, total_steps: int, table: Callable | None = None) -> Optimizer:
    """Adam(W) or SGD with ``config.optim``'s schedule over ``total_steps`` steps, after global-norm clipping.

    ``table() -> multipliers`` [total_steps + 1]: a refined schedule's, called on first use of the numbers
    (:func:`pdist.build.optimizer` reads them from the source run's logs), so restoring a state reads no log.
    """
    kind, name, clip = optim.schedule, optim.optimizer, optim.grad_clip
    moments = dict(b1=optim.b1, b2=optim.b2, eps=optim.eps)
    if name == "adamw":
        moments["weight_decay"] = optim.weight_decay

    def make(schedule: optax.Schedule) -> optax.GradientTransformation:
        if name == "sgd":
            tx = optax.sgd(schedule)
        else:
            tx = {"adamw": optax.adamw, "radam": optax.radam}.get(name, optax.adam)(schedule, **moments)
        return optax.chain(optax.clip_by_global_norm(clip), tx) if clip > 0 else tx

    settings = ml_collections.ConfigDict(optim.to_dict())  # as it is now: the numbers are computed later
    numbers = functools.partial(schedule_args, settings, total_steps, table)
    return Optimizer(make, functools.partial(_rate, kind), numbers)
