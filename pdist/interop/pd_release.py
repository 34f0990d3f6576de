"""The official Progressive Distillation release (google-research ``diffusion_distillation``, Salimans & Ho 2022).

Its checkpoints are ``flax.serialization.to_bytes`` of its ``TrainState``: a msgpack map of ``step``,
``optimizer`` (``flax.optim``'s ``{"target": params, "state": ...}``, or nothing), ``ema_params`` and
``num_sample_steps`` (the DDIM steps a distilled student takes; 0 for a continuous-time teacher). It is read
here with msgpack alone (no ``flax.optim``, no pickle), and mapped onto pdist's UNet:

* its noise-level embedding is the UNet option ``model.logsnr_input`` (the release's ``logsnr_input_type``),
  its embedding width ``model.emb_ch``;
* ``class_emb`` (a dense layer on one-hot labels) becomes the class table (row c = kernel[c] + bias; the null
  row is the bias alone, what the dense layer gives for no class: the model was not trained with dropped
  labels, so guidance is refused);
* ``nin_shortcut`` (dense) becomes the 1x1 convolution, ``q/k/v/proj_out`` the attention's
  ``query/key/value/out``, and GroupNorm parameters of the shape older Flax wrote, (1, 1, 1, C), become (C,);
* ``mean_type`` is the parameterization, the cosine logSNR schedule of the config the schedule, and the
  config's sampler, steps and clipping pdist's ``config.sample``.

The release's configs are ml_collections files (``config/cifar_base.py``); :data:`PRESETS` holds the numbers
of the released models' configs, by the config file's name.
"""

from __future__ import annotations

import ml_collections
import msgpack
import numpy as np

from pdist.config import base_config
from pdist.errors import InputError

NAME = "pd-release"

# The released models' configs (diffusion_distillation/config/<name>.py): the fields pdist reads. Both use
# the cosine logSNR schedule on [-20, 20], continuous-time training, 1024 clipped DDIM steps, fixed large
# variances and the truncated-SNR weight, Adam with 1000 warm-up steps, EMA 0.9999 and clipping at 1.
_COSINE = dict(name="cosine", logsnr_min=-20.0, logsnr_max=20.0)


def _preset(dataset: dict, args: dict, mean_type: str, **train) -> dict:
    return dict(
        dataset=dataset,
        sampler="ddim",
        model=dict(
            args=dict(logsnr_input_type="inv_cos", resblock_resample=True, **args),
            mean_type=mean_type,
            logvar_type="fixed_large",
            mean_loss_weight_type="snr_trunc",
            train_num_steps=0,
            eval_sampling_num_steps=1024,
            eval_clip_denoised=True,
            train_logsnr_schedule=_COSINE,
            eval_logsnr_schedule=_COSINE,
        ),
        train=dict(optimizer="adam", learning_rate_warmup_steps=1000, ema_decay=0.9999, grad_clip=1.0, **train),
    )


PRESETS = {
    "cifar_base": _preset(
        dict(name="CIFAR10", args=dict(class_conditional=False, randflip=True)),
        dict(
            ch=256,
            emb_ch=1024,
            ch_mult=[1, 1, 1],
            num_res_blocks=3,
            attn_resolutions=[8, 16],
            num_heads=1,
            head_dim=None,
            dropout=0.2,
        ),  # fmt: skip
        "x",
        batch_size=128,
        learning_rate=2e-4,
        weight_decay=0.001,
    ),
    "imagenet64_base": _preset(
        dict(name="ImageNet", args=dict(image_size=64, class_conditional=True, randflip=True)),
        dict(
            ch=192,
            emb_ch=768,
            ch_mult=[1, 2, 3, 4],
            num_res_blocks=3,
            attn_resolutions=[8, 16, 32],
            num_heads=None,
            head_dim=64,
            dropout=0.1,
        ),  # fmt: skip
        "both",
        batch_size=2048,
        learning_rate=3e-4,
        weight_decay=0.0,
    ),
}
PRESETS["cifar_distill"] = PRESETS["cifar_base"]  # the students share their teacher's network and diffusion
PRESETS["imagenet64_distill"] = PRESETS["imagenet64_base"]

# dataset.name (and image size) -> pdist's data section
DATASETS = {
    "CIFAR10": dict(name="cifar10", image_size=32, channels=3, num_classes=10),
    "ImageNet": dict(name="imagenet_resized/{size}x{size}", channels=3, num_classes=1000),
}
WEIGHTINGS = {"constant": "constant", "snr": "snr", "snr_trunc": "truncated_snr", "v_mse": "snr_plus_one"}
SAMPLERS = {"ddim": "ddim", "noisy": "ddpm"}


def detect(head: bytes) -> bool:
    """A msgpack map (what ``flax.serialization.to_bytes`` writes) whose first keys are the TrainState's."""
    if not head or not (0x80 <= head[0] <= 0x8F or head[0] in (0xDE, 0xDF)):
        return False
    return b"ema_params" in head[:4096] or b"step" in head[:64]


def read(data: bytes) -> dict:
    """The TrainState's fields as nested dicts of NumPy arrays (msgpack with Flax's ndarray extension)."""
    try:
        state = msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except (ValueError, msgpack.UnpackException, TypeError) as e:
        raise InputError(f"This file is not a readable Progressive Distillation checkpoint ({e}).") from e
    if not isinstance(state, dict) or "ema_params" not in state:
        raise InputError(
            "This msgpack file holds no 'ema_params'; give a checkpoint the official Progressive Distillation "
            "code wrote (its TrainState)."
        )
    return state


def _ext_hook(code: int, data: bytes):
    """Flax's msgpack extension: code 1 is an ndarray (shape, dtype name, bytes); 2 a native complex; 3 a scalar."""
    if code == 1:
        shape, dtype, buffer = msgpack.unpackb(data, raw=False)
        dtype = np.dtype(dtype)
        if dtype.kind not in "fiub" or int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != len(buffer):
            raise ValueError(f"an array of shape {shape} and dtype {dtype} does not fit its {len(buffer)} bytes")
        return np.frombuffer(buffer, dtype=dtype).reshape(shape).copy()
    if code == 3:
        dtype, buffer = msgpack.unpackb(data, raw=False)
        return np.frombuffer(buffer, dtype=np.dtype(dtype))[0]
    raise ValueError(f"unknown msgpack extension {code}")


def release_config(source_config: str | None) -> ml_collections.ConfigDict:
    """The release's config: a preset name (:data:`PRESETS`) or the path of an official-style config file."""
    if not source_config:
        raise InputError(
            "A Progressive Distillation checkpoint needs --source_config: the release's config file (such as "
            f"config/cifar_base.py) or a preset name ({', '.join(sorted(PRESETS))})."
        )
    if source_config in PRESETS:
        return ml_collections.ConfigDict(PRESETS[source_config])
    from pdist import config as config_lib
    from pdist.runtime import files

    if not files.exists(source_config):
        raise InputError(
            f"--source_config={source_config!r} is neither a preset ({', '.join(sorted(PRESETS))}) nor a file."
        )
    return config_lib.from_file(source_config)


def to_pdist_config(release: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """pdist's config of the model ``release`` (the release's config) describes: network, diffusion, sampling
    and the training settings pdist has, so that continued training and distillation follow the paper."""
    config = base_config()
    ds, m, args = release.dataset, release.model, release.model.args
    if ds.name not in DATASETS:
        raise InputError(f"The release's dataset {ds.name!r} has no pdist dataset; choose one of {sorted(DATASETS)}.")
    data = dict(DATASETS[ds.name])
    size = int(ds.args.get("image_size", data.get("image_size", 0)))
    config.data.name = data["name"].format(size=size)
    config.data.image_size, config.data.channels = size, data["channels"]
    config.data.num_classes = data["num_classes"]
    config.data.random_flip = bool(ds.args.get("randflip", True))
    for name in ("train_logsnr_schedule", "eval_logsnr_schedule"):
        s = m.get(name)
        if s is not None and (s.name != "cosine" or s.logsnr_min != -20.0 or s.logsnr_max != 20.0):
            raise InputError(
                f"The release's {name} is {dict(s)}; pdist imports the cosine logSNR schedule on [-20, 20] only."
            )
    if tuple(args.get("logsnr_scale_range", (-10.0, 10.0))) != (-10.0, 10.0):
        raise InputError("The release's logsnr_scale_range is not (-10, 10), the only range pdist imports.")
    if "learned" in m.logvar_type:
        raise InputError(
            f"The release's logvar_type {m.logvar_type!r} (learned) is not imported; pdist reads fixed ones."
        )
    cm = config.model
    cm.ch, cm.emb_ch = int(args.ch), int(args.get("emb_ch", 4 * args.ch))
    cm.ch_mult, cm.num_res_blocks = tuple(args.ch_mult), int(args.num_res_blocks)
    cm.attn_resolutions = tuple(args.attn_resolutions)
    cm.num_heads, cm.head_dim = args.get("num_heads"), args.get("head_dim")
    cm.dropout, cm.resblock_updown = float(args.dropout), bool(args.get("resblock_resample", False))
    cm.logsnr_input = args.logsnr_input_type
    cm.class_conditional = bool(ds.args.get("class_conditional", False))
    d = config.diffusion
    d.schedule, d.parameterization = "cosine_logsnr", m.mean_type
    d.weighting = WEIGHTINGS[m.mean_loss_weight_type]
    t = release.get("train", {})
    o = config.optim
    o.learning_rate = float(t.get("learning_rate", o.learning_rate))
    o.warmup_steps = int(t.get("learning_rate_warmup_steps", o.warmup_steps))
    o.weight_decay = float(t.get("weight_decay", 0.0))  # flax.optim.Adam's is decoupled (AdamW), as pdist's
    o.grad_clip = float(t.get("grad_clip", o.grad_clip))
    config.train.batch_size = int(t.get("batch_size", config.train.batch_size))
    config.train.ema_decay = float(t.get("ema_decay", config.train.ema_decay))
    s = config.sample
    s.method = SAMPLERS.get(release.get("sampler", "ddim"), "ddim")
    s.num_steps = int(m.get("eval_sampling_num_steps", s.num_steps))
    s.clip_x = bool(m.get("eval_clip_denoised", True))
    s.grid = "uniform"  # the release's DDIM runs on t = i / N
    return config


def _norm(p: dict) -> dict:
    return {k: np.asarray(v).reshape(-1) for k, v in p.items()}  # older Flax wrote (1, 1, 1, C)


def _res(p: dict) -> dict:
    out = {
        "GroupNorm_0": _norm(p["norm1"]),
        "Conv_0": p["conv1"],
        "Dense_0": p["temb_proj"],
        "GroupNorm_1": _norm(p["norm2"]),
        "Conv_1": p["conv2"],
    }
    if "nin_shortcut" in p:
        k = np.asarray(p["nin_shortcut"]["kernel"])
        out["Conv_2"] = {"kernel": k.reshape(1, 1, *k.shape), "bias": p["nin_shortcut"]["bias"]}
    return out


def _attn(p: dict) -> dict:
    names = {"q": "query", "k": "key", "v": "value", "proj_out": "out"}
    return {"GroupNorm_0": _norm(p["norm"]), "MultiHeadDotProductAttention_0": {names[k]: p[k] for k in names}}


def to_pdist_params(release: dict, config: ml_collections.ConfigDict) -> dict:
    """The release's parameter tree as pdist's UNet's (``config.model``), in pdist's names.

    Walks the network in the order both build it: the release's ``down_{l}.block_{b}`` / ``attn`` /
    ``downsample``, ``mid``, ``up_...`` become pdist's numbered ``ResBlock_i`` / ``AttnBlock_j`` / ``Conv_k``.
    A missing tensor raises KeyError with the release's name; :func:`check_shapes` compares the result.
    """
    m = config.model
    out = {"Dense_0": release["dense0"], "Dense_1": release["dense1"]}
    if "class_emb" in release:
        k, b = np.asarray(release["class_emb"]["kernel"]), np.asarray(release["class_emb"]["bias"])
        out["Embed_0"] = {"embedding": np.concatenate([k + b, b[None]], axis=0)}
    counts = {"res": 0, "attn": 0, "conv": 0}

    def put(kind: str, value: dict) -> None:
        prefix = {"res": "ResBlock", "attn": "AttnBlock", "conv": "Conv"}[kind]
        out[f"{prefix}_{counts[kind]}"] = value
        counts[kind] += 1

    def take(name: str) -> dict:
        if name not in release:
            raise KeyError(name)
        return release[name]

    put("conv", take("conv_in"))
    size, levels = int(config.data.image_size), len(m.ch_mult)
    for level in range(levels):
        for b in range(m.num_res_blocks):
            put("res", _res(take(f"down_{level}.block_{b}")))
            if size in m.attn_resolutions:
                put("attn", _attn(take(f"down_{level}.attn_{b}")))
        if level != levels - 1:
            sample = take(f"down_{level}.downsample")
            put("res", _res(sample)) if m.resblock_updown else put("conv", sample)
            size //= 2
    put("res", _res(take("mid.block_1")))
    put("attn", _attn(take("mid.attn_1")))
    put("res", _res(take("mid.block_2")))
    for level in reversed(range(levels)):
        for b in range(m.num_res_blocks + 1):
            put("res", _res(take(f"up_{level}.block_{b}")))
            if size in m.attn_resolutions:
                put("attn", _attn(take(f"up_{level}.attn_{b}")))
        if level != 0:
            sample = take(f"up_{level}.upsample")
            put("res", _res(sample)) if m.resblock_updown else put("conv", sample)
            size *= 2
    out["GroupNorm_0"] = _norm(take("norm_out"))
    put("conv", take("conv_out"))
    return out


def load(data: bytes, source_config: str | None, source_flags: str | None) -> tuple:
    """(pdist config, parameters, EMA parameters, step, metadata) of a release checkpoint's bytes."""
    del source_flags  # the release is configured by its config file
    state = read(data)
    config = to_pdist_config(release_config(source_config))
    ema = state["ema_params"]
    optimizer = state.get("optimizer") or {}
    params = optimizer.get("target") if isinstance(optimizer, dict) else None
    steps = int(state.get("num_sample_steps") or 0)
    if steps > 0:  # a distilled student (or a discrete-time teacher): its steps are its default
        config.sample.num_steps = steps
        config.distill.start_steps = steps
    mapped = _mapped(ema, config)
    return (
        config,
        (mapped if params is None else _mapped(params, config)),
        mapped,
        int(state.get("step", 0)),
        ({"sampling_steps": steps} if steps > 0 else {}),
    )


def _mapped(tree: dict, config) -> dict:
    try:
        return to_pdist_params(tree, config)
    except KeyError as e:
        raise InputError(
            f"The checkpoint has no tensor {e.args[0]!r}, which the config's network needs; the config does not "
            "describe these weights (check --source_config)."
        ) from None
