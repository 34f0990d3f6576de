"""Progressive Distillation (Salimans & Ho, ICLR 2022): a frozen teacher's two DDIM steps become one student step.

Round after round the student becomes the next teacher, from
``config.distill.start_steps`` down to ``final_steps``: round ``r`` trains a
student of ``start_steps / 2^r`` steps on the x-space target of Algorithm 2
(:func:`distillation_target`), with ``updates_per_round`` updates
(``updates_last_rounds`` for the rounds that reach 2 steps and 1: the paper's
50k and 100k). Its report compares, on fixed noise, the student's N steps and
the teacher's own N steps with the teacher's 2N steps.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pdist import diffusion, guidance, losses
from pdist.distillation.rounds import Round
from pdist.errors import ConfigError, check_positive
from pdist.losses import Loss, LossAux
from pdist.schedules import Schedule
from pdist.spec import ModelSpec

Array = jax.Array


def validate(config: ml_collections.ConfigDict) -> None:
    """:func:`validate_rounds`, and no null class (progressive students sample unguided)."""
    validate_rounds(config)
    if config.train.label_dropout > 0:
        raise ConfigError(
            f"config.train.label_dropout={config.train.label_dropout} trains a null class, which progressive "
            "distillation does not distill (its students sample unguided); set it to 0 for distillation, or "
            "distill the guided teacher with --config.distill.method=guided."
        )


def validate_rounds(config: ml_collections.ConfigDict) -> None:
    """The round schedule halves down to ``final_steps``, and a discrete teacher's grid holds every student time."""
    settings = config.distill
    check_positive(settings.start_steps, "distill.start_steps")
    check_positive(settings.final_steps, "distill.final_steps")
    ratio = settings.start_steps // settings.final_steps
    if settings.start_steps % settings.final_steps or ratio < 2 or ratio & (ratio - 1):
        raise ConfigError(
            f"config.distill.start_steps={settings.start_steps} must be config.distill.final_steps="
            f"{settings.final_steps} times a power of two (at least 2), so that every round halves the step count."
        )
    T = config.diffusion.num_timesteps
    if T is not None and T % settings.start_steps:
        raise ConfigError(
            f"The teacher is discrete-time with T={T} steps and the first round's student grid "
            f"(t = i/{settings.start_steps // 2}, midpoints i/{settings.start_steps}) does not land on it; set "
            f"config.distill.start_steps to a divisor of {T} (e.g. {T & -T} for final_steps=1)."
        )
    check_positive(settings.updates_per_round, "distill.updates_per_round")
    check_positive(settings.updates_last_rounds, "distill.updates_last_rounds")


def rounds(settings: ml_collections.ConfigDict) -> list[Round]:
    """One round per halving, start/2, start/4, ..., final steps; 2-step and 1-step rounds get the longer budget."""
    out, n = [], settings.start_steps
    while n > settings.final_steps:
        n //= 2
        updates = settings.updates_last_rounds if n <= 2 else settings.updates_per_round
        out.append(Round(index=len(out) + 1, student_steps=n, teacher_steps=2 * n, updates=updates))
    return out


def student(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The student's network is the teacher's."""
    return config


def fixed_guidance(config: ml_collections.ConfigDict, num_samples: int) -> None:
    """Unguided reports."""
    return None


def loss(student: ModelSpec, config: ml_collections.ConfigDict, rnd: Round) -> Loss:
    """The student loss ``(params, batch, key, teacher_params, num_student_steps) -> (loss, aux)`` of every
    round on the ``student`` network (the teacher's)."""
    return make_loss(
        student.apply,
        student.schedule,
        parameterization=student.parameterization,
        weighting=config.diffusion.weighting,
        learned_variance=student.learned_variance,
    )


def report(rnd: Round, *, student: np.ndarray, teacher: np.ndarray, target: np.ndarray, final_loss, seconds) -> dict:
    """The round's row: RMSE of the student's N steps and of the teacher's own N steps to the teacher's 2N steps."""
    return {
        "round": rnd.index,
        "steps": rnd.student_steps,
        "teacher_steps": rnd.teacher_steps,
        "updates": rnd.updates,
        "final_loss": final_loss,
        "rmse_student": _rmse(student, target),  # student N steps vs teacher 2N steps
        "rmse_teacher": _rmse(teacher, target),  # teacher N steps vs teacher 2N steps
        "seconds": seconds,
    }


def summary(rows: list[dict]) -> str:
    """summary.md: one line per round."""
    lines = [
        "| round | steps | updates | final loss | RMSE student N vs teacher 2N | RMSE teacher N vs teacher 2N "
        "| minutes |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        final_loss = "-" if row["final_loss"] is None else f"{row['final_loss']:.4g}"
        minutes = "-" if row["seconds"] is None else f"{row['seconds'] / 60:.1f}"
        lines.append(
            f"| {row['round']} | {row['teacher_steps']} -> {row['steps']} | {row['updates']} | {final_loss} "
            f"| {row['rmse_student']:.4f} | {row['rmse_teacher']:.4f} | {minutes} |"
        )
    return "\n".join(lines) + "\n"


def _rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)))


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


def make_loss(
    apply_fn: Callable,
    schedule: Schedule,
    *,
    parameterization: str,
    weighting: str,
    learned_variance: bool = False,
    guidance_prior: guidance.WeightPrior | None = None,
) -> Loss:
    """Student loss ``w(logsnr_t) |x~ - x_hat_student(z_t)|^2`` (Salimans & Ho 2022, Alg. 2).

    Returns ``loss_fn(params, batch, key, teacher_params, num_student_steps)``: the frozen teacher (same
    ``apply_fn``, deterministic) and the student's number of steps N are arguments, never closed-over
    constants, so every round runs one compiled program. Student times are ``t = i / N``, i ~ U{1..N}. With
    ``guidance_prior`` (guided distillation's stage 2, Meng et al. 2023), a guidance weight drawn per example
    from it is the last argument of ``apply_fn`` for teacher and student alike.
    """
    diffusion.check_parameterization(parameterization)
    diffusion.check_weighting(weighting)
    predict = lambda out, z, logsnr: diffusion.predict(  # noqa: E731
        out, z, logsnr, parameterization=parameterization, learned_variance=learned_variance
    )

    def draw(batch: dict, key: Array, teacher_params, num_student_steps) -> dict:
        return losses.drawer(num_student_steps, guidance_prior=guidance_prior)(batch, key)  # t on the student's grid

    def loss_fn(params, batch: dict, key: Array, teacher_params, num_student_steps):
        batch = draw(batch, key, teacher_params, num_student_steps)
        x, label, t = batch["image"], batch.get("label"), batch["t"]
        w = () if guidance_prior is None else (batch["guidance"],)
        logsnr = schedule.logsnr(t)
        z = diffusion.diffuse(x, batch["noise"], logsnr)

        def teacher(z_, t_):
            return predict(apply_fn(teacher_params, z_, t_, label, None, *w), z_, schedule.logsnr(t_))

        target = jax.lax.stop_gradient(distillation_target(teacher, schedule, z, t, num_student_steps))
        pred = predict(apply_fn(params, z, t, label, losses.model_key(key), *w), z, logsnr)
        loss = jnp.mean(losses.weighted_x_error(target, pred.x, logsnr, weighting))
        return loss, LossAux({"loss": loss})

    return Loss(loss_fn, draw)
