"""Optimizers and learning-rate schedules from ``config.optim`` (optax).

Warm-up is linear from 0 to ``learning_rate`` over ``warmup_steps``; then the
rate follows ``schedule`` over the remaining steps:

* ``constant``;
* ``linear``: down to 0 at the last step (also the per-round distillation schedule);
* ``cosine``: half a cosine down to 0;
* ``rex``: ``lr (1 - z) / (1 - z / 2)`` with ``z`` the fraction of decay done
  (Chen et al. 2022, "REX: Revisiting Budgeted Training with an Improved Schedule").

Gradients are clipped by global norm (of the gradient of the mean loss over
the global batch, i.e. the averaged gradient) before Adam(W).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import ml_collections
import optax

SCHEDULES = ("constant", "linear", "cosine", "rex")
OPTIMIZERS = ("adam", "adamw")


class Optimizer(NamedTuple):
    tx: optax.GradientTransformation
    learning_rate: optax.Schedule  # the rate ``tx`` applies at each step (logged)


def _rex(lr: float, decay_steps: int) -> optax.Schedule:
    def schedule(step):
        z = jnp.clip(step / max(decay_steps, 1), 0.0, 1.0)
        return lr * (1.0 - z) / (1.0 - 0.5 * z)

    return schedule


def learning_rate(optim: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """``config.optim``'s learning rate at each step of a run of ``total_steps`` steps."""
    lr, warmup = optim.learning_rate, optim.warmup_steps
    decay_steps = max(total_steps - warmup, 1)
    after = {
        "constant": lambda: optax.constant_schedule(lr),
        "linear": lambda: optax.linear_schedule(lr, 0.0, decay_steps),
        "cosine": lambda: optax.cosine_decay_schedule(lr, decay_steps),
        "rex": lambda: _rex(lr, decay_steps),
    }[optim.schedule]()
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), after], [warmup])


def optimizer(optim: ml_collections.ConfigDict, total_steps: int) -> Optimizer:
    """Adam(W) with ``config.optim``'s schedule over ``total_steps`` steps, after global-norm clipping."""
    schedule = learning_rate(optim, total_steps)
    if optim.optimizer == "adamw":
        adam = optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=optim.weight_decay)
    else:
        adam = optax.adam(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps)
    if optim.grad_clip > 0:
        return Optimizer(optax.chain(optax.clip_by_global_norm(optim.grad_clip), adam), schedule)
    return Optimizer(adam, schedule)
