"""Training losses as pure ``(params, batch, key) -> (loss, metrics)`` functions.

Built by factories over an apply function
``apply_fn(params, z, t, label, key) -> raw output`` (``t`` [B] in [0, 1];
``label`` [B] or None; ``key`` for dropout, or None for a deterministic call).
``batch`` holds ``image`` (x in [-1, 1], [B, ...]), optionally ``label``, and
optionally precomputed ``t``, ``noise`` and ``t_weight`` (e.g. from
:class:`pdist.importance.LossAwareSampler`). Metrics are scalars, except
``per_example_*`` entries ([B]) kept for timestep samplers.

Each loss has a ``draw(batch, key) -> batch`` attribute that adds the
per-example randomness (``t`` and ``noise``) the loss would draw from ``key``
itself; a loss given a batch that already holds them draws nothing. The train
step uses it to draw a whole batch's randomness once and split the batch into
micro-batches (gradient accumulation) that see exactly the draws of the
undivided batch. ``key`` also seeds dropout, which does differ per micro-batch.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from pdist import diffusion, vlb
from pdist.diffusion import Prediction
from pdist.schedules import Schedule

Array = jax.Array

LOSS_TYPES = ("mse", "hybrid", "vlb")


def _mean_flat(a: Array) -> Array:
    return jnp.mean(a.reshape(a.shape[0], -1), axis=1)


def _uniform_times(key: Array, n: int, num_timesteps: int | None) -> Array:
    """t ~ U[0, 1], or t = i / T with i ~ U{1..T}."""
    if num_timesteps is None:
        return jax.random.uniform(key, (n,))
    return jax.random.randint(key, (n,), 1, num_timesteps + 1).astype(jnp.float32) / num_timesteps


def _drawer(num_timesteps: int | None) -> Callable:
    """``draw(batch, key)``: ``t`` (from ``num_timesteps`` as in :func:`_uniform_times`) and Gaussian
    ``noise`` for every example, unless the batch holds them; the key's third part is left for the model."""

    def draw(batch: dict, key: Array) -> dict:
        k_t, k_eps, _ = jax.random.split(key, 3)
        x = batch["image"]
        t = batch["t"] if "t" in batch else _uniform_times(k_t, x.shape[0], num_timesteps)
        noise = batch["noise"] if "noise" in batch else jax.random.normal(k_eps, x.shape, x.dtype)
        return {**batch, "t": jnp.asarray(t, jnp.float32), "noise": noise}

    return draw


def _model_key(key: Array) -> Array:
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
) -> Callable:
    """The teacher's loss.

    * ``mse``: ``w(logsnr) |x - x_hat|^2`` averaged over dims, ``w`` from
      ``weighting`` (``snr`` is Ho et al.'s eps-MSE, L_simple).
    * ``hybrid``: L_simple + ``vlb_weight`` * L_vlb with the mean stop-gradiented
      inside L_vlb (Improved DDPM, Sec. 3.1); needs ``learned_variance``.
    * ``vlb``: L_vlb alone, through mean and variance.

    L_vlb is estimated per example as ``T * L_t`` (bits/dim), an unbiased
    estimate of the sum over levels; the prior term does not depend on the model
    and is left out. ``num_timesteps=None`` trains in continuous time (t ~ U[0, 1]);
    an integer T trains on levels ``t = i / T``, i ~ U{1..T}.
    """
    diffusion.check_parameterization(parameterization)
    diffusion.check_weighting(weighting)
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"Unknown loss {loss_type!r}; choose one of {list(LOSS_TYPES)}.")
    if loss_type != "mse" and not learned_variance:
        raise ValueError(f"loss {loss_type!r} trains the variance; set learned_variance=True or use loss 'mse'.")
    if loss_type != "mse" and num_timesteps is None:
        raise ValueError(f"loss {loss_type!r} is a discrete-time bound; set num_timesteps (T).")

    draw = _drawer(num_timesteps)

    def loss_fn(params, batch: dict, key: Array):
        batch = draw(batch, key)
        x, t = batch["image"], batch["t"]
        logsnr = schedule.logsnr(t)
        z = diffusion.diffuse(x, batch["noise"], logsnr)
        out = apply_fn(params, z, t, batch.get("label"), _model_key(key))
        pred = diffusion.predict(out, z, logsnr, parameterization=parameterization, learned_variance=learned_variance)
        mse = diffusion.loss_weight(logsnr, weighting) * _mean_flat((x - pred.x) ** 2)
        metrics = {"mse": jnp.mean(mse)}
        per_example = mse
        if loss_type != "mse":
            mean_pred = (
                pred if loss_type == "vlb" else Prediction(jax.lax.stop_gradient(pred.x), pred.eps, pred.var_frac)
            )
            tr, lbt, is_decoder = vlb.step_transition(schedule, t, num_timesteps)
            log_var = vlb.model_log_variance("learned", tr, lbt, is_decoder, pred.var_frac, x)
            term = num_timesteps * vlb.vlb_term_bpd(x, z, mean_pred, tr, log_var, is_decoder)
            metrics["vlb"] = jnp.mean(term)
            metrics["per_example_vlb"] = term
            per_example = term if loss_type == "vlb" else mse + vlb_weight * term
        if "t_weight" in batch:
            per_example = per_example * batch["t_weight"]
        loss = jnp.mean(per_example)
        metrics["loss"] = loss
        return loss, metrics

    loss_fn.draw = draw
    return loss_fn


def distillation_target(teacher: Callable, schedule: Schedule, z: Array, t: Array, num_student_steps: int) -> Array:
    """x-tilde of Salimans & Ho (2022), Algorithm 2, for student times ``t = i / N``.

    ``teacher(z, t) -> Prediction``. Two teacher DDIM steps
    ``z_t -> z_t' -> z_t''`` (``t' = t - 0.5/N``, ``t'' = t - 1/N``), then the x
    that one student DDIM step from (z_t, t) must predict to land on z_t'':
    ``x~ = (z_t'' - (sigma_t''/sigma_t) z_t) / (alpha_t'' - (sigma_t''/sigma_t) alpha_t)``,
    and the teacher's second x-hat on the last step (t'' = 0), where that
    division degenerates. Not clipped.
    """
    t_mid, t_next = t - 0.5 / num_student_steps, t - 1.0 / num_student_steps
    a_mid, s_mid = schedule.alpha_sigma(t_mid)
    a_next, s_next = schedule.alpha_sigma(t_next)
    a_t, s_t = schedule.alpha_sigma(t)
    z_mid = diffusion.ddim_step(teacher(z, t), a_mid, s_mid)
    pred_mid = teacher(z_mid, t_mid)
    z_next = diffusion.ddim_step(pred_mid, a_next, s_next)
    ratio = s_next / s_t
    bc = lambda a: diffusion.bcast(a, z)  # noqa: E731
    x_tilde = (z_next - bc(ratio) * z) / bc(a_next - ratio * a_t)
    last = t_next <= 0.25 / num_student_steps
    return jnp.where(bc(last), pred_mid.x, x_tilde)


def make_distillation_loss(
    apply_fn: Callable,
    schedule: Schedule,
    *,
    parameterization: str,
    weighting: str,
    num_student_steps: int,
    learned_variance: bool = False,
) -> Callable:
    """Student loss ``w(logsnr_t) |x~ - x_hat_student(z_t)|^2`` (Salimans & Ho 2022, Alg. 2).

    Returns ``loss_fn(params, batch, key, teacher_params)``: the frozen teacher
    (same ``apply_fn``, deterministic) is an argument, never a closed-over
    constant. Student times are ``t = i / N``, i ~ U{1..N}.
    """
    diffusion.check_parameterization(parameterization)
    diffusion.check_weighting(weighting)
    if not (isinstance(num_student_steps, int) and num_student_steps >= 1):
        raise ValueError(f"num_student_steps must be a positive integer, got {num_student_steps!r}.")
    predict = lambda out, z, logsnr: diffusion.predict(  # noqa: E731
        out, z, logsnr, parameterization=parameterization, learned_variance=learned_variance
    )

    draw = _drawer(num_student_steps)  # t on the student's grid

    def loss_fn(params, batch: dict, key: Array, teacher_params):
        batch = draw(batch, key)
        x, label, t = batch["image"], batch.get("label"), batch["t"]
        logsnr = schedule.logsnr(t)
        z = diffusion.diffuse(x, batch["noise"], logsnr)

        def teacher(z_, t_):
            return predict(apply_fn(teacher_params, z_, t_, label, None), z_, schedule.logsnr(t_))

        target = jax.lax.stop_gradient(distillation_target(teacher, schedule, z, t, num_student_steps))
        pred = predict(apply_fn(params, z, t, label, _model_key(key)), z, logsnr)
        per_example = diffusion.loss_weight(logsnr, weighting) * _mean_flat((target - pred.x) ** 2)
        loss = jnp.mean(per_example)
        return loss, {"loss": loss}

    loss_fn.draw = draw
    return loss_fn
