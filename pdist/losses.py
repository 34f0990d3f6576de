"""Training losses: pure ``(params, batch, key, *args) -> (loss, LossAux)`` functions, typed as :class:`Loss`.

Built by factories over an apply function
``apply_fn(params, z, t, label, key) -> raw output`` (``t`` [B] in [0, 1];
``label`` [B] or None; ``key`` for dropout, or None for a deterministic call).
``batch`` holds ``image`` (x in [-1, 1], [B, ...]), optionally ``label``, and
optionally precomputed ``t``, ``noise`` and ``t_weight`` (e.g. from
:class:`pdist.importance.LossAwareSampler`).

A :class:`Loss` is the function and its ``draw(batch, key) -> batch``, which
adds the per-example randomness (``t`` and ``noise``) the function would draw
from ``key`` itself; a function given a batch that already holds them draws
nothing. The train step uses ``draw`` to draw a whole batch's randomness once
and split the batch into micro-batches (gradient accumulation) that see
exactly the draws of the undivided batch. ``key`` also seeds dropout, which
does differ per micro-batch. What a loss hands the train step besides the
loss is a :class:`LossAux`: scalars to log, and the per-example L_vlb terms
the importance sampler learns from.

Distillation losses live with their methods (:mod:`pdist.distillation`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from pdist import diffusion, guidance, vlb
from pdist.diffusion import Prediction
from pdist.schedules import Schedule

Array = jax.Array

LOSS_TYPES = ("mse", "hybrid", "vlb")


class LossAux(NamedTuple):
    """What a loss returns beside the loss."""

    metrics: dict[str, Array]  # scalars, averaged over the batch, to log
    vlb_terms: Array | None = None  # [B] per-example L_vlb estimates, for the importance sampler


@dataclasses.dataclass(frozen=True)
class Loss:
    """``loss(params, batch, key, *args) -> (loss, LossAux)`` and its ``draw(batch, key, *args) -> batch``.

    ``args`` are what the train step passes through (a distillation loss's frozen teacher parameters and the
    student's number of steps). With ``target_decay`` (consistency distillation's target network), the train
    step keeps an exponential moving average of the parameters at that rate in its state
    (``theta- <- decay theta- + (1 - decay) theta`` after every update, from the initial parameters) and
    passes it as the last of ``args``.
    """

    fn: Callable[..., tuple[Array, LossAux]]
    draw: Callable[..., dict]
    target_decay: float | None = None

    def __call__(self, params, batch: dict, key: Array, *args) -> tuple[Array, LossAux]:
        return self.fn(params, batch, key, *args)


def mean_flat(a: Array) -> Array:
    return jnp.mean(a.reshape(a.shape[0], -1), axis=1)


def uniform_times(key: Array, n: int, num_timesteps: int | None, t_min: float = 0.0) -> Array:
    """t ~ U[t_min, 1], or t = i / T with i ~ U{1..T}."""
    if num_timesteps is None:
        u = jax.random.uniform(key, (n,))
        return u if t_min == 0 else t_min + (1.0 - t_min) * u
    return jax.random.randint(key, (n,), 1, num_timesteps + 1).astype(jnp.float32) / num_timesteps


def drawer(
    num_timesteps: int | None,
    t_min: float = 0.0,
    label_dropout: float = 0.0,
    num_classes: int = 0,
    guidance_prior: guidance.WeightPrior | None = None,
):
    """``draw(batch, key)``: ``t`` (from ``num_timesteps`` and ``t_min`` as in :func:`uniform_times`) and
    Gaussian ``noise`` for every example, unless the batch holds them; with ``label_dropout``, each ``label``
    replaced by the null class with that probability (:func:`pdist.guidance.drop_labels`) and the mask of
    the replaced ones added as ``label_dropped``: a batch that holds it was drawn already; with
    ``guidance_prior`` (guided distillation), a guidance weight ``guidance`` per example drawn from it
    unless the batch holds them. The key's third part is left for the model."""

    def draw(batch: dict, key: Array, *loss_args) -> dict:
        k_t, k_eps, _ = jax.random.split(key, 3)
        x = batch["image"]
        t = batch["t"] if "t" in batch else uniform_times(k_t, x.shape[0], num_timesteps, t_min)
        noise = batch["noise"] if "noise" in batch else jax.random.normal(k_eps, x.shape, x.dtype)
        out = {**batch, "t": jnp.asarray(t, jnp.float32), "noise": noise}
        if label_dropout > 0 and "label_dropped" not in batch:
            label = guidance.drop_labels(batch["label"], jax.random.fold_in(key, 3), label_dropout, num_classes)
            out.update(label=label, label_dropped=label == guidance.null_label(num_classes))
        if guidance_prior is not None and "guidance" not in batch:
            out["guidance"] = guidance_prior.draw(jax.random.fold_in(key, 4), x.shape[0])
        return out

    return draw


def weighted_x_error(target: Array, x_hat: Array, logsnr: Array, weighting: str) -> Array:
    """Per example, ``w(logsnr) |target - x_hat|^2`` averaged over dims: the x-space error every loss here
    weighs (the teacher's ``mse``, a distillation student's against its target)."""
    return diffusion.loss_weight(logsnr, weighting) * mean_flat((target - x_hat) ** 2)


def model_key(key: Array) -> Array:
    return jax.random.split(key, 3)[2]


def make_diffusion_loss(
    apply_fn: Callable,
    schedule: Schedule,
    *,
    parameterization: str,
    weighting: str = "snr",
    loss_type: str = "mse",
    learned_variance: bool = False,
    num_timesteps: int | None = None,
    vlb_weight: float = 0.001,
    label_dropout: float = 0.0,
    num_classes: int = 0,
) -> Loss:
    """The teacher's loss.

    * ``mse``: ``w(logsnr) |x - x_hat|^2`` averaged over dims, ``w`` from
      ``weighting`` (``snr`` is Ho et al.'s eps-MSE, L_simple).
    * ``hybrid``: L_simple + ``vlb_weight`` * L_vlb with the mean stop-gradiented
      inside L_vlb (Improved DDPM, Sec. 3.1); needs ``learned_variance``.
    * ``vlb``: L_vlb alone, through mean and variance.

    L_vlb is estimated per example as ``T * L_t`` (bits/dim), an unbiased
    estimate of the sum over levels; the prior term does not depend on the model
    and is left out. ``num_timesteps=None`` trains in continuous time, t ~ U[t_min, 1]
    with the schedule's ``t_min`` (times given in the batch are raised to it: on
    ``linear_vp`` t = 0 is logSNR = +inf); an integer T trains on levels
    ``t = i / T``, i ~ U{1..T}. ``label_dropout``: the probability that an
    example's label is the null class instead (classifier-free guidance;
    ``num_classes`` real classes).
    """
    diffusion.check_parameterization(parameterization)
    diffusion.check_weighting(weighting)
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"Unknown loss {loss_type!r}; choose one of {list(LOSS_TYPES)}.")
    if loss_type != "mse" and not learned_variance:
        raise ValueError(f"loss {loss_type!r} trains the variance; set learned_variance=True or use loss 'mse'.")
    if loss_type != "mse" and num_timesteps is None:
        raise ValueError(f"loss {loss_type!r} is a discrete-time bound; set num_timesteps (T).")

    t_min = schedule.t_min if num_timesteps is None else 0.0
    draw = drawer(num_timesteps, t_min, label_dropout, num_classes)

    def loss_fn(params, batch: dict, key: Array):
        batch = draw(batch, key)
        x, t = batch["image"], batch["t"]
        if t_min > 0:
            t = jnp.maximum(t, t_min)
        logsnr = schedule.logsnr(t)
        z = diffusion.diffuse(x, batch["noise"], logsnr)
        out = apply_fn(params, z, t, batch.get("label"), model_key(key))
        pred = diffusion.predict(out, z, logsnr, parameterization=parameterization, learned_variance=learned_variance)
        mse = weighted_x_error(x, pred.x, logsnr, weighting)
        metrics = {"mse": jnp.mean(mse)}
        per_example, terms = mse, None
        if loss_type != "mse":
            mean_pred = (
                pred if loss_type == "vlb" else Prediction(jax.lax.stop_gradient(pred.x), pred.eps, pred.var_frac)
            )
            tr, lbt, is_decoder = vlb.step_transition(schedule, t, num_timesteps)
            log_var = vlb.model_log_variance("learned", tr, lbt, is_decoder, pred.var_frac, x)
            term = num_timesteps * vlb.vlb_term_bpd(x, z, mean_pred, tr, log_var, is_decoder)
            metrics["vlb"] = jnp.mean(term)
            terms = term
            per_example = term if loss_type == "vlb" else mse + vlb_weight * term
        if "t_weight" in batch:
            per_example = per_example * batch["t_weight"]
        loss = jnp.mean(per_example)
        metrics["loss"] = loss
        return loss, LossAux(metrics, terms)

    return Loss(loss_fn, draw)
