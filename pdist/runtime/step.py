"""The train state and the one train step used by teacher training and distillation.

``step(state, batch, key, rates, *loss_args) -> (state, StepMetrics)`` where
``rates`` are the learning-rate schedule's numbers (:class:`pdist.optim.Optimizer`'s
``args``: data, so a run's length and peak rate are not compiled in) and the
loss is any :class:`pdist.losses.Loss` ``(params, batch, key, *loss_args) -> (loss, LossAux)``
(distillation passes the frozen teacher parameters as ``loss_args``). The
step's RNG is ``fold_in(key, state.step)`` (:mod:`pdist.rng`), never stored.
Compiled once with :func:`compile_step` over the data mesh, donating the state.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from pdist.importance import LossAwareSampler
from pdist.losses import Loss, LossAux
from pdist.optim import Optimizer
from pdist.runtime import mesh as mesh_lib

Array = jax.Array


@flax.struct.dataclass
class TrainState:
    step: Array  # int32 scalar: optimizer steps taken
    params: Any
    ema_params: Any
    opt_state: Any
    importance: Any = None  # ImportanceState when t is importance-sampled


@flax.struct.dataclass
class TargetState(TrainState):
    """The state of a loss with a ``target_decay`` (consistency distillation): one more tree, the target
    network. A subclass, so that every other state keeps the layout its checkpoints were written with."""

    target: Any = None


class StepMetrics(NamedTuple):
    """What one step reports: scalars to log, and whether its update was skipped."""

    scalars: dict[str, Array]  # the loss's metrics, the gradient norm, the learning rate
    skipped: Array  # float32 scalar: 1.0 when a non-finite update was skipped (0.0 unless skipping is on)


def init_state(
    params, tx: optax.GradientTransformation, importance: LossAwareSampler | None = None, target: bool = False
) -> TrainState:
    """The state before the first update; ``target``: a :class:`TargetState`, whose target network starts as a
    copy of ``params``, for a loss with a ``target_decay``."""
    fields = dict(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=jax.tree.map(jnp.copy, params),
        opt_state=tx.init(params),
        importance=None if importance is None else importance.init(),
    )
    if target:
        return TargetState(**fields, target=jax.tree.map(jnp.copy, params))
    return TrainState(**fields)


def ema_update(ema, params, decay: float, count: Array):
    """The debiased exponential moving average after ``count`` updates (``optax.ema(decay, debias=True)``,
    written as an update of the average itself so that the state holds it):
    ``ema + w (params - ema)``, ``w = (1 - decay) / (1 - decay**count)``. After T updates it equals
    ``sum_t (1 - decay) decay**(T - t) p_t / (1 - decay**T)``: the initialization has no weight (w = 1 at the
    first update). The plain average, ``decay ema + (1 - decay) params`` from the initial parameters, keeps
    ``decay**T`` of them: 14% after 2,000 steps at 0.999, which cost the digits teacher most of its quality
    (docs/recipes.md); the two agree once ``decay**T`` is negligible."""
    if decay == 0.0:
        return params
    # 1 - decay**count as -expm1(count log decay): accurate in float32 when decay**count is close to 1.
    w = (1.0 - decay) / -jnp.expm1(count.astype(jnp.float32) * math.log(decay))
    return jax.tree.map(lambda e, p: e + (w * (p - e)).astype(e.dtype), ema, params)


def make_train_step(
    loss_fn: Loss,
    optimizer: Optimizer,
    *,
    ema_decay: float,
    importance: LossAwareSampler | None = None,
    accum_steps: int = 1,
    skip_nonfinite: bool = False,
) -> Callable:
    """The step. With ``importance``, t is drawn from (and updates) ``state.importance``.

    ``skip_nonfinite``: an update whose loss or gradient norm is NaN or inf
    leaves the state as it was (but for the step count, so the next step
    takes the next batch) and reports ``skipped = 1``.

    ``accum_steps > 1`` averages the gradients of that many micro-batches in a
    ``lax.scan`` before one update: the batch's per-example randomness is drawn
    once (``loss_fn.draw``), and micro-batch ``j`` holds examples ``j, j + k,
    j + 2k, ...`` so that each device keeps its own rows. Up to float rounding
    (and dropout masks), the update equals that of the undivided batch; only
    one micro-batch's activations are alive at a time.
    """
    grad_fn = jax.value_and_grad(loss_fn.fn, has_aux=True)
    target_decay = loss_fn.target_decay

    def gradients(params, batch: dict, key: Array, loss_args: tuple):
        if accum_steps == 1:
            (_, aux), grads = grad_fn(params, batch, key, *loss_args)
            return grads, aux
        k = accum_steps
        batch = loss_fn.draw(batch, key, *loss_args)
        micro = jax.tree.map(lambda a: a.reshape(a.shape[0] // k, k, *a.shape[1:]).swapaxes(0, 1), batch)

        def accumulate(total, xs):
            mb, j = xs
            (_, aux), grads = grad_fn(params, mb, jax.random.fold_in(key, j), *loss_args)
            return jax.tree.map(jnp.add, total, grads), aux

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        total, aux = jax.lax.scan(accumulate, zeros, (micro, jnp.arange(k)))
        grads = jax.tree.map(lambda g, p: (g / k).astype(p.dtype), total, params)
        metrics = {name: jnp.mean(v, axis=0) for name, v in aux.metrics.items()}
        # Micro-batch j held examples j, j + k, ...: put each per-example term back in its row.
        terms = None if aux.vlb_terms is None else aux.vlb_terms.swapaxes(0, 1).reshape(-1)
        return grads, LossAux(metrics, terms)

    def step(state: TrainState, batch: dict, key: Array, rates, *loss_args):
        key = jax.random.fold_in(key, state.step)
        k_t, k_loss = jax.random.split(key)
        if importance is not None:
            levels, t_weight = importance.sample(state.importance, k_t, batch["image"].shape[0])
            batch = {**batch, "t": levels / importance.num_timesteps, "t_weight": t_weight}
        target = getattr(state, "target", None)
        if target_decay is not None:
            if target is None:
                raise ValueError("This loss trains against a target network: create the state with target=True.")
            loss_args = (*loss_args, target)
        grads, aux = gradients(state.params, batch, k_loss, loss_args)
        updates, opt_state = optimizer.with_args(rates).update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = ema_update(state.ema_params, params, ema_decay, state.step + 1)
        if target_decay is not None:
            target = jax.tree.map(lambda a, p: target_decay * a + (1.0 - target_decay) * p, target, params)
        imp = state.importance
        if importance is not None:
            if aux.vlb_terms is None:
                raise ValueError("Importance-sampled timesteps need a loss that returns per-example L_vlb terms.")
            imp = importance.update(imp, levels, aux.vlb_terms)
        metrics = dict(aux.metrics)
        metrics["grad_norm"] = optax.tree.norm(grads)  # l2, before clipping
        metrics["grad_l1"] = optax.tree.norm(grads, ord=1)  # what a refined schedule for Adam weighs (pdist.refine)
        metrics["learning_rate"] = optimizer.rate(rates, state.step)
        new_state = state.replace(params=params, ema_params=ema, opt_state=opt_state, importance=imp)
        if target_decay is not None:
            new_state = new_state.replace(target=target)
        skipped = jnp.zeros((), jnp.float32)
        if skip_nonfinite:
            ok = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
            new_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state, state)
            skipped = 1.0 - ok.astype(jnp.float32)
        return new_state.replace(step=state.step + 1), StepMetrics(metrics, skipped)

    return step


def compile_step(step: Callable, mesh: Mesh) -> Callable:
    """``jax.jit`` with a replicated state (donated) and metrics; batches arrive sharded."""
    repl = mesh_lib.replicated(mesh)
    return jax.jit(step, out_shardings=(repl, repl), donate_argnums=(0,))


def create_state(init_fn: Callable, mesh: Mesh) -> TrainState:
    """Runs ``init_fn() -> TrainState`` compiled to place the state replicated on ``mesh``."""
    return jax.jit(init_fn, out_shardings=mesh_lib.replicated(mesh))()


def abstract_state(init_fn: Callable, sharding) -> TrainState:
    """Shapes and dtypes of ``init_fn()``'s state with ``sharding`` on every leaf, without computing it."""
    shapes = init_fn.shapes() if hasattr(init_fn, "shapes") else jax.eval_shape(init_fn)  # build.state_init's
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)
