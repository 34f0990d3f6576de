"""diffusers pipeline folders: a ``UNet2DModel`` and its DDPM/DDIM scheduler as a pdist model, exactly.

A folder as ``save_pretrained`` writes it (``model_index.json``, ``unet/config.json`` with
``diffusion_pytorch_model.safetensors``, ``scheduler/scheduler_config.json``), or a bare ``unet/`` folder with
the scheduler's config given as ``--source_config``. The weights are read with the ``safetensors`` package's
numpy API (no PyTorch).

``UNet2DModel`` in Ho et al.'s layout is pdist's UNet with options (``pdist.models.unet``):

* the time step: diffusers gives the network the scheduler's index t in [0, T) (``logsnr_input="timestep"``:
  pdist's level i is t = i - 1), embedded by its ``Timesteps``: ``flip_sin_to_cos`` False is
  ``model.sin_first``, ``freq_shift`` is ``model.freq_shift``;
* ``resnet_time_scale_shift``: ``default`` adds the embedding before the second norm
  (``model.scale_shift=False``), ``scale_shift`` is pdist's scale-shift, and then diffusers' middle attention
  block has no GroupNorm (``model.mid_attention_norm=False``);
* ``downsample_padding`` 0 pads the strided convolution (0, 1, 0, 1) (Flax's "same"), 1 pads one on each side
  ("symmetric"); ``norm_eps`` is ``model.norm_eps``;
* ``block_out_channels`` are ``ch * ch_mult``; ``AttnDownBlock2D`` / ``AttnUpBlock2D`` at a level put attention
  at its resolution (``attn_resolutions``), in both halves; ``attention_head_dim`` None is one head, else heads
  of that many channels (``head_dim``).

The scheduler: ``num_train_timesteps`` T, ``beta_schedule`` ``linear`` (Ho's 1e-4 to 0.02 at T = 1000, which
is pdist's ``linear`` schedule, scaled by 1000 / T at other T) or ``squaredcos_cap_v2`` (pdist's ``cosine``),
``prediction_type`` epsilon / sample / v_prediction as eps / x / v, ``variance_type`` fixed_small (beta-tilde)
or learned_range (pdist's learned variance, the output's second half), ``clip_sample`` as sampling's
``clip_x``. Anything else is refused in one sentence that names the field.
"""

from __future__ import annotations

import hashlib
import json
import math
import os

import ml_collections
import numpy as np

from pdist.config import base_config
from pdist.errors import InputError
from pdist.interop.layers import Tracked, conv, dense, group_norm, map_tensors, res_block, unconv, unlinear, unnorm
from pdist.runtime import files

NAME = "diffusers"
WEIGHTS = "diffusion_pytorch_model.safetensors"
SCHEDULER = os.path.join("scheduler", "scheduler_config.json")

# UNet2DModel config fields pdist's UNet holds at one value only: {field: (the values it takes, why)}
FIXED = {
    "act_fn": (("silu",), "pdist's UNet uses SiLU"),
    "center_input_sample": ((False,), "pdist's UNet takes the sample as it is"),
    "time_embedding_type": (("positional",), "pdist's UNet embeds the time step in sinusoids"),
    "class_embed_type": ((None,), "class embeddings of diffusers are not imported yet"),
    "num_class_embeds": ((None,), "class embeddings of diffusers are not imported yet"),
    "mid_block_type": (("UNetMidBlock2D",), "pdist's middle is two residual blocks around attention"),
    "add_attention": ((True,), "pdist's middle block always holds attention"),
    "mid_block_scale_factor": ((1, 1.0), "pdist's blocks do not rescale their output"),
    "attn_norm_num_groups": ((None, 32), "pdist's attention normalizes over 32 groups"),
    "norm_num_groups": ((32,), "pdist's GroupNorm has 32 groups"),
    "downsample_type": (("conv",), "pdist's downsampling is a strided convolution here"),
    "upsample_type": (("conv",), "pdist's upsampling is nearest-neighbour and a convolution here"),
    "resnet_time_scale_shift": (("default", "scale_shift"), "pdist's blocks add or scale-shift the embedding"),
    "downsample_padding": ((0, 1), "pdist pads the strided convolution as diffusers' 0 or 1"),
}
SCHEDULER_FIXED = {
    "_class_name": (("DDPMScheduler", "DDIMScheduler"), "pdist imports DDPM and DDIM schedulers"),
    "beta_schedule": (("linear", "squaredcos_cap_v2"), "pdist's discrete schedules are these"),
    "trained_betas": ((None,), "a table of betas is not a pdist schedule yet"),
    "prediction_type": (("epsilon", "sample", "v_prediction"), "pdist predicts eps, x or v"),
    "variance_type": (("fixed_small", "learned_range"), "pdist samples with beta-tilde or the learned variance"),
    "thresholding": ((False,), "pdist clips x-hat but does not threshold it dynamically"),
    "clip_sample_range": ((1.0,), "pdist clips x-hat to [-1, 1]"),
    "rescale_betas_zero_snr": ((False,), "pdist does not rescale the schedule to zero terminal SNR"),
}
PARAMETERIZATIONS = {"epsilon": "eps", "sample": "x", "v_prediction": "v"}


def _unet_dir(path: str) -> str | None:
    for folder in (os.path.join(path, "unet"), path):
        if files.isfile(os.path.join(folder, "config.json")):
            return folder
    return None


def detect_folder(path: str) -> bool:
    """Whether ``path`` is a diffusers pipeline folder or a UNet2DModel folder."""
    folder = _unet_dir(path)
    if folder is None:
        return False
    try:
        return json.loads(files.read_bytes(os.path.join(folder, "config.json"))).get("_class_name") == "UNet2DModel"
    except (ValueError, UnicodeDecodeError):
        return False


def _check(cfg: dict, fixed: dict, where: str) -> None:
    for key, (allowed, why) in fixed.items():
        value = cfg.get(key, allowed[0])
        if value not in allowed:
            raise InputError(f"{where} has {key}={value!r}; pdist imports {' or '.join(map(repr, allowed))} ({why}).")


def to_pdist_config(unet: dict, scheduler: dict) -> ml_collections.ConfigDict:
    """The pdist config of a UNet2DModel config and a scheduler config (dicts of their JSON files)."""
    _check(unet, FIXED, "The UNet's config.json")
    _check(scheduler, SCHEDULER_FIXED, "The scheduler's config")
    down, up = list(unet["down_block_types"]), list(unet["up_block_types"])
    known_down, known_up = ("DownBlock2D", "AttnDownBlock2D"), ("UpBlock2D", "AttnUpBlock2D")
    for types, known, name in ((down, known_down, "down_block_types"), (up, known_up, "up_block_types")):
        for t in types:
            if t not in known:
                raise InputError(f"The UNet's config.json has {name} {t!r}; pdist imports {' and '.join(known)}.")
    mirrored = len(up) == len(down) and all(
        d.startswith("Attn") == u.startswith("Attn") for d, u in zip(down, up[::-1], strict=True)
    )
    if not mirrored:
        raise InputError(
            f"The UNet's config.json has down_block_types {down} and up_block_types {up}; pdist's UNet has "
            "attention at the same levels in both halves (AttnUpBlock2D mirroring each AttnDownBlock2D)."
        )
    channels = [int(c) for c in unet["block_out_channels"]]
    ch = channels[0]
    if len(channels) != len(down) or any(c % ch for c in channels):
        raise InputError(
            f"The UNet's config.json has block_out_channels={channels}; pdist builds multiples of the first, "
            "one per block."
        )
    size, c_in, c_out = int(unet["sample_size"]), int(unet["in_channels"]), int(unet["out_channels"])
    learned = scheduler.get("variance_type", "fixed_small") == "learned_range"
    if c_out != (2 * c_in if learned else c_in):
        raise InputError(
            f"The UNet's config.json has out_channels={c_out} for in_channels={c_in}; with the scheduler's "
            f"variance_type pdist's network predicts {2 * c_in if learned else c_in}."
        )

    config = base_config()
    config.data.image_size, config.data.channels = size, c_in
    # a guess from the shape (Ho's models: CIFAR-10 at 32, CelebA-HQ, LSUN church and bedroom at 256); the data to
    # evaluate or distill on is --config.data.name=
    config.data.name = "cifar10" if (size, c_in) == (32, 3) else "celeb_a_hq" if size == 256 else config.data.name
    m = config.model
    m.ch, m.ch_mult, m.num_res_blocks = ch, tuple(c // ch for c in channels), int(unet["layers_per_block"])
    m.attn_resolutions = tuple(size // 2**i for i, t in enumerate(down) if t.startswith("Attn"))
    head = unet.get("attention_head_dim")
    m.num_heads, m.head_dim = (1, None) if head is None else (None, int(head))
    m.dropout = float(unet.get("dropout", 0.0))
    m.emb_ch = None if unet.get("time_embedding_dim") in (None, 4 * ch) else int(unet["time_embedding_dim"])
    m.logsnr_input = "timestep"
    m.scale_shift = unet.get("resnet_time_scale_shift", "default") == "scale_shift"
    # diffusers' middle attention has a GroupNorm with "default", or where attn_norm_num_groups says so
    m.mid_attention_norm = not m.scale_shift or unet.get("attn_norm_num_groups") is not None
    m.norm_eps = float(unet.get("norm_eps", 1e-5))
    m.downsample_padding = "same" if int(unet.get("downsample_padding", 1)) == 0 else "symmetric"
    m.sin_first, m.freq_shift = not bool(unet.get("flip_sin_to_cos", True)), float(unet.get("freq_shift", 0))

    d = config.diffusion
    T = int(scheduler.get("num_train_timesteps", 1000))
    d.num_timesteps = T
    if scheduler.get("beta_schedule", "linear") == "linear":
        start, end = float(scheduler.get("beta_start", 1e-4)), float(scheduler.get("beta_end", 0.02))
        scale = 1000.0 / T  # pdist's linear betas run from 1e-4 to 0.02 at T = 1000, times 1000 / T
        if not (math.isclose(start, scale * 1e-4, rel_tol=1e-9) and math.isclose(end, scale * 0.02, rel_tol=1e-9)):
            raise InputError(
                f"The scheduler's config has beta_start={start} and beta_end={end} at num_train_timesteps={T}; "
                f"pdist's linear schedule is {scale * 1e-4:g} to {scale * 0.02:g} there (Ho's, scaled by 1000 / T)."
            )
        d.schedule = "linear"
    else:
        d.schedule = "cosine"
    d.parameterization = PARAMETERIZATIONS[scheduler.get("prediction_type", "epsilon")]
    d.learned_variance = learned
    d.loss = "hybrid" if learned else "mse"
    d.weighting = {"eps": "snr", "x": "constant", "v": "snr_plus_one"}[d.parameterization]  # the MSE of its output
    s = config.sample
    s.clip_x = bool(scheduler.get("clip_sample", True))
    s.clip_keeps_eps = True  # diffusers' clip_sample clips x-hat and steps with the network's eps-hat
    config.eval.clip_x, config.eval.clip_keeps_eps = s.clip_x, True  # and the eval mode samples so too
    s.grid = _grid(scheduler)
    if scheduler.get("_class_name") == "DDPMScheduler":  # DDPMPipeline's every level (those above the offset)
        s.method, s.num_steps = "ddpm", T - int(scheduler.get("steps_offset", 0))
    else:
        s.method, s.num_steps = "ddim", 50  # DDIMPipeline's default number of steps
    config.optim.warmup_steps, config.optim.grad_clip = 0, 0.0
    return config


def _grid(scheduler: dict) -> str:
    """The pdist time grid of the scheduler's ``timestep_spacing`` and ``steps_offset`` (pdist.schedules: level i
    is diffusers' time step i - 1)."""
    spacing, offset = scheduler.get("timestep_spacing", "leading"), int(scheduler.get("steps_offset", 0))
    if spacing not in ("leading", "trailing", "linspace") or (offset and spacing != "leading"):
        raise InputError(
            f"The scheduler's config has timestep_spacing={spacing!r} and steps_offset={offset}; pdist imports "
            "'leading' (with any steps_offset), 'trailing' and 'linspace' spacings, the last two without offset."
        )
    if spacing == "linspace" and scheduler.get("_class_name") == "DDIMScheduler":
        raise InputError(
            "The scheduler's config is a DDIMScheduler with timestep_spacing='linspace', whose step goes from t to "
            "t - T // N rather than to its next time step, so it samples on no grid; set timestep_spacing to "
            "'trailing' or 'leading' in scheduler_config.json (pdist's DDIM equals DDIMScheduler on both)."
        )
    return f"leading+{offset}" if offset else spacing


# pdist's ResBlock layers and diffusers' ResnetBlock2D names for them
_RES_NAMES = {"GroupNorm_0": "norm1", "Conv_0": "conv1", "Dense_0": "time_emb_proj", "GroupNorm_1": "norm2",
              "Conv_1": "conv2", "Conv_2": "conv_shortcut"}  # fmt: skip


def _res(sd: dict, p: str) -> dict:
    return res_block(sd, *(f"{p}.{n}" for n in _RES_NAMES.values()))


def _attn(sd: dict, p: str, heads: int, norm: bool = True) -> dict:
    mha = {}
    for name, source in (("query", "to_q"), ("key", "to_k"), ("value", "to_v")):
        w, b = np.asarray(sd[f"{p}.{source}.weight"], np.float32), np.asarray(sd[f"{p}.{source}.bias"], np.float32)
        c = w.shape[1]
        mha[name] = {"kernel": w.T.reshape(c, heads, c // heads), "bias": b.reshape(heads, c // heads)}
    w = np.asarray(sd[f"{p}.to_out.0.weight"], np.float32)
    c = w.shape[0]
    mha["out"] = {"kernel": w.T.reshape(heads, c // heads, c), "bias": np.asarray(sd[f"{p}.to_out.0.bias"], np.float32)}
    return {
        **({"GroupNorm_0": group_norm(sd, f"{p}.group_norm")} if norm else {}),
        "MultiHeadDotProductAttention_0": mha,
    }


def _plan(config: ml_collections.ConfigDict) -> list[tuple]:
    """Both networks' layers in the order they are built: ``(pdist name, kind, diffusers prefix, *extra)`` with
    kind ``dense`` / ``conv`` / ``norm`` / ``res`` / ``attn`` (extra: heads, whether it has a norm);
    ``down_blocks.{i}`` / ``mid_block`` / ``up_blocks.{i}`` are pdist's numbered ``ResBlock_k``, ``AttnBlock_k``
    and ``Conv_k``. The one walk both directions read (:func:`to_pdist_params`, :func:`to_diffusers_tensors`)."""
    m = config.model
    plan = [("Dense_0", "dense", "time_embedding.linear_1"), ("Dense_1", "dense", "time_embedding.linear_2")]
    counts = {"ResBlock": 0, "AttnBlock": 0, "Conv": 0}

    def put(kind: str, *row) -> None:
        plan.append((f"{kind}_{counts[kind]}", *row))
        counts[kind] += 1

    def heads(channels: int) -> int:
        return m.num_heads if m.num_heads is not None else channels // m.head_dim

    put("Conv", "conv", "conv_in")
    size, levels = int(config.data.image_size), len(m.ch_mult)
    for level, mult in enumerate(m.ch_mult):
        for j in range(m.num_res_blocks):
            put("ResBlock", "res", f"down_blocks.{level}.resnets.{j}")
            if size in m.attn_resolutions:
                put("AttnBlock", "attn", f"down_blocks.{level}.attentions.{j}", heads(m.ch * mult), True)
        if level != levels - 1:
            put("Conv", "conv", f"down_blocks.{level}.downsamplers.0.conv")
            size //= 2
    put("ResBlock", "res", "mid_block.resnets.0")
    put("AttnBlock", "attn", "mid_block.attentions.0", heads(m.ch * m.ch_mult[-1]), bool(m.mid_attention_norm))
    put("ResBlock", "res", "mid_block.resnets.1")
    for k, (level, mult) in enumerate(reversed(list(enumerate(m.ch_mult)))):
        for j in range(m.num_res_blocks + 1):
            put("ResBlock", "res", f"up_blocks.{k}.resnets.{j}")
            if size in m.attn_resolutions:
                put("AttnBlock", "attn", f"up_blocks.{k}.attentions.{j}", heads(m.ch * mult), True)
        if level != 0:
            put("Conv", "conv", f"up_blocks.{k}.upsamplers.0.conv")
            size *= 2
    plan.append(("GroupNorm_0", "norm", "conv_norm_out"))
    put("Conv", "conv", "conv_out")
    if m.class_conditional:  # pdist's label embedding, its null class the last row: num_class_embeds
        plan.append(("Embed_0", "embed", "class_embedding"))
    return plan


_READ = {
    "dense": lambda sd, p: dense(sd[f"{p}.weight"], sd[f"{p}.bias"]),
    "conv": lambda sd, p: conv(sd[f"{p}.weight"], sd[f"{p}.bias"]),
    "norm": group_norm,
    "res": _res,
    "attn": _attn,
    "embed": lambda sd, p: {"embedding": np.asarray(sd[f"{p}.weight"], np.float32)},
}


def to_pdist_params(sd: dict, config: ml_collections.ConfigDict) -> dict:
    """The UNet's tensors as pdist's UNet's parameters (:func:`_plan`). A missing tensor raises KeyError with its
    name."""
    return {name: _READ[kind](sd, prefix, *extra) for name, kind, prefix, *extra in _plan(config)}


def to_diffusers_tensors(params: dict, config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """pdist's UNet's parameters as the tensors of the ``UNet2DModel`` that :func:`to_unet_config` describes
    (float32, PyTorch's layouts): :func:`to_pdist_params` inverted, layer by layer."""
    out: dict[str, np.ndarray] = {}
    for name, kind, prefix, *_ in _plan(config):
        layer = params[name]
        if kind == "attn":
            mha = layer["MultiHeadDotProductAttention_0"]
            for key, target in (("query", "to_q"), ("key", "to_k"), ("value", "to_v")):
                kernel = np.asarray(mha[key]["kernel"], np.float32)
                out.update(unlinear(kernel.reshape(kernel.shape[0], -1), mha[key]["bias"], f"{prefix}.{target}"))
            kernel = np.asarray(mha["out"]["kernel"], np.float32)
            out.update(unlinear(kernel.reshape(-1, kernel.shape[-1]), mha["out"]["bias"], f"{prefix}.to_out.0"))
            if "GroupNorm_0" in layer:
                out.update(unnorm(layer["GroupNorm_0"], f"{prefix}.group_norm"))
        elif kind == "res":
            for key, sub in layer.items():
                write = unnorm if key.startswith("GroupNorm") else unlinear if key.startswith("Dense") else unconv
                out.update(write(*_leaves(sub), f"{prefix}.{_RES_NAMES[key]}"))
        elif kind == "embed":
            out[f"{prefix}.weight"] = np.asarray(layer["embedding"], np.float32)
        else:
            write = {"dense": unlinear, "conv": unconv, "norm": unnorm}[kind]
            out.update(write(*_leaves(layer), prefix))
    return out


def _leaves(layer: dict) -> tuple:
    return (layer["kernel"], layer["bias"]) if "kernel" in layer else (layer,)


def _json(path: str, what: str) -> dict:
    if not files.isfile(path):
        raise InputError(f"There is no {what} at {path}; give the folder diffusers' save_pretrained wrote.")
    try:
        return json.loads(files.read_bytes(path))
    except (ValueError, UnicodeDecodeError):
        raise InputError(f"{path} is not a JSON file; give the {what} diffusers wrote.") from None


def load_folder(path: str, source_config: str | None, source_flags: str | None) -> tuple:
    """(pdist config, parameters, EMA parameters, step, metadata) of a diffusers folder; the metadata's
    ``sha256`` is the weight file's. ``source_config``: the scheduler's config file, for a bare ``unet/``."""
    import safetensors.numpy

    if source_flags is not None:
        raise InputError("A diffusers folder describes itself in its config files; drop --source_flags.")
    unet_dir = _unet_dir(path)
    unet = _json(os.path.join(unet_dir, "config.json"), "UNet config")
    scheduler = _json(source_config or os.path.join(path, SCHEDULER), "scheduler config (or pass --source_config)")
    config = to_pdist_config(unet, scheduler)
    weights = os.path.join(unet_dir, WEIGHTS)
    if not files.isfile(weights):
        raise InputError(
            f"There is no {WEIGHTS} in {unet_dir}; pdist reads diffusers' safetensors weights (save the model with "
            "safe_serialization=True)."
        )
    data = files.read_bytes(weights)
    try:
        sd = Tracked(safetensors.numpy.load(data))
    except Exception as e:  # noqa: BLE001  (safetensors' own error types vary by version)
        raise InputError(
            f"{weights} is not a safetensors file ({type(e).__name__}); give the file diffusers wrote."
        ) from None
    params = map_tensors(
        sd,
        lambda: to_pdist_params(sd, config),
        "The weights have no tensor {name}, which the UNet's config.json needs; the config does not describe "
        "these weights.",
        "The weights' tensor {name} has no place in the UNet's config.json network ({count} unused); the config "
        "does not describe these weights.",
    )
    source = {"code": "diffusers", "unet": unet, "scheduler": scheduler}
    return config, params, params, 0, {"source": source, "sha256": hashlib.sha256(data).hexdigest()}
