"""The config sections every job reads, checked before anything is built: data, model, diffusion, optim,
train and sample (:func:`validate`), and what a job that trains adds (:func:`validate_training`).

Each job checks its own section in its module (``validate(config)``), and the
tables check their rows' settings (architectures, distillation methods);
:func:`pdist.jobs.validate` runs them all.
"""

from __future__ import annotations

import ml_collections

from pdist import build, diffusion, losses, optim, samplers, schedules
from pdist.errors import ConfigError, check_one_of, check_positive
from pdist.models import ARCHITECTURES
from pdist.spec import ModelSpec

DTYPES = ("float32", "bfloat16")


def _fail(message: str):
    raise ConfigError(message)


def validate(config: ml_collections.ConfigDict) -> None:
    """The sections every job reads (data, model, diffusion, optim, train, sample); ConfigError with one
    sentence on the first problem."""
    _validate_diffusion(config.diffusion)
    model = config.model
    check_one_of(model.name, ARCHITECTURES, "model.name")
    check_positive(config.data.image_size, "data.image_size")
    check_positive(config.data.channels, "data.channels")
    ARCHITECTURES[model.name].validate(config)
    check_one_of(model.dtype, DTYPES, "model.dtype")
    if model.class_conditional and config.data.num_classes <= 0:
        _fail("config.model.class_conditional=True needs config.data.num_classes > 0.")
    if not 0 <= config.train.label_dropout < 1:
        _fail(f"config.train.label_dropout={config.train.label_dropout} must be in [0, 1) (0.1 is usual).")
    if config.train.label_dropout > 0 and not model.class_conditional:
        _fail("config.train.label_dropout > 0 drops class labels; set config.model.class_conditional=True.")

    settings = config.optim
    check_one_of(settings.optimizer, optim.OPTIMIZERS, "optim.optimizer")
    check_one_of(settings.schedule, optim.SCHEDULES, "optim.schedule")
    if settings.learning_rate <= 0:
        _fail(f"config.optim.learning_rate={settings.learning_rate} must be positive.")
    if settings.warmup_steps < 0 or settings.grad_clip < 0:
        _fail("config.optim.warmup_steps and config.optim.grad_clip must be >= 0.")

    _validate_train(config.train)

    sample = config.sample
    check_one_of(sample.method, samplers.SAMPLERS, "sample.method")
    check_one_of(sample.grid, schedules.GRIDS, "sample.grid")
    check_positive(sample.num_steps, "sample.num_steps")
    check_positive(sample.num_samples, "sample.num_samples")
    check_positive(sample.batch_size, "sample.batch_size")


def validate_training(config: ml_collections.ConfigDict) -> None:
    """What a job that trains this config's network adds (train, distill): no guidance input or consistency output
    on a teacher, a
    readable refined-schedule source, and a sampling grid that fits the network's schedule."""
    if config.model.guidance_input:
        _fail(
            "config.model.guidance_input=True is set by guided distillation in its students' configs; leave it "
            "False and distill with --config.distill.method=guided."
        )
    if config.diffusion.consistency_sigma_min > 0:
        _fail(
            f"config.diffusion.consistency_sigma_min={config.diffusion.consistency_sigma_min} is set by consistency "
            "distillation in its students' configs, whose networks no diffusion loss trains; leave it 0 and distill "
            "with --config.distill.method=consistency."
        )
    settings = config.optim
    if settings.schedule == "refined":
        build.refined_norms(settings)  # one sentence when they cannot be read
    sample, spec = config.sample, ModelSpec.of(config)
    try:
        schedules.time_grid(spec.schedule, sample.num_steps, sample.grid)
    except ValueError as e:
        _fail(f"config.sample.grid={sample.grid!r} with config.sample.num_steps={sample.num_steps}: {e}")
    if sample.guidance is not None:
        spec.check_guidance(sample.guidance)


def _validate_diffusion(settings: ml_collections.ConfigDict) -> None:
    check_one_of(settings.schedule, schedules.SCHEDULES, "diffusion.schedule")
    discrete = schedules.is_discrete(settings.schedule)
    if discrete and settings.num_timesteps is None:
        _fail(
            f"config.diffusion.schedule={settings.schedule!r} is discrete; set config.diffusion.num_timesteps "
            "(e.g. 1000)."
        )
    if not discrete and settings.num_timesteps is not None:
        discrete_names = sorted(n for n in schedules.SCHEDULES if schedules.is_discrete(n))
        _fail(
            f"config.diffusion.schedule={settings.schedule!r} is continuous in time; leave "
            f"config.diffusion.num_timesteps at None or pick one of {discrete_names}."
        )
    check_one_of(settings.parameterization, diffusion.PARAMETERIZATIONS, "diffusion.parameterization")
    check_one_of(settings.weighting, diffusion.WEIGHTINGS, "diffusion.weighting")
    check_one_of(settings.loss, losses.LOSS_TYPES, "diffusion.loss")
    if settings.loss != "mse" and not (settings.learned_variance and discrete):
        _fail(
            f"config.diffusion.loss={settings.loss!r} trains variances on a discrete schedule; set "
            "config.diffusion.learned_variance=True and a discrete schedule, or use loss 'mse'."
        )
    if settings.learned_variance and settings.loss == "mse":
        _fail(
            "config.diffusion.learned_variance=True with config.diffusion.loss='mse' leaves the variance untrained "
            "(the MSE has no variance term); use loss 'hybrid' or 'vlb', or set learned_variance=False."
        )
    if settings.importance_sampling and settings.loss != "vlb":
        _fail("config.diffusion.importance_sampling needs config.diffusion.loss='vlb' (it samples t for L_vlb).")


def _validate_train(settings: ml_collections.ConfigDict) -> None:
    check_positive(settings.batch_size, "train.batch_size")
    check_positive(settings.grad_accum_steps, "train.grad_accum_steps")
    if settings.batch_size % settings.grad_accum_steps:
        _fail(
            f"config.train.batch_size={settings.batch_size} must be divisible by config.train.grad_accum_steps="
            f"{settings.grad_accum_steps} (each update averages that many equal micro-batches)."
        )
    for name in ("num_steps", "log_every", "checkpoint_every", "keep_checkpoints"):
        check_positive(settings[name], f"train.{name}")
    if not (isinstance(settings.skip_nonfinite, int) and settings.skip_nonfinite >= 0):
        _fail(
            f"config.train.skip_nonfinite={settings.skip_nonfinite!r} must be an integer >= 0 (0: stop at the first)."
        )
    if not 0.0 <= settings.ema_decay < 1.0:
        _fail(f"config.train.ema_decay={settings.ema_decay} must be in [0, 1).")
