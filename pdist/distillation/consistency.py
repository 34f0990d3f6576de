"""Consistency distillation (Song, Dhariwal, Chen, Sutskever; "Consistency Models", ICML 2023, Alg. 2).

One round trains a student ``f_theta(z_t, t)`` that maps every point of the frozen teacher's probability-flow
ODE to the ODE's clean end, so that it samples in one step (or a few, with the multistep consistency sampler,
``samplers`` method ``consistency``). Expressed on pdist's variance-preserving schedules:

* **Discretization** (:func:`time_grid`): the paper's ``N`` noise levels with Karras et al.'s spacing,
  ``sigma_i = (sigma_min^(1/rho) + i/(N-1) (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho``, in the
  variance-exploding noise level ``sigma = sigma_t / alpha_t = exp(-logsnr / 2)``, mapped to times of the
  teacher's schedule (:func:`pdist.schedules.times_at_sigma`; the nearest level of a discrete one), and
  ``t = 1`` above them where the schedule's noisiest level lies beyond ``sigma_max``: every pdist sampler
  starts there, so the student is trained on the time it is first evaluated at.
* **Boundary condition**: the student's x-hat is the consistency function
  (:func:`pdist.diffusion.consistency_output`, applied by :meth:`pdist.spec.ModelSpec.predict` wherever the
  student is called): ``c_skip z / alpha + (1 - c_skip) x-hat_network`` with the paper's ``c_skip`` in sigma,
  exactly ``z / alpha`` (the ODE's state) at the grid's first time ``t_min``, whatever the network's
  parameterization.
* **Teacher step** between neighbours ``t_{n+1} -> t_n`` (:func:`teacher_step`): DDIM (Euler in sigma for
  ``x = z / alpha``, one teacher call) or Heun in sigma (the paper's and Karras et al.'s, two calls).
* **Target network**: an exponential moving average of the student at rate ``target_ema`` (the paper's mu,
  0.95 for CIFAR-10), ``theta- <- mu theta- + (1 - mu) theta`` after every update, starting at the student's
  initial parameters (the teacher's). The train step keeps it in the state (:class:`pdist.losses.Loss`'s
  ``target_decay``); the students' sampling EMA is ``config.train.ema_decay`` as for every method.
* **Loss**: ``d(f_theta(z_{n+1}, t_{n+1}), f_theta-(z^_n, t_n))`` with ``n ~ U{0..N-2}``, ``z_{n+1} =
  alpha x + sigma eps``, ``lambda = 1``; ``d`` the squared L2 distance (averaged over dimensions, as pdist's
  other losses) or the pseudo-Huber distance ``sqrt(|a - b|^2 + c^2) - c`` of Song & Dhariwal (2023, "Improved
  Techniques for Training Consistency Models"), c = 0.00054 sqrt(d) by default.
* **Guidance** (``guidance`` w > 0, not in the paper; as latent consistency models do for a fixed w): the
  teacher's step follows its classifier-free guided ODE, ``(1 + w) x-hat(c) - w x-hat(null)`` (one call on the
  doubled batch), so the student, which has no null class, samples that guided model unguided. The reports'
  teacher samples are guided at w too.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pdist import diffusion, losses
from pdist.distillation import progressive
from pdist.distillation.rounds import Round
from pdist.errors import ConfigError, check_one_of, check_positive
from pdist.losses import Loss, LossAux
from pdist.schedules import Schedule, boundary_time, times_at_sigma
from pdist.spec import ModelSpec, has_null_class

Array = jax.Array

SOLVERS = {"ddim": 1, "heun": 2}  # teacher calls per step
DISTANCES = ("l2", "pseudo_huber")


def karras_sigmas(sigma_min: float, sigma_max: float, num_scales: int, rho: float) -> np.ndarray:
    """The paper's N noise levels, increasing (Karras et al. 2022, Eq. 5, reversed)."""
    u = np.linspace(0.0, 1.0, num_scales)
    return (sigma_min ** (1 / rho) + u * (sigma_max ** (1 / rho) - sigma_min ** (1 / rho))) ** rho


def time_grid(schedule: Schedule, settings: ml_collections.ConfigDict) -> np.ndarray:
    """The consistency discretization ``t_0 < t_1 < ... `` (float32) on ``schedule``: ``t_0`` is the boundary
    (:func:`pdist.schedules.boundary_time` at ``sigma_min``), then the Karras levels' times (from the larger of
    ``sigma_min`` and a discrete schedule's level 1), then 1 where the
    schedule's sigma at t = 1 exceeds ``sigma_max``. One sentence if two levels land on one time (a discrete
    schedule with too few levels for N)."""
    # A discrete schedule's lowest noise level (level 1) may lie above sigma_min: the levels start there
    lowest = 1.0 / schedule.num_timesteps if getattr(schedule, "num_timesteps", None) else 0.0
    sigma_min = max(float(settings.sigma_min), float(np.exp(-0.5 * np.float64(schedule.logsnr(np.float32(lowest))))))
    sigmas = karras_sigmas(sigma_min, settings.sigma_max, settings.num_scales, settings.rho)
    times = times_at_sigma(schedule, sigmas[1:])
    times = np.concatenate([[boundary_time(schedule, float(settings.sigma_min))], times])
    if times[-1] < 1.0:
        times = np.append(times, 1.0)
    times = np.asarray(times, np.float32)
    if np.any(np.diff(times) <= 0):
        raise ConfigError(
            f"config.distill.consistency.num_scales={settings.num_scales} Karras levels between sigma_min="
            f"{settings.sigma_min} and sigma_max={settings.sigma_max} do not map to distinct times of the "
            f"teacher's schedule; lower num_scales or widen the range."
        )
    return times


def validate(config: ml_collections.ConfigDict) -> None:
    """The method's settings, and no guidance input (a guided student as the teacher)."""
    c = config.distill.consistency
    check_positive(c.updates, "distill.consistency.updates")
    check_positive(c.student_steps, "distill.consistency.student_steps")
    check_positive(config.distill.start_steps, "distill.start_steps")
    if c.num_scales < 2:
        raise ConfigError(f"config.distill.consistency.num_scales={c.num_scales} must be at least 2 (the paper: 18).")
    if not 0 < c.sigma_min < c.sigma_max:
        raise ConfigError(
            f"config.distill.consistency.sigma_min={c.sigma_min} and sigma_max={c.sigma_max} must satisfy "
            "0 < sigma_min < sigma_max (the paper: 0.002 and 80)."
        )
    if c.rho <= 0:
        raise ConfigError(f"config.distill.consistency.rho={c.rho} must be positive (the paper: 7).")
    if not 0 <= c.target_ema < 1:
        raise ConfigError(
            f"config.distill.consistency.target_ema={c.target_ema} must be in [0, 1) (the paper's mu: 0.95)."
        )
    if c.huber_c < 0:
        raise ConfigError(f"config.distill.consistency.huber_c={c.huber_c} must be >= 0 (0: 0.00054 sqrt(d)).")
    check_one_of(c.solver, SOLVERS, "distill.consistency.solver")
    check_one_of(c.distance, DISTANCES, "distill.consistency.distance")
    if config.model.guidance_input:
        raise ConfigError(
            "Consistency distillation of a guided student (config.model.guidance_input) is not supported; "
            "distill the conditional teacher (w = 0)."
        )
    if c.guidance < 0:
        raise ConfigError(f"config.distill.consistency.guidance={c.guidance} must be >= 0 (0: the conditional model).")
    if c.guidance > 0 and not has_null_class(config):
        raise ConfigError(
            f"config.distill.consistency.guidance={c.guidance} needs a teacher with a null class "
            "(model.class_conditional=True and train.label_dropout > 0, as configs/digits_cond.py); set it to 0."
        )


def rounds(settings: ml_collections.ConfigDict) -> list[Round]:
    """One round; its report compares the student's ``student_steps`` consistency steps with the teacher's
    ``start_steps`` DDIM steps (and the teacher's own ``student_steps``)."""
    c = settings.consistency
    return [Round(index=1, student_steps=c.student_steps, teacher_steps=settings.start_steps, updates=c.updates)]


def student(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The teacher's network whose x-hat is the consistency function, identity at ``sigma_min``. A
    class-conditional teacher's student distills its conditional ODE: it has no null class (label dropout 0),
    so it is never guided."""
    out = ml_collections.ConfigDict(config.to_dict())
    out.diffusion.consistency_sigma_min = float(config.distill.consistency.sigma_min)
    out.train.label_dropout = 0.0
    return out


def fixed_guidance(config: ml_collections.ConfigDict, num_samples: int) -> None:
    """The student samples unguided (a guided ODE's student has its weight built in)."""
    return None


def teacher_guidance(config: ml_collections.ConfigDict, num_samples: int) -> np.ndarray | None:
    """The teacher's samples in the reports: at the distilled ODE's weight."""
    w = float(config.distill.consistency.guidance)
    return np.full((num_samples,), w, np.float32) if w > 0 else None


def loss(student: ModelSpec, config: ml_collections.ConfigDict, rnd: Round) -> Loss:
    """The round's loss on the ``student`` network; the teacher is the same network without the consistency
    output."""
    c = config.distill.consistency
    teacher = dataclasses.replace(student, consistency=None)
    return make_loss(
        student,
        teacher,
        time_grid(student.schedule, c),
        solver=c.solver,
        distance=c.distance,
        huber_c=float(c.huber_c),
        target_ema=float(c.target_ema),
        guidance=float(c.guidance),
    )


def teacher_step(teacher, z: Array, t: Array, s: Array, schedule: Schedule, solver: str) -> Array:
    """One step of the probability-flow ODE from ``z`` at times ``t`` [B] to ``s`` [B] (``s < t``), with
    ``teacher(z, t) -> Prediction``: ``ddim`` (Euler in sigma = sigma_t / alpha_t for z / alpha, which is
    DDIM's step) or ``heun`` (Heun in sigma, Karras et al. 2022 Alg. 1)."""
    bc = lambda a: diffusion.bcast(a, z)  # noqa: E731
    a_t, s_t = schedule.alpha_sigma(t)
    a_s, s_s = schedule.alpha_sigma(s)
    pred = teacher(z, t)
    z_euler = diffusion.ddim_step(pred, a_s, s_s)
    if solver == "ddim":
        return z_euler
    # x = z / alpha moves with dx/dsigma = eps-hat: Heun averages the slopes at both ends
    second = teacher(z_euler, s)
    d_sigma = s_s / a_s - s_t / a_t
    x = z / bc(a_t) + bc(d_sigma) * 0.5 * (pred.eps + second.eps)
    return bc(a_s) * x


def distance_fn(kind: str, huber_c: float, dims: int):
    """Per example: the mean squared difference (``l2``) or the pseudo-Huber distance over all dimensions."""
    if kind == "l2":
        return lambda a, b: losses.mean_flat((a - b) ** 2)
    c = huber_c or 0.00054 * math.sqrt(dims)
    return lambda a, b: jnp.sqrt(jnp.sum(((a - b) ** 2).reshape(a.shape[0], -1), axis=1) + c**2) - c


def make_loss(
    student: ModelSpec,
    teacher: ModelSpec,
    times: np.ndarray,
    *,
    solver: str,
    distance: str,
    huber_c: float = 0.0,
    target_ema: float,
    guidance: float = 0.0,
) -> Loss:
    """``loss(params, batch, key, teacher_params, num_student_steps, target_params) -> (loss, aux)``: Alg. 2's
    loss on the grid ``times`` (the step count every distillation loss takes is not used; the train step adds
    the target network's parameters, :attr:`Loss.target_decay`). The batch may hold ``n`` (the interval, the
    student at ``times[n + 1]``) and ``noise``; what it lacks is drawn. ``guidance`` > 0: the teacher's step
    follows its guided ODE at that weight (its null class: label ``teacher.num_classes``)."""
    times = jnp.asarray(times, jnp.float32)
    num = int(times.shape[0])
    schedule = student.schedule
    dims = int(np.prod(student.image_shape))
    d = distance_fn(distance, huber_c, dims)

    def draw(batch: dict, key: Array, *loss_args) -> dict:
        k_n, k_eps, _ = jax.random.split(key, 3)
        x = batch["image"]
        n = batch["n"] if "n" in batch else jax.random.randint(k_n, (x.shape[0],), 0, num - 1)
        noise = batch["noise"] if "noise" in batch else jax.random.normal(k_eps, x.shape, x.dtype)
        return {**batch, "n": n, "noise": noise}

    def loss_fn(params, batch: dict, key: Array, teacher_params, num_student_steps, target_params):
        batch = draw(batch, key)
        x, label, n = batch["image"], batch.get("label"), batch["n"]
        t, s = times[n + 1], times[n]
        z = diffusion.diffuse(x, batch["noise"], schedule.logsnr(t))

        def call(spec, p, z_, t_, k=None):
            return spec.predict(spec.apply(p, z_, t_, label, k), z_, t_)

        # the teacher's prediction, guided at w on the doubled batch when w > 0 (ModelSpec.__call__)
        w = guidance if guidance else None
        z_s = teacher_step(lambda z_, t_: teacher(teacher_params, label, w, z_, t_), z, t, s, schedule, solver)
        target = jax.lax.stop_gradient(call(student, target_params, jax.lax.stop_gradient(z_s), s).x)
        pred = call(student, params, z, t, losses.model_key(key)).x
        loss = jnp.mean(d(pred, target))
        return loss, LossAux({"loss": loss})

    return Loss(loss_fn, draw, target_decay=target_ema)


report = progressive.report


def summary(rows: list[dict]) -> str:
    """summary.md: the round's line."""
    lines = [
        "| steps | updates | final loss | RMSE student vs teacher (DDIM) | RMSE teacher's own steps vs teacher "
        "(DDIM) | minutes |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        final_loss = "-" if row["final_loss"] is None else f"{row['final_loss']:.4g}"
        minutes = "-" if row["seconds"] is None else f"{row['seconds'] / 60:.1f}"
        lines.append(
            f"| {row['teacher_steps']} -> {row['steps']} | {row['updates']} | {final_loss} "
            f"| {row['rmse_student']:.4f} | {row['rmse_teacher']:.4f} | {minutes} |"
        )
    return "\n".join(lines) + "\n"
