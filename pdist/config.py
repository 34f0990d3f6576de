"""The config every run starts from, and its validation.

Files in ``configs/`` call :func:`base_config` and override what their run
needs; ``--config.a.b=value`` overrides on the command line. :func:`validate`
checks a config before anything is built or compiled and stops with one
sentence naming the bad value and how to fix it.
"""

from __future__ import annotations

import difflib

import ml_collections

from pdist import diffusion, losses, optim, refine, samplers, schedules
from pdist.distillation import METHODS
from pdist.errors import ConfigError, check_one_of, check_positive
from pdist.evaluation.evaluators import EVALUATORS, resolve
from pdist.jobs import MODES
from pdist.models import ARCHITECTURES
from pdist.runtime import files

DTYPES = ("float32", "bfloat16")


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.mode = "train"
    config.seed = 0

    config.data = ml_collections.ConfigDict()
    config.data.name = "digits"  # a TFDS name, or "digits" (built locally)
    config.data.data_dir = ml_collections.FieldReference(None, field_type=str)  # None: TFDS default
    config.data.split = "train"
    config.data.image_size = 8
    config.data.channels = 1
    config.data.num_classes = 10
    config.data.random_flip = False
    config.data.shuffle_buffer = 10_000
    config.data.cache = True

    config.model = ml_collections.ConfigDict()
    config.model.name = "unet"  # a pdist.models.ARCHITECTURES name; the keys below are the UNet's
    config.model.ch = 32
    config.model.ch_mult = (1, 2)
    config.model.num_res_blocks = 2
    config.model.attn_resolutions = (4,)
    config.model.head_dim = 32
    config.model.num_heads = ml_collections.FieldReference(None, field_type=int)
    config.model.dropout = 0.0
    config.model.resblock_updown = False
    config.model.class_conditional = False
    config.model.dtype = (
        "float32"  # compute dtype; "bfloat16": mixed precision (parameters, optimizer state stay float32)
    )
    config.model.remat = False  # recompute block activations in the backward pass (memory for compute)
    # the network takes the guidance weight w as an input (a guided-distillation student; set by that method
    # in its students' configs, never for a teacher): sampled at w in [distill.guidance_min, guidance_max]
    config.model.guidance_input = False

    config.diffusion = ml_collections.ConfigDict()
    config.diffusion.schedule = "cosine_logsnr"  # a pdist.schedules.SCHEDULES name
    config.diffusion.num_timesteps = ml_collections.FieldReference(None, field_type=int)  # discrete schedules only
    config.diffusion.parameterization = "v"
    config.diffusion.weighting = "snr_plus_one"
    config.diffusion.loss = "mse"  # pdist.losses.LOSS_TYPES: mse, hybrid or vlb
    config.diffusion.learned_variance = False
    config.diffusion.importance_sampling = False  # loss-aware t for vlb (Improved DDPM Sec. 3.3)
    config.diffusion.vlb_weight = 0.001

    config.optim = ml_collections.ConfigDict()
    config.optim.optimizer = "adam"
    config.optim.learning_rate = 2e-4
    config.optim.warmup_steps = 1000
    config.optim.schedule = "constant"  # after warm-up: constant, linear, cosine or rex (to num_steps); or refined
    config.optim.refine_from = ""  # schedule "refined": the workdir of a run whose logged gradient norms it refines
    config.optim.b1 = 0.9
    config.optim.b2 = 0.999
    config.optim.eps = 1e-8
    config.optim.weight_decay = 0.0
    config.optim.grad_clip = 1.0  # global norm; 0 disables

    config.train = ml_collections.ConfigDict()
    config.train.batch_size = 128  # global, over all devices and processes
    config.train.grad_accum_steps = 1  # micro-batches per update: the batch is batch_size, in this many passes
    config.train.num_steps = 100_000
    config.train.ema_decay = 0.9999
    config.train.log_every = 100
    config.train.checkpoint_every = 5_000
    config.train.keep_checkpoints = 3
    config.train.fallback_checkpoint = (
        False  # resume from the previous checkpoint if the newest is corrupt (kept aside)
    )
    config.train.skip_nonfinite = 0  # updates with a NaN/inf loss or gradient norm to skip (and count) before stopping
    config.train.sample_every = 10_000  # sample grids to PNG and TensorBoard; 0 disables
    config.train.num_grid_samples = 64
    # classifier-free guidance: the probability that an example's label is replaced by the learned null class
    # (class-conditional models; 0.1 is usual); a model trained with it can be sampled with a guidance weight
    config.train.label_dropout = 0.0

    config.sample = ml_collections.ConfigDict()
    config.sample.method = "ddim"
    config.sample.num_steps = 128
    config.sample.grid = "auto"  # pdist.schedules.GRIDS; auto: respaced on a discrete schedule, else uniform
    config.sample.num_samples = 64
    config.sample.checkpoint = ml_collections.FieldReference(None, field_type=str)  # None: newest in workdir
    config.sample.use_ema = True
    config.sample.clip_x = True
    config.sample.seed = 0
    config.sample.batch_size = 256
    # classifier-free guidance weight w: x = (1 + w) x(z, c) - w x(z, null); None: the conditional model alone
    config.sample.guidance = ml_collections.FieldReference(None, field_type=float)
    # a DPM-OT expressway file (pdist.ot, Pretrained.expressway): noise goes to its target at t', the
    # sampler's num_steps run from there; None: from t = 1
    config.sample.ot = ml_collections.FieldReference(None, field_type=str)

    # Distillation (mode "distill"): config.optim, config.train.batch_size,
    # ema_decay, log/checkpoint periods and config.model.dropout apply to every round;
    # each round gets a fresh optimizer whose schedule spans that round's updates.
    config.distill = ml_collections.ConfigDict()
    config.distill.method = "progressive"  # a pdist.distillation.METHODS name
    config.distill.teacher = ml_collections.FieldReference(None, field_type=str)  # a teacher workdir or checkpoint
    config.distill.teacher_use_ema = True  # the first teacher is the checkpoint's EMA params
    config.distill.start_steps = 1024  # the teacher's DDIM steps; round 1's student takes half
    config.distill.final_steps = 1
    config.distill.updates_per_round = 50_000
    config.distill.updates_last_rounds = 100_000  # rounds whose students take 2 steps or 1
    config.distill.fidelity_samples = 256  # fixed noise: student N steps vs teacher 2N steps
    config.distill.grid_samples = 16  # per round in the side-by-side grid
    # method "guided" (Meng et al. 2023): stage 1 matches the guided teacher for w ~ U[guidance_min, guidance_max]
    # per example, on the teacher's own time grid, for stage1_updates; stage 2 is the progressive rounds with w
    config.distill.guidance_min = 0.0
    config.distill.guidance_max = 4.0
    config.distill.guidance_at_min = 0.0  # the share of training weights drawn exactly at guidance_min
    config.distill.stage1_updates = 50_000

    # Evaluation (mode "eval") of one checkpoint: every (sampler, steps) pair in
    # ``samplers`` over ``num_seeds`` seeds, scored against the reference split.
    config.eval = ml_collections.ConfigDict()
    config.eval.checkpoint = ml_collections.FieldReference(None, field_type=str)  # None: newest in workdir
    # comma-separated method:steps[:grid], e.g. "ddim:8,ddim:64,ddpm:50:respaced"; no grid: config.sample.grid's
    config.eval.samplers = "ddim:128"
    config.eval.num_samples = 50_000  # per sampler and seed
    config.eval.num_seeds = 3
    config.eval.seed = 0  # seeds seed .. seed + num_seeds - 1
    config.eval.evaluator = "auto"  # digits for the digits dataset, else the FID Inception-v3
    config.eval.inception_weights = ml_collections.FieldReference(
        None, field_type=str
    )  # npz from pdist.evaluation.convert
    config.eval.reference_split = "train"
    config.eval.pr_samples = 10_000  # precision/recall on this many reference and generated features
    config.eval.is_splits = 10  # Inception Score: mean over this many equal parts of the samples
    config.eval.batch_size = 256
    config.eval.use_ema = True
    # classifier-free guidance weights, comma-separated ("0,1,2,4"): every sampler at each; "": unguided
    config.eval.guidance = ""
    config.eval.ot = ml_collections.FieldReference(None, field_type=str)  # every sampler from this expressway
    config.eval.clip_x = True
    config.eval.nll = False  # also the bound in bits/dim on nll_split
    config.eval.nll_split = "test"
    config.eval.nll_examples = 1000  # 0: the whole split
    # None: a discrete model's own T; for a continuous model the continuous-time limit (Monte Carlo over t,
    # nll_draws times per image), or an integer T for the T-step bound with its decoder at the schedule's t_min
    config.eval.nll_timesteps = ml_collections.FieldReference(None, field_type=int)
    config.eval.nll_draws = 16
    config.eval.nll_variance = "small"  # small or large (pdist.diffusion.VARIANCES); learned ones use their own
    config.eval.nll_batch_size = 100

    # Editing (mode "edit", pdist.editing): the first num_images images of the data's `split` edited from their
    # class into each of `targets`, as a grid (source row, one row per target class) and an npz
    config.edit = ml_collections.ConfigDict()
    config.edit.checkpoint = ml_collections.FieldReference(None, field_type=str)  # None: newest in workdir
    config.edit.method = "ddcm"  # ddcm (InfEdit), sdedit, inversion (DDIM inversion, then DDIM)
    config.edit.split = "test"
    config.edit.num_images = 10
    config.edit.targets = ""  # comma-separated classes ("3,8"); "": every class
    config.edit.num_steps = 12  # ddcm: 2N evaluations (N calls on the doubled batch); inversion 2N; sdedit N
    config.edit.noise_fraction = 1.0  # ddcm: the fresh fraction of each step's noise variance (InfEdit's eta)
    config.edit.guidance = 1.0  # target branch's w (InfEdit's guidance scale 2 is w = 1)
    config.edit.source_guidance = 0.0  # source branch's w (InfEdit's scale 1: w = 0)
    config.edit.t_start = 1.0  # 1: from pure noise; < 1: from x0 noised to t_start (sdedit needs < 1)
    config.edit.attention_steps = 0  # ddcm: the first steps whose target attends with the source's queries, keys
    config.edit.seed = 0
    config.edit.use_ema = True
    config.edit.batch_size = 256
    return config


def _dotted_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    out = []
    for k, v in config.items():
        out += _dotted_keys(v, f"{prefix}{k}.") if isinstance(v, ml_collections.ConfigDict) else [prefix + k]
    return out


def check_key(config: ml_collections.ConfigDict, dotted: str) -> None:
    """One sentence (with the closest key) if ``config.<dotted>`` does not exist."""
    node = config
    for part in dotted.split("."):
        if not (isinstance(node, ml_collections.ConfigDict) and part in node):
            close = difflib.get_close_matches(dotted, _dotted_keys(config), n=1, cutoff=0.6)
            hint = f"did you mean config.{close[0]}?" if close else "the keys are listed in pdist/config.py."
            _fail(f"config.{dotted} is not a config key; {hint}")
        node = node[part]


def _fail(message: str):
    raise ConfigError(message)


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks a config; raises ConfigError with one sentence on the first problem."""
    check_one_of(config.mode, MODES, "mode")
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
    if model.guidance_input and config.mode in ("train", "distill"):
        _fail(
            "config.model.guidance_input=True is set by guided distillation in its students' configs; leave it "
            "False and distill with --config.distill.method=guided."
        )

    settings = config.optim
    check_one_of(settings.optimizer, optim.OPTIMIZERS, "optim.optimizer")
    check_one_of(settings.schedule, optim.SCHEDULES, "optim.schedule")
    if settings.learning_rate <= 0:
        _fail(f"config.optim.learning_rate={settings.learning_rate} must be positive.")
    if settings.warmup_steps < 0 or settings.grad_clip < 0:
        _fail("config.optim.warmup_steps and config.optim.grad_clip must be >= 0.")
    if settings.schedule == "refined" and config.mode in ("train", "distill"):
        refine.check_source(settings.refine_from, settings.optimizer)  # one sentence when it cannot be read

    _validate_train(config.train)
    if config.mode == "distill":
        _validate_distill(config)
    if config.mode == "eval":
        _validate_eval(config)
    if config.mode == "edit":
        _validate_edit(config)

    sample = config.sample
    check_one_of(sample.method, samplers.METHODS, "sample.method")
    check_one_of(sample.grid, schedules.GRIDS, "sample.grid")
    check_positive(sample.num_steps, "sample.num_steps")
    check_positive(sample.num_samples, "sample.num_samples")
    check_positive(sample.batch_size, "sample.batch_size")
    if config.mode in ("train", "distill"):  # this config's model samples (sample and eval read a checkpoint's)
        from pdist import build  # build imports what config does; imported here, on use

        try:
            schedules.time_grid(build.schedule(config), sample.num_steps, sample.grid)
        except ValueError as e:
            _fail(f"config.sample.grid={sample.grid!r} with config.sample.num_steps={sample.num_steps}: {e}")
        if sample.guidance is not None:
            build.check_guidance(config, sample.guidance)


def edit_targets(config: ml_collections.ConfigDict) -> list[int]:
    """The classes ``config.edit.targets`` names (every class when empty); one sentence on a bad entry."""
    classes, text = config.data.num_classes, config.edit.targets.strip()
    if not text:
        return list(range(classes))
    try:
        targets = [int(part) for part in text.split(",")]
    except ValueError:
        _fail(f"config.edit.targets={text!r} must be comma-separated class indices, e.g. '3,8'.")
    bad = [c for c in targets if not 0 <= c < classes]
    if bad:
        _fail(f"config.edit.targets names class {bad[0]}, outside [0, {classes}); give classes of the dataset.")
    return targets


def _validate_edit(config: ml_collections.ConfigDict) -> None:
    from pdist import editing  # imported on use, like build

    edit = config.edit
    check_one_of(edit.method, editing.EDITORS, "edit.method")
    for key in ("num_images", "num_steps", "batch_size"):
        check_positive(edit[key], f"edit.{key}")
    if not 0.0 <= edit.noise_fraction <= 1.0:
        _fail(f"config.edit.noise_fraction={edit.noise_fraction} must be in [0, 1] (1 is InfEdit's default).")
    if edit.guidance < 0 or edit.source_guidance < 0:
        _fail("config.edit.guidance and config.edit.source_guidance must be >= 0 (w = 0 is the conditional model).")
    if not 0.0 < edit.t_start <= 1.0:
        _fail(f"config.edit.t_start={edit.t_start} must be in (0, 1] (1: from pure noise).")
    if edit.method == "sdedit" and edit.t_start == 1.0:
        _fail("SDEdit starts from the image noised to config.edit.t_start; set it below 1 (e.g. 0.5).")
    if not 0 <= edit.attention_steps <= edit.num_steps:
        _fail(f"config.edit.attention_steps={edit.attention_steps} must be in [0, config.edit.num_steps].")
    edit_targets(config)


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


def _validate_distill(config: ml_collections.ConfigDict) -> None:
    settings = config.distill
    if not settings.teacher:
        _fail(
            "config.distill.teacher is not set; pass --config.distill.teacher=PATH (a teacher workdir or checkpoint)."
        )
    check_one_of(settings.method, METHODS, "distill.method")
    METHODS[settings.method].validate(config)
    check_positive(settings.fidelity_samples, "distill.fidelity_samples")
    check_positive(settings.grid_samples, "distill.grid_samples")


def parse_samplers(spec: str) -> list[tuple[str, int, str | None]]:
    """``"ddim:8,ddpm:50:respaced"`` -> ``[("ddim", 8, None), ("ddpm", 50, "respaced")]`` (None: the model's
    ``config.sample.grid``); one sentence on a malformed entry."""
    entries = []
    for item in str(spec).split(","):
        parts = item.strip().split(":")
        method, steps, grid = parts[0], parts[1] if len(parts) > 1 else "", parts[2:]
        if (
            method not in samplers.METHODS
            or not steps.isdigit()
            or int(steps) < 1
            or len(grid) > 1
            or (grid and grid[0] not in schedules.GRIDS)
        ):
            _fail(
                f"config.eval.samplers entry {item.strip()!r} is not method:steps or method:steps:grid with a method "
                f"in {sorted(samplers.METHODS)}, a positive step count and a grid in {list(schedules.GRIDS)} "
                "(e.g. 'ddim:8,ddpm:50:respaced')."
            )
        entries.append((method, int(steps), grid[0] if grid else None))
    return entries


def parse_guidance(spec: str) -> list[float | None]:
    """``"0,1,2.5"`` -> ``[0.0, 1.0, 2.5]``; ``""`` -> ``[None]`` (unguided); one sentence on a bad entry."""
    if not str(spec).strip():
        return [None]
    try:
        return [float(item) for item in str(spec).split(",")]
    except ValueError:
        _fail(f"config.eval.guidance={spec!r} is not a comma-separated list of guidance weights (e.g. '0,1,2,4').")


def _validate_eval(config: ml_collections.ConfigDict) -> None:
    settings = config.eval
    parse_samplers(settings.samplers)
    parse_guidance(settings.guidance)
    check_one_of(settings.evaluator, ("auto", *EVALUATORS), "eval.evaluator")
    for name in ("num_samples", "num_seeds", "pr_samples", "is_splits", "batch_size", "nll_batch_size"):
        check_positive(settings[name], f"eval.{name}")
    if settings.num_samples < max(4, settings.is_splits):
        _fail(
            f"config.eval.num_samples={settings.num_samples} is too few; precision/recall need at least 4 samples "
            f"and the Inception Score one per split (config.eval.is_splits={settings.is_splits})."
        )
    if resolve(settings.evaluator, config.data.name) == "inception":
        if not settings.inception_weights:
            _fail(
                "config.eval.inception_weights is not set; convert the FID Inception weights once with "
                "`python -m pdist.evaluation.convert pt_inception-2015-12-05-6726825d.pth inception.npz` "
                "and pass --config.eval.inception_weights=inception.npz."
            )
        if not files.isfile(settings.inception_weights):
            _fail(
                f"config.eval.inception_weights={settings.inception_weights!r} is not a file; pass the converted .npz."
            )
    if settings.nll:
        fixed = [v for v in diffusion.VARIANCES if v != "learned"]  # learned-variance models use their own
        check_one_of(settings.nll_variance, fixed, "eval.nll_variance")
        T = config.diffusion.num_timesteps
        if T is not None and settings.nll_timesteps not in (None, T):
            _fail(
                f"config.eval.nll_timesteps={settings.nll_timesteps} differs from the discrete model's T={T}; the "
                "bound of a discrete-time model is over its own levels, so leave config.eval.nll_timesteps at None."
            )
        if settings.nll_timesteps is not None:
            check_positive(settings.nll_timesteps, "eval.nll_timesteps")
        check_positive(settings.nll_draws, "eval.nll_draws")


def for_distillation(
    config: ml_collections.ConfigDict,
    *,
    start_steps: int,
    batch_size: int,
    learning_rate: float,
    updates_per_round: int = 50_000,
    updates_last_rounds: int = 100_000,
) -> ml_collections.ConfigDict:
    """A teacher's config turned into Progressive Distillation's settings (Salimans & Ho 2022, App. E).

    Every round: a fresh Adam whose learning rate falls linearly from
    ``learning_rate`` to 0, no warm-up, dropout 0, EMA off (the student is the
    last iterate; set ``config.train.ema_decay`` to keep one).
    """
    config.mode = "distill"
    config.distill.start_steps = start_steps
    config.distill.final_steps = 1
    config.distill.updates_per_round = updates_per_round
    config.distill.updates_last_rounds = updates_last_rounds
    config.model.dropout = 0.0
    config.optim.learning_rate = learning_rate
    config.optim.warmup_steps = 0
    config.optim.schedule = "linear"
    config.train.batch_size = batch_size
    config.train.ema_decay = 0.0
    config.train.checkpoint_every = min(config.train.checkpoint_every, updates_per_round)
    return config


PAPER_UPDATES = {"paper": (50_000, 100_000), "fast": (10_000, 10_000)}  # per round, and for 2 steps and 1


def paper_distillation(
    teacher_file: str, variant: str, *, start_steps: int, batch_size: int, learning_rate: float
) -> ml_collections.ConfigDict:
    """The paper's distillation of the teacher config in ``teacher_file``; ``variant`` 'paper' or 'fast'."""
    if variant not in PAPER_UPDATES:
        raise ValueError(f"Unknown distillation variant {variant!r}; choose one of {sorted(PAPER_UPDATES)}.")
    per_round, last_rounds = PAPER_UPDATES[variant]
    return for_distillation(
        from_file(teacher_file),
        start_steps=start_steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        updates_per_round=per_round,
        updates_last_rounds=last_rounds,
    )


def from_stored(values: dict) -> ml_collections.ConfigDict:
    """A config saved with a checkpoint, with defaults for keys added since it was written."""
    config = base_config()
    config.update(values)
    return config


def from_file(path: str, variant: str | None = None) -> ml_collections.ConfigDict:
    """``get_config()`` of a config file (``variant`` as after ``:`` on the command line)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("pdist_config_file", path)
    if spec is None:
        raise ImportError(f"{path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config() if variant is None else module.get_config(variant)
