"""OpenAI's improved-diffusion and guided-diffusion checkpoints (PyTorch state dicts of their ``UNetModel``).

A checkpoint holds weights only; the network and the diffusion are given by the flag string of the code's
scripts (``--source_flags``, their READMEs' ``MODEL_FLAGS`` and ``DIFFUSION_FLAGS``), read with that code's
defaults. Which code's: guided-diffusion's when a flag only it has appears (``num_head_channels``,
``resblock_updown``, ``use_new_attention_order``, ``use_fp16``, ``channel_mult``), improved-diffusion's
otherwise (the two differ in ``rescale_timesteps``: True in improved-diffusion). ``--image_size`` is
required: the weights do not say it, and the attention levels follow from it. The name of a released model
(:data:`PRESETS`, its file's name) stands for its README's flags and sets its dataset.

The network is pdist's UNet with OpenAI's conventions as options:

* the noise input is the discrete time step, level i of the T-step schedule being step i - 1
  (``model.logsnr_input`` ``timestep``, or ``rescaled_timestep`` for ``rescale_timesteps``: times 1000 / T),
  in sinusoids with cosines first;
* the residual blocks add the embedding (``model.scale_shift=False``) unless ``use_scale_shift_norm``;
* GroupNorm(32) with PyTorch's epsilon 1e-5 (``model.norm_eps``); the strided 3x3 downsampling pads one pixel
  on each side (``model.downsample_padding="symmetric"``); ``resblock_updown`` is pdist's;
* the attention's fused 1x1 ``qkv`` is split into pdist's query, key and value kernels, per head then q/k/v
  (the legacy order) or q/k/v then heads (``use_new_attention_order``);
* a class-conditional model has no null class: its embedding gets a zero row for pdist's null label and the
  model is marked as trained without label dropout, so classifier-free guidance is refused.

The diffusion: ``noise_schedule`` linear or cosine over ``diffusion_steps`` (pdist's ``linear`` and
``cosine`` discrete schedules, the same betas), eps or x (``predict_xstart``), learned variances
(``learn_sigma``: the output's second half, Improved DDPM's interpolation, as pdist's), the hybrid or VLB loss
(``use_kl``). ``timestep_respacing`` and ``use_ddim`` become the sampler's defaults (pdist's ``respaced``
grid is ``space_timesteps``' for a single count); improved-diffusion's fixed variances (``sigma_small``) are
ddpm's ``variance`` option (``large`` unless ``sigma_small``; pdist's default is ``small``).
"""

from __future__ import annotations

import shlex

import ml_collections
import numpy as np

from pdist.config import base_config
from pdist.errors import InputError
from pdist.interop import torch_file
from pdist.interop.layers import Tracked, conv, dense, group_norm, map_tensors, res_block

NAME = "openai"

# The flags of each code's scripts (script_util.model_and_diffusion_defaults) with their defaults.
_SHARED = dict(
    image_size=None,  # required
    num_channels=128,
    num_res_blocks=2,
    num_heads=4,
    num_heads_upsample=-1,
    attention_resolutions="16,8",
    dropout=0.0,
    class_cond=False,
    use_checkpoint=False,
    use_scale_shift_norm=True,
    learn_sigma=False,
    diffusion_steps=1000,
    noise_schedule="linear",
    timestep_respacing="",
    use_kl=False,
    predict_xstart=False,
)
DEFAULTS = {
    "improved-diffusion": dict(_SHARED, sigma_small=False, rescale_timesteps=True, rescale_learned_sigmas=True),
    "guided-diffusion": dict(
        _SHARED,
        num_head_channels=-1,
        channel_mult="",
        resblock_updown=False,
        use_fp16=False,
        use_new_attention_order=False,
        rescale_timesteps=False,
        rescale_learned_sigmas=False,
    ),
}
GUIDED_ONLY = ("num_head_channels", "channel_mult", "resblock_updown", "use_fp16", "use_new_attention_order")
# channel_mult by image size when not given (create_model)
CHANNEL_MULT = {
    "improved-diffusion": {256: (1, 1, 2, 2, 4, 4), 64: (1, 2, 3, 4), 32: (1, 2, 2, 2)},
    "guided-diffusion": {512: (0.5, 1, 1, 2, 2, 4, 4), 256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)},
}
NUM_CLASSES = 1000  # both codes' class-conditional models are ImageNet's
# the scripts' other flags (training and sampling): read where pdist has the setting, accepted otherwise
RUN_FLAGS = dict(
    lr=float,
    weight_decay=float,
    batch_size=int,
    microbatch=int,
    ema_rate=str,
    use_ddim=bool,
    clip_denoised=bool,
    num_samples=int,
    lr_anneal_steps=int,
    log_interval=int,
    save_interval=int,
    schedule_sampler=str,
    fp16_scale_growth=float,
    model_path=str,
    data_dir=str,
    resume_checkpoint=str,
    classifier_scale=float,
    classifier_path=str,
)


# The released models (the file's name without .pt): their READMEs' MODEL_FLAGS, DIFFUSION_FLAGS and
# TRAIN_FLAGS, and the dataset each was trained on (pdist's TFDS name). ``--source_flags=NAME`` uses them.
_ID_CIFAR = "--image_size 32 --num_channels 128 --num_res_blocks 3 --learn_sigma True --dropout 0.3"
_ID_IN64 = "--image_size 64 --num_channels 128 --num_res_blocks 3 --learn_sigma True"
_ID_LSUN = (
    "--image_size 256 --num_channels 128 --num_res_blocks 2 --num_heads 1 --learn_sigma True "
    "--use_scale_shift_norm False --attention_resolutions 16 --diffusion_steps 1000 --noise_schedule linear "
    "--rescale_learned_sigmas False --rescale_timesteps False"
)
_GD = (
    "--attention_resolutions 32,16,8 --diffusion_steps 1000 --learn_sigma True --resblock_updown True "
    "--use_fp16 True --use_scale_shift_norm True"
)
_GD_256 = f"{_GD} --image_size 256 --noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2"
PRESETS = {
    # improved-diffusion (march-2021)
    "cifar10_uncond_50M_500K": (
        f"{_ID_CIFAR} --diffusion_steps 4000 --noise_schedule cosine --lr 1e-4 --batch_size 128", "cifar10"),
    "cifar10_uncond_vlb_50M_500K": (
        f"{_ID_CIFAR} --diffusion_steps 4000 --noise_schedule cosine --use_kl True --lr 1e-4 --batch_size 128",
        "cifar10"),
    "imagenet64_uncond_100M_1500K": (
        f"{_ID_IN64} --diffusion_steps 4000 --noise_schedule cosine --lr 1e-4 --batch_size 128",
        "imagenet_resized/64x64"),
    "imagenet64_uncond_vlb_100M_1500K": (
        f"{_ID_IN64} --diffusion_steps 4000 --noise_schedule cosine --use_kl True --lr 1e-4 --batch_size 128",
        "imagenet_resized/64x64"),
    "imagenet64_cond_270M_250K": (
        "--image_size 64 --num_channels 192 --num_res_blocks 3 --learn_sigma True --class_cond True "
        "--diffusion_steps 4000 --noise_schedule cosine --rescale_learned_sigmas False --rescale_timesteps False "
        "--lr 3e-4 --batch_size 2048", "imagenet_resized/64x64"),
    "lsun_uncond_100M_1200K_bs128": (f"{_ID_LSUN} --lr 1e-4 --batch_size 128", "lsun/bedroom"),
    "lsun_uncond_100M_2400K_bs64": (f"{_ID_LSUN} --lr 2e-5 --batch_size 128", "lsun/bedroom"),
    # guided-diffusion (jul-2021); the 512x512 model (a first multiplier of 0.5) and the upsamplers are not
    # pdist networks
    "64x64_diffusion": (
        f"{_GD} --class_cond True --dropout 0.1 --image_size 64 --noise_schedule cosine --num_channels 192 "
        "--num_head_channels 64 --num_res_blocks 3 --use_new_attention_order True", "imagenet_resized/64x64"),
    "128x128_diffusion": (
        f"{_GD} --class_cond True --image_size 128 --noise_schedule linear --num_channels 256 --num_heads 4 "
        "--num_res_blocks 2", "imagenet2012"),
    "256x256_diffusion": (f"{_GD_256} --class_cond True", "imagenet2012"),
    "256x256_diffusion_uncond": (f"{_GD_256} --class_cond False", "imagenet2012"),
    "lsun_bedroom": (f"{_GD_256} --class_cond False --dropout 0.1", "lsun/bedroom"),
    "lsun_cat": (f"{_GD_256} --class_cond False --dropout 0.1", "lsun/cat"),
    "lsun_horse": (f"{_GD_256} --class_cond False --dropout 0.1", "lsun/horse"),
    "lsun_horse_nodropout": (f"{_GD_256} --class_cond False", "lsun/horse"),
}  # fmt: skip


def detect(head: bytes) -> bool:
    """A PyTorch file: a zip archive (PyTorch >= 1.6) or the legacy pickle's magic number."""
    return head[:4] == b"PK\x03\x04" or head[:2] == b"\x80\x02"


def _bool(name: str, text: str) -> bool:
    value = text.lower()
    if value in ("yes", "true", "t", "y", "1"):
        return True
    if value in ("no", "false", "f", "n", "0"):
        return False
    raise InputError(f"--source_flags gives --{name} {text!r}; it takes True or False.")


def parse_flags(text: str | None) -> tuple[str, dict]:
    """(the code whose defaults apply, every model and diffusion flag's value) of a flag string."""
    if not text or not text.strip():
        raise InputError(
            "An OpenAI checkpoint needs --source_flags: the MODEL_FLAGS and DIFFUSION_FLAGS of its README, "
            'e.g. --source_flags="--image_size 64 --num_channels 128 --num_res_blocks 3 --learn_sigma True".'
        )
    if text.strip() in PRESETS:
        text = PRESETS[text.strip()][0]
    try:
        words = shlex.split(text)
    except ValueError as e:
        raise InputError(f"--source_flags cannot be split into flags ({e}).") from None
    given: dict[str, str] = {}
    i = 0
    while i < len(words):
        word = words[i]
        if not word.startswith("--"):
            raise InputError(
                f"--source_flags holds {word!r} where a --flag was expected; give '--name value' pairs or a released "
                f"model's name ({', '.join(PRESETS)})."
            )
        name, eq, value = word[2:].partition("=")
        if not eq:
            if i + 1 >= len(words):
                raise InputError(f"--source_flags ends with --{name} and no value; give '--{name} VALUE'.")
            value, i = words[i + 1], i + 1
        given[name] = value
        i += 1
    code = "guided-diffusion" if any(k in given for k in GUIDED_ONLY) else "improved-diffusion"
    defaults = DEFAULTS[code]
    flags: dict = {}
    for name, text_value in given.items():
        if name in defaults:
            default = defaults[name]
            kind = int if name == "image_size" else type(default)
        elif name in RUN_FLAGS:
            kind = RUN_FLAGS[name]
        else:
            raise InputError(f"--source_flags gives --{name}, which is not a flag of {code}'s scripts; check its name.")
        try:
            flags[name] = _bool(name, text_value) if kind is bool else kind(text_value)
        except ValueError:
            raise InputError(f"--source_flags gives --{name} {text_value!r}, not a {kind.__name__}.") from None
    if "image_size" not in flags:
        raise InputError("--source_flags needs --image_size: the weights do not say the image size.")
    return code, {**defaults, **flags}


def channel_mult(code: str, flags: dict) -> tuple[int, ...]:
    size = flags["image_size"]
    if flags.get("channel_mult"):
        mult = tuple(float(m) for m in str(flags["channel_mult"]).split(","))
    elif size in CHANNEL_MULT[code]:
        mult = CHANNEL_MULT[code][size]
    else:
        raise InputError(f"{code} builds no network for --image_size {size} (it knows {sorted(CHANNEL_MULT[code])}).")
    if any(m != int(m) for m in mult) or mult[0] != 1:
        raise InputError(
            f"channel_mult {mult} has a first or fractional multiplier other than 1, which pdist's UNet does not "
            "represent (its first level has num_channels channels)."
        )
    return tuple(int(m) for m in mult)


def to_pdist_config(code: str, flags: dict) -> ml_collections.ConfigDict:
    """pdist's config of the network and diffusion ``flags`` describe, with the run flags pdist has."""
    config = base_config()
    size = flags["image_size"]
    c = config.data
    c.image_size, c.channels, c.random_flip = size, 3, True
    if flags["class_cond"]:
        c.name, c.num_classes = f"imagenet_resized/{size}x{size}", NUM_CLASSES
    else:
        c.name = "cifar10" if size == 32 else "lsun/bedroom"  # a guess (presets set theirs): --config.data.name=
    m = config.model
    m.ch, m.ch_mult = int(flags["num_channels"]), channel_mult(code, flags)
    m.num_res_blocks, m.dropout = int(flags["num_res_blocks"]), float(flags["dropout"])
    m.attn_resolutions = tuple(int(r) for r in str(flags["attention_resolutions"]).split(","))
    heads_up = flags["num_heads_upsample"]
    if heads_up != -1 and heads_up != flags["num_heads"]:
        raise InputError("--num_heads_upsample differs from --num_heads; pdist's UNet has one number of heads.")
    if flags.get("num_head_channels", -1) != -1:
        m.num_heads, m.head_dim = None, int(flags["num_head_channels"])
    else:
        m.num_heads = int(flags["num_heads"])
    m.resblock_updown = bool(flags.get("resblock_updown", False))
    m.class_conditional = bool(flags["class_cond"])
    m.logsnr_input = "rescaled_timestep" if flags["rescale_timesteps"] else "timestep"
    m.scale_shift = bool(flags["use_scale_shift_norm"])
    m.norm_eps, m.downsample_padding = 1e-5, "symmetric"
    config.train.label_dropout = 0.0  # trained without a null class
    config.edit.guidance = 0.0  # so it edits unguided: classifier-free guidance needs the null class
    d = config.diffusion
    if flags["noise_schedule"] not in ("linear", "cosine"):
        raise InputError(f"--noise_schedule {flags['noise_schedule']!r} is not linear or cosine.")
    d.schedule, d.num_timesteps = flags["noise_schedule"], int(flags["diffusion_steps"])
    d.parameterization = "x" if flags["predict_xstart"] else "eps"
    d.weighting = "constant" if flags["predict_xstart"] else "snr"  # the MSE of the predicted quantity
    d.learned_variance = bool(flags["learn_sigma"])
    d.loss = "vlb" if flags["use_kl"] else ("hybrid" if flags["learn_sigma"] else "mse")
    o = config.optim
    o.learning_rate = float(flags.get("lr", 1e-4))
    o.weight_decay = float(flags.get("weight_decay", 0.0))
    o.warmup_steps, o.grad_clip = 0, 0.0
    if "batch_size" in flags:
        config.train.batch_size = int(flags["batch_size"])
    if "ema_rate" in flags:
        config.train.ema_decay = float(str(flags["ema_rate"]).split(",")[0])
    s = config.sample
    respacing = str(flags["timestep_respacing"])
    s.grid = "respaced"  # space_timesteps of one count
    if respacing.startswith("ddim"):  # space_timesteps' "ddimN": DDIM's constant stride
        s.method, s.grid, respacing = "ddim", "ddim_stride", respacing[len("ddim") :]
        T, n = int(flags["diffusion_steps"]), int(respacing) if respacing.isdigit() else 0
        # the code's stride is the first c with len(range(0, T, c)) == n; pdist's ddim_stride grid is T // n
        if n and len(range(0, T, T // n)) != n:
            raise InputError(
                f"--timestep_respacing ddim{n} strides its {T} steps by the first c giving {n} steps, not "
                f"{T} // {n} as pdist's ddim_stride grid does; give a count that divides --diffusion_steps."
            )
    else:
        s.method = "ddim" if flags.get("use_ddim") else "ddpm"
    if respacing:
        if not respacing.isdigit():
            raise InputError(
                f"--timestep_respacing {flags['timestep_respacing']!r} has sections; pdist imports one count "
                "(e.g. 250 or ddim50); sample with --config.sample.num_steps instead."
            )
        s.num_steps = int(respacing)
    else:
        s.num_steps = int(flags["diffusion_steps"])
    s.clip_x = bool(flags.get("clip_denoised", True))
    # the NLL by the code's own protocol (calc_bpd_loop): every level, x-hat clipped, the tanh-approximated CDF
    config.eval.clip_x, config.eval.nll_cdf = True, "tanh"
    return config


def _res(sd: dict, p: str) -> dict:
    names = ("in_layers.0", "in_layers.2", "emb_layers.1", "out_layers.0", "out_layers.3", "skip_connection")
    return res_block(sd, *(f"{p}.{n}" for n in names))


def _attn(sd: dict, p: str, heads: int, new_order: bool) -> dict:
    w = np.asarray(sd[f"{p}.qkv.weight"], np.float32)[..., 0]  # (3C, C)
    b = np.asarray(sd[f"{p}.qkv.bias"], np.float32)
    c = w.shape[1]
    d = c // heads
    # the output channel of q/k/v j, head h, channel i: (j, h, i) in the new order, (h, j, i) in the legacy one
    shape = (3, heads, d) if new_order else (heads, 3, d)
    w, b = w.reshape(*shape, c), b.reshape(shape)
    if not new_order:
        w, b = np.swapaxes(w, 0, 1), np.swapaxes(b, 0, 1)
    names = ("query", "key", "value")
    mha = {n: {"kernel": np.transpose(w[j], (2, 0, 1)), "bias": b[j]} for j, n in enumerate(names)}
    proj = np.asarray(sd[f"{p}.proj_out.weight"], np.float32)[..., 0]  # (C_out, C_in), C_in = (head, i)
    mha["out"] = {"kernel": proj.T.reshape(heads, d, c), "bias": np.asarray(sd[f"{p}.proj_out.bias"], np.float32)}
    return {"GroupNorm_0": group_norm(sd, f"{p}.norm"), "MultiHeadDotProductAttention_0": mha}


def _heads(config, channels: int) -> int:
    m = config.model
    return m.num_heads if m.num_heads is not None else max(1, channels // m.head_dim)


def to_pdist_params(sd: dict, config: ml_collections.ConfigDict, new_order: bool) -> dict:
    """The state dict as pdist's UNet's parameters, walking both networks in the order they are built: the
    ``input_blocks.{k}`` / ``middle_block`` / ``output_blocks.{k}`` sequence becomes pdist's numbered
    ``ResBlock_i`` / ``AttnBlock_j`` / ``Conv_k``. A missing tensor raises KeyError with its name."""
    m = config.model
    out = {
        "Dense_0": dense(sd["time_embed.0.weight"], sd["time_embed.0.bias"]),
        "Dense_1": dense(sd["time_embed.2.weight"], sd["time_embed.2.bias"]),
    }
    if m.class_conditional:
        table = np.asarray(sd["label_emb.weight"], np.float32)
        out["Embed_0"] = {"embedding": np.concatenate([table, np.zeros_like(table[:1])])}  # + pdist's null row
    counts = {"ResBlock": 0, "AttnBlock": 0, "Conv": 0}

    def put(kind: str, value: dict) -> None:
        out[f"{kind}_{counts[kind]}"] = value
        counts[kind] += 1

    put("Conv", conv(sd["input_blocks.0.0.weight"], sd["input_blocks.0.0.bias"]))
    size, levels, k = int(config.data.image_size), len(m.ch_mult), 1
    for level, mult in enumerate(m.ch_mult):
        for _ in range(m.num_res_blocks):
            put("ResBlock", _res(sd, f"input_blocks.{k}.0"))
            if size in m.attn_resolutions:
                put("AttnBlock", _attn(sd, f"input_blocks.{k}.1", _heads(config, m.ch * mult), new_order))
            k += 1
        if level != levels - 1:
            if m.resblock_updown:
                put("ResBlock", _res(sd, f"input_blocks.{k}.0"))
            else:
                put("Conv", conv(sd[f"input_blocks.{k}.0.op.weight"], sd[f"input_blocks.{k}.0.op.bias"]))
            size, k = size // 2, k + 1
    put("ResBlock", _res(sd, "middle_block.0"))
    put("AttnBlock", _attn(sd, "middle_block.1", _heads(config, m.ch * m.ch_mult[-1]), new_order))
    put("ResBlock", _res(sd, "middle_block.2"))
    k = 0
    for level, mult in reversed(list(enumerate(m.ch_mult))):
        for i in range(m.num_res_blocks + 1):
            put("ResBlock", _res(sd, f"output_blocks.{k}.0"))
            j = 1
            if size in m.attn_resolutions:
                put("AttnBlock", _attn(sd, f"output_blocks.{k}.1", _heads(config, m.ch * mult), new_order))
                j = 2
            if level and i == m.num_res_blocks:
                if m.resblock_updown:
                    put("ResBlock", _res(sd, f"output_blocks.{k}.{j}"))
                else:
                    put("Conv", conv(sd[f"output_blocks.{k}.{j}.conv.weight"], sd[f"output_blocks.{k}.{j}.conv.bias"]))
                size *= 2
            k += 1
    out["GroupNorm_0"] = group_norm(sd, "out.0")
    put("Conv", conv(sd["out.2.weight"], sd["out.2.bias"]))
    return out


def read(data: bytes) -> dict:
    """The state dict's tensors by name (a checkpoint that holds the model's under a key is unwrapped)."""
    state = torch_file.read_state_dict_bytes(data)
    for key in ("state_dict", "model", "ema"):
        if "time_embed.0.weight" not in state and isinstance(state.get(key), dict):
            state = state[key]
    if "time_embed.0.weight" not in state:
        raise InputError(
            "This PyTorch file holds no 'time_embed.0.weight'; it is not a state dict of improved- or "
            "guided-diffusion's UNetModel."
        )
    return Tracked({k: v for k, v in state.items() if isinstance(v, np.ndarray)})


def load(data: bytes, source_config: str | None, source_flags: str | None) -> tuple:
    """(pdist config, parameters, EMA parameters, step, metadata) of an OpenAI checkpoint's bytes: the file holds
    one set of weights (an EMA file such as ``ema_0.9999_*.pt`` or a model file), used for both."""
    if source_config is not None:
        raise InputError(
            "An OpenAI checkpoint is described by --source_flags (its scripts' flags), not --source_config."
        )
    sd = read(data)
    code, flags = parse_flags(source_flags)
    config = to_pdist_config(code, flags)
    if source_flags.strip() in PRESETS:
        config.data.name = PRESETS[source_flags.strip()][1]
    params = map_tensors(
        sd,
        lambda: to_pdist_params(sd, config, bool(flags.get("use_new_attention_order", False))),
        "The checkpoint has no tensor {name}, which the flags' network needs; the flags do not describe these "
        "weights (check --source_flags).",
        "The checkpoint's tensor {name} has no place in the flags' network ({count} unused); the flags do not "
        "describe these weights (check --source_flags).",
    )
    return config, params, params, 0, {"source": {"code": code, "flags": flags}}
