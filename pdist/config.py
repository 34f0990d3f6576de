"""The config every run starts from: its defaults, config files, stored configs and key checks.

Files in ``configs/`` call :func:`base_config` and override what their run
needs; ``--config.a.b=value`` overrides on the command line. The values are
checked by the job that reads them (:func:`pdist.jobs.validate`: the shared
sections in :mod:`pdist.jobs.sections`, each job's own in its module), before
anything is built or compiled, with one sentence naming the bad value and how
to fix it.
"""

from __future__ import annotations

import difflib

import ml_collections

from pdist.errors import ConfigError


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
    config.model.emb_ch = ml_collections.FieldReference(None, field_type=int)  # the embedding's width; None: 4 ch
    # how the noise level enters: "pdist" (sinusoids of 1000 atan(exp(-logsnr/2)) 2/pi), or the official
    # Progressive Distillation release's embedding of its logsnr_input_type: "inv_cos", "sigmoid", "linear", or
    # OpenAI's discrete time step: "timestep" (level i is step i - 1), "rescaled_timestep" (times 1000 / T)
    config.model.logsnr_input = "pdist"
    # OpenAI's and diffusers' conventions (pdist.interop): the embedding added in the residual blocks instead of
    # scale-shift (use_scale_shift_norm=False), GroupNorm's epsilon, the strided downsampling's padding
    config.model.scale_shift = True
    config.model.norm_eps = 1e-6
    config.model.downsample_padding = "same"  # or "symmetric"
    # the time step's sinusoids (diffusers' Timesteps): sines first (its flip_sin_to_cos=False), and frequencies
    # exp(-log(10000) k / (ch / 2 - freq_shift)) (its freq_shift; Ho et al.'s DDPM models: sines first, shift 1)
    config.model.sin_first = False
    config.model.freq_shift = 0.0
    config.model.mid_attention_norm = True  # False: no GroupNorm before the middle attention (diffusers' scale-shift)
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
    # A consistency student's (pdist.distillation.consistency, set in its stored config): x-hat is the consistency
    # function, the identity at the variance-exploding noise level sigma/alpha = consistency_sigma_min (0: an
    # ordinary model), with the paper's c_skip at data scale sigma_data
    config.diffusion.consistency_sigma_min = 0.0
    config.diffusion.sigma_data = 0.5

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
    # clipping keeps the network's eps-hat instead of recomputing it from the clipped x-hat (diffusers' schedulers'
    # clip_sample: what an imported diffusers pipeline samples with)
    config.sample.clip_keeps_eps = False
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
    config.distill.method = "progressive"  # a pdist.distillation.DISTILLERS name
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
    # method "consistency" (consistency distillation, Song et al. 2023, Alg. 2; the CIFAR-10 run's settings): one
    # round of `updates`; N Karras-spaced noise levels (rho) between sigma_min and sigma_max in sigma/alpha, and
    # t = 1 above them; one teacher step (ddim or heun) between neighbours; the target network an EMA (rate
    # target_ema, the paper's mu) of the student; distance l2 (squared) or pseudo_huber (c = huber_c, 0: the
    # improved-techniques 0.00054 sqrt(d)). Its students sample with the multistep consistency sampler.
    config.distill.consistency = ml_collections.ConfigDict()
    config.distill.consistency.updates = 800_000
    config.distill.consistency.num_scales = 18
    config.distill.consistency.sigma_min = 0.002
    config.distill.consistency.sigma_max = 80.0
    config.distill.consistency.rho = 7.0
    config.distill.consistency.solver = "heun"
    config.distill.consistency.distance = "l2"
    config.distill.consistency.huber_c = 0.0
    config.distill.consistency.target_ema = 0.95
    config.distill.consistency.student_steps = 1  # the reports' student samples (consistency sampler)
    # the classifier-free guidance weight w of the teacher's ODE the student distills (0: the conditional model);
    # w > 0 needs a teacher with a null class, and its student samples that guided ODE without guidance
    config.distill.consistency.guidance = 0.0

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
    )  # npz from pdist.interop.pytorch_fid
    config.eval.reference_split = "train"
    config.eval.pr_samples = 10_000  # precision/recall on this many reference and generated features
    config.eval.is_splits = 10  # Inception Score: mean over this many equal parts of the samples
    config.eval.batch_size = 256
    config.eval.use_ema = True
    # classifier-free guidance weights, comma-separated ("0,1,2,4"): every sampler at each; "": unguided
    config.eval.guidance = ""
    config.eval.ot = ml_collections.FieldReference(None, field_type=str)  # every sampler from this expressway
    config.eval.clip_x = True
    config.eval.clip_keeps_eps = False  # as config.sample.clip_keeps_eps, for the eval mode's samplers
    config.eval.nll = False  # also the bound in bits/dim on nll_split
    config.eval.nll_split = "test"
    config.eval.nll_examples = 1000  # 0: the whole split
    # None: a discrete model's own T; for a continuous model the continuous-time limit (Monte Carlo over t,
    # nll_draws times per image), or an integer T for the T-step bound with its decoder at the schedule's t_min
    config.eval.nll_timesteps = ml_collections.FieldReference(None, field_type=int)
    config.eval.nll_draws = 16
    config.eval.nll_variance = "small"  # small or large (pdist.diffusion.VARIANCES); learned ones use their own
    # the decoder's normal CDF (pdist.vlb.CDFS): exact, or improved-diffusion's tanh approximation (the protocol of
    # its papers' NLLs; what an imported OpenAI model is evaluated with)
    config.eval.nll_cdf = "exact"
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
    config.edit.attention_steps = 0  # ddcm: the first steps whose target attends with the source's queries and keys
    config.edit.seed = 0
    config.edit.use_ema = True
    config.edit.batch_size = 256
    return config


def _dotted_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    out = []
    for k, v in config.items():
        out += _dotted_keys(v, f"{prefix}{k}.") if isinstance(v, ml_collections.ConfigDict) else [prefix + k]
    return out


def key_help() -> dict[str, str]:
    """What each key of :func:`base_config` is for: the comment on its line, or the comment lines just above it
    (the defaults' own comments are the one source)."""
    import inspect
    import re

    out, above, defaults = {}, [], base_config()
    lines = inspect.getsource(base_config).splitlines()
    for i, line in enumerate(lines):
        text = line.strip()
        if text.startswith("#"):
            above.append(text.lstrip("# "))
            continue
        m = re.match(r"config\.([\w.]+) = ", text)
        if not m:
            above = []
            continue
        comment = text.split("  # ", 1)[1] if "  # " in text else ""
        if not comment and text.endswith("("):  # a value over several lines: the comment is inside or after
            for inner in (x.strip() for x in lines[i + 1 :]):
                comment = inner.split("  # ", 1)[1] if "  # " in inner else ""
                if comment or inner.startswith(")"):
                    break
        if not isinstance(get(defaults, m.group(1)), ml_collections.ConfigDict):
            out[m.group(1)] = " ".join([*above, comment]).strip()
        above = []
    return out


def describe(config: ml_collections.ConfigDict) -> str:
    """Every key of ``config`` with its value, the default where it differs, and what it is for (``python -m
    pdist.main --config=FILE --config.mode=show``)."""
    defaults, helps = base_config(), key_help()
    rows = []
    for key in _dotted_keys(config):
        value = get(config, key)
        try:
            default = get(defaults, key)
        except KeyError:
            default = value
        note = "" if default == value else f"  (default {default!r})"
        help_text = f"  # {helps[key]}" if helps.get(key) else ""
        rows.append(f"config.{key} = {value!r}{note}{help_text}")
    return "\n".join(rows)


def check_key(config: ml_collections.ConfigDict, dotted: str) -> None:
    """One sentence (with the closest key) if ``config.<dotted>`` does not exist."""
    node = config
    for part in dotted.split("."):
        if not (isinstance(node, ml_collections.ConfigDict) and part in node):
            close = difflib.get_close_matches(dotted, _dotted_keys(config), n=1, cutoff=0.6)
            hint = f"did you mean config.{close[0]}?" if close else "--config.mode=show lists every key."
            _fail(f"config.{dotted} is not a config key; {hint}")
        node = node[part]


def get(config: ml_collections.ConfigDict, dotted: str):
    """``config.<dotted>`` (``"data.image_size"``)."""
    for part in dotted.split("."):
        config = config[part]
    return config


def set_value(config: ml_collections.ConfigDict, dotted: str, value) -> None:
    """Sets ``config.<dotted>`` to ``value`` (the ConfigDict's type checks apply)."""
    *parents, leaf = dotted.split(".")
    for part in parents:
        config = config[part]
    config[leaf] = value


def _fail(message: str):
    raise ConfigError(message)


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
