"""Guided distillation (Meng, Rombach, Gao, Kingma, Ermon, Ho, Salimans; "On Distillation of Guided Diffusion
Models", CVPR 2023): a classifier-free guided teacher becomes few-step students that take the guidance weight
``w`` as an input.

* **Stage 1** (round 1): the student is the teacher's network with a w embedding (``config.model.
  guidance_input``: Fourier features of w added to the noise-level embedding, last layer at zero, so the
  student starts as the conditional teacher at every w; :func:`pdist.build.student_params`). It is trained to
  match the guided teacher, ``x_w = (1 + w) x(z, c) - w x(z, null)`` (one teacher call on the doubled
  batch), at ``w ~ U[guidance_min, guidance_max]`` per example (exactly ``guidance_min`` with probability
  ``guidance_at_min``, :class:`pdist.guidance.WeightPrior`; 0 in the paper) and t on the teacher's own training grid
  (``t = i/T`` for a discrete teacher, ``U[t_min, 1]`` for a continuous one), with the teacher's loss weight:
  ``weight(logsnr) |x_w - x_student(z_t, c, w)|^2``, for ``config.distill.stage1_updates`` updates. It
  samples in ``start_steps`` steps, as the teacher did.
* **Stage 2** (rounds 2, 3, ...): the progressive rounds of :mod:`pdist.distillation.progressive`,
  ``start_steps`` halved down to ``final_steps``, with w drawn per example and given to the frozen teacher (the
  previous student) and to the student alike.

Every round's report samples the fixed noise at weights spread evenly over the range (:func:`fixed_guidance`),
so its RMSEs cover every w the students serve.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pdist import diffusion, guidance, losses
from pdist.distillation import progressive
from pdist.distillation.rounds import Round
from pdist.errors import ConfigError, check_positive
from pdist.losses import Loss, LossAux
from pdist.schedules import Schedule
from pdist.spec import ModelSpec, has_null_class

Array = jax.Array


def validate(config: ml_collections.ConfigDict) -> None:
    """A teacher trained for guidance, a weight range ``0 <= min < max``, and progressive's round schedule."""
    if not has_null_class(config):
        raise ConfigError(
            "Guided distillation needs a teacher trained for classifier-free guidance (config.model."
            "class_conditional=True and config.train.label_dropout > 0, as in configs/digits_cond.py)."
        )
    settings = config.distill
    if not 0 <= settings.guidance_min < settings.guidance_max:
        raise ConfigError(
            f"config.distill.guidance_min={settings.guidance_min} and guidance_max={settings.guidance_max} must "
            "satisfy 0 <= min < max (the paper: 0 and 4)."
        )
    if not 0 <= settings.guidance_at_min < 1:
        raise ConfigError(
            f"config.distill.guidance_at_min={settings.guidance_at_min} is a probability below 1 (the share of "
            "weights drawn exactly at guidance_min; 0 draws U[guidance_min, guidance_max] as the paper)."
        )
    check_positive(settings.stage1_updates, "distill.stage1_updates")
    progressive.validate_rounds(config)


def guidance_range(config: ml_collections.ConfigDict) -> tuple[float, float]:
    return float(config.distill.guidance_min), float(config.distill.guidance_max)


def weight_prior(config: ml_collections.ConfigDict) -> guidance.WeightPrior:
    """The training draw of w, stage 1 and stage 2 alike."""
    return guidance.WeightPrior(*guidance_range(config), at_low=float(config.distill.guidance_at_min))


def rounds(settings: ml_collections.ConfigDict) -> list[Round]:
    """Stage 1 (round 1: ``start_steps`` to ``start_steps``), then progressive's halvings as rounds 2, 3, ..."""
    steps = settings.start_steps
    first = Round(index=1, student_steps=steps, teacher_steps=steps, updates=settings.stage1_updates)
    return [first] + [dataclasses.replace(r, index=r.index + 1) for r in progressive.rounds(settings)]


def student(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The teacher's network with the guidance weight as an input."""
    out = ml_collections.ConfigDict(config.to_dict())
    out.model.guidance_input = True
    return out


def fixed_guidance(config: ml_collections.ConfigDict, num_samples: int) -> np.ndarray:
    """The weights of the reports' fixed-noise samples: evenly spaced over the range, min to max."""
    low, high = guidance_range(config)
    return np.linspace(low, high, num_samples, dtype=np.float32)


def loss(student: ModelSpec, config: ml_collections.ConfigDict, rnd: Round) -> Loss:
    """Round 1: :func:`make_stage_one_loss`; later rounds: progressive's loss with a weight per example; on
    the ``student`` network (the teacher's with w as an input)."""
    common = dict(
        parameterization=student.parameterization,
        weighting=config.diffusion.weighting,
        learned_variance=student.learned_variance,
        guidance_prior=weight_prior(config),
    )
    if rnd.index == 1:
        return make_stage_one_loss(
            student.apply,
            student.schedule,
            num_timesteps=config.diffusion.num_timesteps,
            num_classes=student.num_classes,
            **common,
        )
    return progressive.make_loss(student.apply, student.schedule, **common)


def make_stage_one_loss(
    apply_fn: Callable,
    schedule: Schedule,
    *,
    parameterization: str,
    weighting: str,
    num_timesteps: int | None,
    num_classes: int,
    guidance_prior: guidance.WeightPrior,
    learned_variance: bool = False,
    teacher: Callable | None = None,
) -> Loss:
    """Stage 1's loss ``(params, batch, key, teacher_params, num_student_steps=None) -> (loss, aux)`` (the
    step count, which every distillation loss takes, is not used: stage 1 trains on the teacher's own grid):
    ``weight(logsnr_t) |x_w - x_hat_student(z_t, c, w)|^2`` with the guided teacher's ``x_w``.

    ``apply_fn(params, z, t, label, key, w)`` is the student's network. ``teacher(teacher_params, z, t, label)
    -> Prediction`` is the conditional teacher (the null class as ``label = num_classes``); by default the
    student's network with the teacher's parameters at w = 0 (a fresh student's w layers are zero, so that is
    the teacher itself). The batch may hold ``guidance`` (the weights), ``t`` and ``noise``; what it lacks is
    drawn: w from ``guidance_prior``, t on the teacher's grid (``num_timesteps``, or ``U[t_min, 1]``).
    """
    diffusion.check_parameterization(parameterization)
    diffusion.check_weighting(weighting)

    def predict(out, z, t):
        return diffusion.predict(
            out, z, schedule.logsnr(t), parameterization=parameterization, learned_variance=learned_variance
        )

    if teacher is None:

        def teacher(teacher_params, z, t, label):
            return predict(apply_fn(teacher_params, z, t, label, None, jnp.zeros(z.shape[:1])), z, t)

    t_min = schedule.t_min if num_timesteps is None else 0.0
    draw = losses.drawer(num_timesteps, t_min, guidance_prior=guidance_prior)

    def loss_fn(params, batch: dict, key: Array, teacher_params, num_student_steps=None):
        batch = draw(batch, key)
        x, label, w = batch["image"], batch["label"], batch["guidance"]
        t = jnp.maximum(batch["t"], t_min)
        logsnr = schedule.logsnr(t)
        z = diffusion.diffuse(x, batch["noise"], logsnr)
        target = guidance.guided(lambda z_, t_, l_: teacher(teacher_params, z_, t_, l_), z, t, label, w, num_classes)
        target = jax.lax.stop_gradient(target.x)
        pred = predict(apply_fn(params, z, t, label, losses.model_key(key), w), z, t)
        loss = jnp.mean(losses.weighted_x_error(target, pred.x, logsnr, weighting))
        return loss, LossAux({"loss": loss})

    return Loss(loss_fn, draw)
