"""The config every run starts from, and its validation.

Files in ``configs/`` call :func:`base_config` and override what their run
needs; ``--config.a.b=value`` overrides on the command line. :func:`validate`
checks a config before anything is built or compiled and stops with one
sentence naming the bad value and how to fix it.
"""

from __future__ import annotations

import difflib
import os

import ml_collections

from pdist import diffusion, samplers
from pdist.errors import ConfigError
from pdist.schedules import SCHEDULES

MODES = ("train", "sample", "distill", "eval")
EVALUATORS = ("auto", "digits", "inception")
OPTIMIZERS = ("adam", "adamw")
LR_SCHEDULES = ("constant", "linear", "cosine", "rex")
DTYPES = ("float32", "bfloat16")


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.mode = "train"
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.name = "digits"  # a TFDS name, or "digits" (built locally)
    c.data.data_dir = ml_collections.FieldReference(None, field_type=str)  # None: TFDS default
    c.data.split = "train"
    c.data.image_size = 8
    c.data.channels = 1
    c.data.num_classes = 10
    c.data.random_flip = False
    c.data.shuffle_buffer = 10_000
    c.data.cache = True

    c.model = ml_collections.ConfigDict()
    c.model.ch = 32
    c.model.ch_mult = (1, 2)
    c.model.num_res_blocks = 2
    c.model.attn_resolutions = (4,)
    c.model.head_dim = 32
    c.model.num_heads = ml_collections.FieldReference(None, field_type=int)
    c.model.dropout = 0.0
    c.model.resblock_updown = False
    c.model.class_conditional = False
    c.model.dtype = "float32"  # compute dtype; "bfloat16": mixed precision (parameters, optimizer state stay float32)
    c.model.remat = False  # recompute block activations in the backward pass (memory for compute)

    c.diffusion = ml_collections.ConfigDict()
    c.diffusion.schedule = "cosine_logsnr"  # a pdist.schedules.SCHEDULES name
    c.diffusion.num_timesteps = ml_collections.FieldReference(None, field_type=int)  # discrete schedules only
    c.diffusion.parameterization = "v"
    c.diffusion.weighting = "snr_plus_one"
    c.diffusion.loss = "mse"  # mse, hybrid or vlb
    c.diffusion.learned_variance = False
    c.diffusion.importance_sampling = False  # loss-aware t for vlb (Improved DDPM Sec. 3.3)
    c.diffusion.vlb_weight = 0.001

    c.optim = ml_collections.ConfigDict()
    c.optim.optimizer = "adam"
    c.optim.learning_rate = 2e-4
    c.optim.warmup_steps = 1000
    c.optim.schedule = "constant"  # after warm-up: constant, linear, cosine or rex, ending at num_steps
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.0
    c.optim.grad_clip = 1.0  # global norm; 0 disables

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 128  # global, over all devices and processes
    c.train.grad_accum_steps = 1  # micro-batches per update: the batch is batch_size, in this many passes
    c.train.num_steps = 100_000
    c.train.ema_decay = 0.9999
    c.train.log_every = 100
    c.train.checkpoint_every = 5_000
    c.train.keep_checkpoints = 3
    c.train.fallback_checkpoint = False  # resume from the previous checkpoint if the newest is corrupt (kept aside)
    c.train.skip_nonfinite = 0  # updates with a NaN/inf loss or gradient norm to skip (and count) before stopping
    c.train.sample_every = 10_000  # sample grids to PNG and TensorBoard; 0 disables
    c.train.num_grid_samples = 64

    c.sample = ml_collections.ConfigDict()
    c.sample.method = "ddim"
    c.sample.num_steps = 128
    c.sample.num_samples = 64
    c.sample.checkpoint = ml_collections.FieldReference(None, field_type=str)  # None: newest in workdir
    c.sample.use_ema = True
    c.sample.clip_x = True
    c.sample.seed = 0
    c.sample.batch_size = 256

    # Progressive distillation (mode "distill"): config.optim, config.train.batch_size,
    # ema_decay, log/checkpoint periods and config.model.dropout apply to every round;
    # each round gets a fresh optimizer whose schedule spans that round's updates.
    c.distill = ml_collections.ConfigDict()
    c.distill.teacher = ml_collections.FieldReference(None, field_type=str)  # a teacher workdir or checkpoint
    c.distill.teacher_use_ema = True  # the first teacher is the checkpoint's EMA params
    c.distill.start_steps = 1024  # the teacher's DDIM steps; round 1's student takes half
    c.distill.final_steps = 1
    c.distill.updates_per_round = 50_000
    c.distill.updates_last_rounds = 100_000  # rounds whose students take 2 steps or 1
    c.distill.fidelity_samples = 256  # fixed noise: student N steps vs teacher 2N steps
    c.distill.grid_samples = 16  # per round in the side-by-side grid

    # Evaluation (mode "eval") of one checkpoint: every (sampler, steps) pair in
    # ``samplers`` over ``num_seeds`` seeds, scored against the reference split.
    c.eval = ml_collections.ConfigDict()
    c.eval.checkpoint = ml_collections.FieldReference(None, field_type=str)  # None: newest in workdir
    c.eval.samplers = "ddim:128"  # comma-separated method:steps, e.g. "ddim:8,ddim:64,plms:16"
    c.eval.num_samples = 50_000  # per sampler and seed
    c.eval.num_seeds = 3
    c.eval.seed = 0  # seeds seed .. seed + num_seeds - 1
    c.eval.evaluator = "auto"  # digits for the digits dataset, else the FID Inception-v3
    c.eval.inception_weights = ml_collections.FieldReference(None, field_type=str)  # npz from pdist.evaluation.convert
    c.eval.reference_split = "train"
    c.eval.pr_samples = 10_000  # precision/recall on this many reference and generated features
    c.eval.is_splits = 10  # Inception Score: mean over this many equal parts of the samples
    c.eval.batch_size = 256
    c.eval.use_ema = True
    c.eval.clip_x = True
    c.eval.nll = False  # also the bound in bits/dim on nll_split
    c.eval.nll_split = "test"
    c.eval.nll_examples = 1000  # 0: the whole split
    c.eval.nll_timesteps = ml_collections.FieldReference(None, field_type=int)  # None: the model's T
    c.eval.nll_variance = "small"  # small or large; learned-variance models use their own
    c.eval.nll_batch_size = 100
    return c


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


def _one_of(value, allowed, name: str):
    if value not in allowed:
        _fail(f"config.{name}={value!r} is not valid; choose one of {sorted(allowed)}.")


def _positive(value, name: str):
    if not (isinstance(value, int) and value > 0):
        _fail(f"config.{name}={value!r} must be a positive integer.")


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks a config; raises ValueError with one sentence on the first problem."""
    _one_of(config.mode, MODES, "mode")
    d = config.diffusion
    _one_of(d.schedule, SCHEDULES, "diffusion.schedule")
    discrete = d.schedule in ("linear", "cosine")
    if discrete and d.num_timesteps is None:
        _fail(f"config.diffusion.schedule={d.schedule!r} is discrete; set config.diffusion.num_timesteps (e.g. 1000).")
    if not discrete and d.num_timesteps is not None:
        _fail(
            f"config.diffusion.schedule={d.schedule!r} is continuous in time; "
            "leave config.diffusion.num_timesteps at None or pick 'linear' or 'cosine'."
        )
    _one_of(d.parameterization, diffusion.PARAMETERIZATIONS, "diffusion.parameterization")
    _one_of(d.weighting, diffusion.WEIGHTINGS, "diffusion.weighting")
    _one_of(d.loss, ("mse", "hybrid", "vlb"), "diffusion.loss")
    if d.loss != "mse" and not (d.learned_variance and discrete):
        _fail(
            f"config.diffusion.loss={d.loss!r} trains variances on a discrete schedule; set "
            "config.diffusion.learned_variance=True and a discrete schedule, or use loss 'mse'."
        )
    if d.learned_variance and d.loss == "mse":
        _fail(
            "config.diffusion.learned_variance=True with config.diffusion.loss='mse' leaves the variance untrained "
            "(the MSE has no variance term); use loss 'hybrid' or 'vlb', or set learned_variance=False."
        )
    if d.importance_sampling and d.loss != "vlb":
        _fail("config.diffusion.importance_sampling needs config.diffusion.loss='vlb' (it samples t for L_vlb).")

    m = config.model
    _positive(m.ch, "model.ch")
    for name in ("ch_mult", "attn_resolutions"):
        value = m[name]
        if not (isinstance(value, (tuple, list)) and all(isinstance(v, int) and v > 0 for v in value)):
            _fail(f"config.model.{name}={value!r} must be a tuple of positive integers, e.g. (1, 2, 2).")
    if not m.ch_mult:
        _fail("config.model.ch_mult is empty; give one channel multiplier per resolution, e.g. (1, 2).")
    _positive(m.num_res_blocks, "model.num_res_blocks")
    size = config.data.image_size
    _positive(size, "data.image_size")
    _positive(config.data.channels, "data.channels")
    if size % 2 ** (len(m.ch_mult) - 1):
        _fail(f"config.data.image_size={size} must be divisible by 2**(len(config.model.ch_mult) - 1).")
    if m.num_heads is None and (m.head_dim is None or m.head_dim <= 0):
        _fail("Set config.model.head_dim (channels per attention head) or config.model.num_heads.")
    _one_of(m.dtype, DTYPES, "model.dtype")
    if m.class_conditional and config.data.num_classes <= 0:
        _fail("config.model.class_conditional=True needs config.data.num_classes > 0.")

    o = config.optim
    _one_of(o.optimizer, OPTIMIZERS, "optim.optimizer")
    _one_of(o.schedule, LR_SCHEDULES, "optim.schedule")
    if o.learning_rate <= 0:
        _fail(f"config.optim.learning_rate={o.learning_rate} must be positive.")
    if o.warmup_steps < 0 or o.grad_clip < 0:
        _fail("config.optim.warmup_steps and config.optim.grad_clip must be >= 0.")

    t = config.train
    _positive(t.batch_size, "train.batch_size")
    _positive(t.grad_accum_steps, "train.grad_accum_steps")
    if t.batch_size % t.grad_accum_steps:
        _fail(
            f"config.train.batch_size={t.batch_size} must be divisible by config.train.grad_accum_steps="
            f"{t.grad_accum_steps} (each update averages that many equal micro-batches)."
        )
    _positive(t.num_steps, "train.num_steps")
    _positive(t.log_every, "train.log_every")
    _positive(t.checkpoint_every, "train.checkpoint_every")
    _positive(t.keep_checkpoints, "train.keep_checkpoints")
    if not (isinstance(t.skip_nonfinite, int) and t.skip_nonfinite >= 0):
        _fail(f"config.train.skip_nonfinite={t.skip_nonfinite!r} must be an integer >= 0 (0: stop at the first).")
    if not 0.0 <= t.ema_decay < 1.0:
        _fail(f"config.train.ema_decay={t.ema_decay} must be in [0, 1).")

    if config.mode == "distill":
        _validate_distill(config)
    if config.mode == "eval":
        _validate_eval(config)

    s = config.sample
    _one_of(s.method, samplers.METHODS, "sample.method")
    _positive(s.num_steps, "sample.num_steps")
    _positive(s.num_samples, "sample.num_samples")
    _positive(s.batch_size, "sample.batch_size")


def _validate_distill(config: ml_collections.ConfigDict) -> None:
    d = config.distill
    if not d.teacher:
        _fail(
            "config.distill.teacher is not set; pass --config.distill.teacher=PATH (a teacher workdir or checkpoint)."
        )
    _positive(d.start_steps, "distill.start_steps")
    _positive(d.final_steps, "distill.final_steps")
    ratio = d.start_steps // d.final_steps
    if d.start_steps % d.final_steps or ratio < 2 or ratio & (ratio - 1):
        _fail(
            f"config.distill.start_steps={d.start_steps} must be config.distill.final_steps={d.final_steps} "
            "times a power of two (at least 2), so that every round halves the step count."
        )
    T = config.diffusion.num_timesteps
    if T is not None and T % d.start_steps:
        _fail(
            f"The teacher is discrete-time with T={T} steps and the first round's student grid "
            f"(t = i/{d.start_steps // 2}, midpoints i/{d.start_steps}) does not land on it; set "
            f"config.distill.start_steps to a divisor of {T} (e.g. {T & -T} for final_steps=1)."
        )
    _positive(d.updates_per_round, "distill.updates_per_round")
    _positive(d.updates_last_rounds, "distill.updates_last_rounds")
    _positive(d.fidelity_samples, "distill.fidelity_samples")
    _positive(d.grid_samples, "distill.grid_samples")


def parse_samplers(spec: str) -> list[tuple[str, int]]:
    """``"ddim:8,plms:16"`` -> ``[("ddim", 8), ("plms", 16)]``; one sentence on a malformed entry."""
    pairs = []
    for item in str(spec).split(","):
        method, _, steps = item.strip().partition(":")
        if method not in samplers.METHODS or not steps.isdigit() or int(steps) < 1:
            _fail(
                f"config.eval.samplers entry {item.strip()!r} is not method:steps with a method in "
                f"{sorted(samplers.METHODS)} and a positive step count (e.g. 'ddim:8,plms:16')."
            )
        pairs.append((method, int(steps)))
    return pairs


def _validate_eval(config: ml_collections.ConfigDict) -> None:
    e = config.eval
    parse_samplers(e.samplers)
    _one_of(e.evaluator, EVALUATORS, "eval.evaluator")
    for name in ("num_samples", "num_seeds", "pr_samples", "is_splits", "batch_size", "nll_batch_size"):
        _positive(e[name], f"eval.{name}")
    if e.num_samples < max(4, e.is_splits):
        _fail(
            f"config.eval.num_samples={e.num_samples} is too few; precision/recall need at least 4 samples "
            f"and the Inception Score one per split (config.eval.is_splits={e.is_splits})."
        )
    uses_inception = e.evaluator == "inception" or (e.evaluator == "auto" and config.data.name != "digits")
    if uses_inception and not e.inception_weights:
        _fail(
            "config.eval.inception_weights is not set; convert the FID Inception weights once with "
            "`python -m pdist.evaluation.convert pt_inception-2015-12-05-6726825d.pth inception.npz` "
            "and pass --config.eval.inception_weights=inception.npz."
        )
    if uses_inception and not os.path.isfile(e.inception_weights):
        _fail(f"config.eval.inception_weights={e.inception_weights!r} is not a file; pass the converted .npz.")
    if e.nll:
        _one_of(e.nll_variance, ("small", "large"), "eval.nll_variance")
        T = config.diffusion.num_timesteps
        if T is not None and e.nll_timesteps not in (None, T):
            _fail(
                f"config.eval.nll_timesteps={e.nll_timesteps} differs from the discrete model's T={T}; the bound of "
                "a discrete-time model is over its own levels, so leave config.eval.nll_timesteps at None."
            )
        if T is None and e.nll_timesteps is None:
            _fail(
                "The model is continuous-time; set config.eval.nll_timesteps (e.g. 1000) to choose the grid "
                "the bound is evaluated on."
            )


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
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config() if variant is None else module.get_config(variant)
