"""The config every run starts from, and its validation.

Files in ``configs/`` call :func:`base_config` and override what their run
needs; ``--config.a.b=value`` overrides on the command line. :func:`validate`
checks a config before anything is built or compiled and stops with one
sentence naming the bad value and how to fix it.
"""

from __future__ import annotations

import ml_collections

from pdist import diffusion, samplers
from pdist.schedules import SCHEDULES

MODES = ("train", "sample")
OPTIMIZERS = ("adam", "adamw")
LR_SCHEDULES = ("constant", "linear", "cosine", "rex")


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
    c.train.num_steps = 100_000
    c.train.ema_decay = 0.9999
    c.train.log_every = 100
    c.train.checkpoint_every = 5_000
    c.train.keep_checkpoints = 3
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
    return c


def _fail(message: str):
    raise ValueError(message)


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
    if d.importance_sampling and d.loss != "vlb":
        _fail("config.diffusion.importance_sampling needs config.diffusion.loss='vlb' (it samples t for L_vlb).")

    m = config.model
    _positive(m.ch, "model.ch")
    _positive(m.num_res_blocks, "model.num_res_blocks")
    size = config.data.image_size
    if size % 2 ** (len(m.ch_mult) - 1):
        _fail(f"config.data.image_size={size} must be divisible by 2**(len(config.model.ch_mult) - 1).")
    if m.num_heads is None and (m.head_dim is None or m.head_dim <= 0):
        _fail("Set config.model.head_dim (channels per attention head) or config.model.num_heads.")
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
    _positive(t.num_steps, "train.num_steps")
    _positive(t.log_every, "train.log_every")
    _positive(t.checkpoint_every, "train.checkpoint_every")
    _positive(t.keep_checkpoints, "train.keep_checkpoints")
    if not 0.0 <= t.ema_decay < 1.0:
        _fail(f"config.train.ema_decay={t.ema_decay} must be in [0, 1).")

    s = config.sample
    _one_of(s.method, samplers.METHODS, "sample.method")
    _positive(s.num_steps, "sample.num_steps")
    _positive(s.num_samples, "sample.num_samples")
    _positive(s.batch_size, "sample.batch_size")


def from_file(path: str, variant: str | None = None) -> ml_collections.ConfigDict:
    """``get_config()`` of a config file (``variant`` as after ``:`` on the command line)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("pdist_config_file", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config() if variant is None else module.get_config(variant)
