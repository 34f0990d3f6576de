"""A pdist workdir -> a diffusers folder (``python -m pdist.interop export WORKDIR FOLDER``).

The folder holds ``unet/`` (``config.json`` and ``diffusion_pytorch_model.safetensors``, float32), which
``UNet2DModel.from_pretrained`` loads, and beside it what reproduces the model's own sampler (DDIM with its step
count, time grid and clipping, as ``pdist.load(WORKDIR).sample`` runs it): ``pdist_sampling.json`` (the network's
time step input, alpha and sigma at each of the grid's times), ``sample_pdist.py`` (a short PyTorch loop over them)
and a README; and, where diffusers' ``DDIMScheduler`` runs the same grid (a discrete schedule whose grid is one of
its spacings), ``scheduler/scheduler_config.json`` and ``model_index.json``.

A class-conditional network keeps its label embedding as ``num_class_embeds`` (pdist's null class the last row). A
network diffusers' ``UNet2DModel`` cannot hold (a guidance-weight input, residual up- and downsampling, a middle
attention without normalization beside additive conditioning, heads it cannot size) is refused in one sentence
before anything is written.
"""

from __future__ import annotations

import math
import os

import jax
import numpy as np

from pdist import schedules
from pdist.errors import InputError
from pdist.interop import diffusers
from pdist.runtime import files

PARAMETERIZATIONS = {v: k for k, v in diffusers.PARAMETERIZATIONS.items()}  # pdist's -> diffusers' prediction_type

# sample_pdist.py, written into the folder: the PyTorch loop of pdist_sampling.json (DDIM on the model's grid)
SAMPLE_SCRIPT = '''"""DDIM on a pdist model's grid with diffusers' UNet2DModel (pdist.interop export wrote it).

    python sample_pdist.py NUM_IMAGES OUT.npy [SEED]     # images NCHW in [-1, 1]
"""

import json
import os
import sys

import numpy as np
import torch
from diffusers import UNet2DModel

HERE = os.path.dirname(os.path.abspath(__file__))


def sample(noise: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """pdist's sample from ``noise`` (z at the grid's first time, NCHW), of ``labels`` for a class-conditional
    model (unguided)."""
    unet = UNet2DModel.from_pretrained(os.path.join(HERE, "unet")).eval()
    s = json.load(open(os.path.join(HERE, "pdist_sampling.json")))
    z, channels = noise, noise.shape[1]
    if s["num_classes"] and labels is None:  # pdist's default: 0, 1, 2, ... in turn (the null class: num_classes)
        labels = torch.arange(len(z)) % s["num_classes"]
    steps = zip(s["timesteps"], s["alpha"], s["sigma"], s["alpha"][1:], s["sigma"][1:])
    with torch.no_grad():
        for tau, alpha, sigma, alpha_next, sigma_next in steps:
            t = torch.full((len(z),), tau, dtype=torch.float32)
            out = unet(z, t, class_labels=labels).sample[:, :channels]
            if s["parameterization"] == "eps":
                x = (z - sigma * out) / alpha
            elif s["parameterization"] == "x":
                x = out
            else:  # v
                x = alpha * z - sigma * out
            eps = (z - alpha * x) / sigma
            if s["clip_x"]:
                x = x.clamp(-1.0, 1.0)
                if not s["clip_keeps_eps"]:
                    eps = (z - alpha * x) / sigma
            z = alpha_next * x + sigma_next * eps
    return z


if __name__ == "__main__":
    n, out = int(sys.argv[1]), sys.argv[2]
    shape = json.load(open(os.path.join(HERE, "pdist_sampling.json")))["image_shape"]
    generator = torch.Generator().manual_seed(int(sys.argv[3]) if len(sys.argv) > 3 else 0)
    np.save(out, sample(torch.randn(n, *shape, generator=generator)).numpy())
'''


def unet_config(config) -> dict:
    """The ``UNet2DModel`` config of ``config``'s network; one sentence on a network it cannot hold."""
    m, d = config.model, config.data
    if m.guidance_input:  # a guided student
        raise InputError("The model takes the guidance weight as an input, which diffusers' UNet2DModel has not.")
    if m.resblock_updown:
        raise InputError(
            "The model resamples with residual blocks (model.resblock_updown), which pdist exports to diffusers "
            "not yet; export a network with strided convolutions."
        )
    if not m.scale_shift and not m.mid_attention_norm:
        raise InputError(
            "The model adds its time embedding and has no norm before its middle attention; diffusers' "
            "UNet2DModel always normalizes there with additive conditioning."
        )
    if m.ch % 32:
        raise InputError(
            f"The model has model.ch={m.ch}; its GroupNorms take gcd(channels, 32) groups, which is diffusers' one "
            "norm_num_groups=32 only when model.ch is a multiple of 32."
        )
    size = int(d.image_size)
    levels = [size // 2**i for i in range(len(m.ch_mult))]
    attn = [r in m.attn_resolutions for r in levels]
    widths = [m.ch * mult for mult, a in zip(m.ch_mult, attn, strict=True) if a] + [m.ch * m.ch_mult[-1]]
    if m.num_heads is not None:
        if m.num_heads == 1:
            head_dim = None
        elif len(set(widths)) == 1 and widths[0] % m.num_heads == 0:
            head_dim = widths[0] // m.num_heads
        else:
            raise InputError(
                f"The model has {m.num_heads} attention heads at widths {sorted(set(widths))}; diffusers sizes "
                "heads by their channels (attention_head_dim), so every attention must have one width."
            )
    else:
        head_dim = int(m.head_dim)
        if any(w % head_dim for w in widths):
            raise InputError(
                f"The model's attention widths {sorted(set(widths))} are not multiples of model.head_dim="
                f"{head_dim}; diffusers' attention_head_dim needs them to be."
            )
    release = m.logsnr_input in ("inv_cos", "sigmoid", "linear")  # the release's embedding: sines, shift 1
    return {
        "_class_name": "UNet2DModel",
        "sample_size": size,
        "in_channels": int(d.channels),
        "out_channels": int(d.channels) * (2 if config.diffusion.learned_variance else 1),
        "layers_per_block": int(m.num_res_blocks),
        "block_out_channels": [int(m.ch * mult) for mult in m.ch_mult],
        "down_block_types": ["AttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "up_block_types": ["AttnUpBlock2D" if a else "UpBlock2D" for a in attn[::-1]],
        "flip_sin_to_cos": False if release else not m.sin_first,
        "freq_shift": 1 if release else float(m.freq_shift),
        "downsample_padding": 0 if m.downsample_padding == "same" else 1,
        "norm_eps": float(m.norm_eps),
        "norm_num_groups": 32,
        "attention_head_dim": head_dim,
        "resnet_time_scale_shift": "scale_shift" if m.scale_shift else "default",
        "attn_norm_num_groups": 32 if m.scale_shift and m.mid_attention_norm else None,
        "time_embedding_dim": int(m.emb_ch) if m.emb_ch else None,
        "dropout": float(m.dropout),
        "act_fn": "silu",
        # the label embedding, added to the time embedding as pdist's is; its last row is pdist's null class
        "num_class_embeds": int(d.num_classes) + 1 if m.class_conditional else None,
    }


def network_timesteps(config, schedule, times: np.ndarray) -> np.ndarray:
    """The time step input the exported ``UNet2DModel`` takes at pdist's ``times`` (float64): diffusers embeds
    it as pdist's network embeds its noise input (``config.model.logsnr_input``)."""
    kind, T = config.model.logsnr_input, schedule.num_timesteps
    if kind in ("timestep", "rescaled_timestep"):
        step = np.round(np.asarray(times, np.float64) * T) - 1.0
        return step * 1000.0 / T if kind == "rescaled_timestep" else step
    logsnr = np.asarray(jax.device_get(schedule.logsnr(np.asarray(times, np.float32))), np.float64)
    if kind == "sigmoid":
        return 1000.0 / (1.0 + np.exp(-logsnr))
    if kind == "linear":
        return 1000.0 * (logsnr + 10.0) / 20.0
    if kind == "inv_cos":
        logsnr = np.clip(logsnr, -20.0, 20.0)
    return 1000.0 * np.arctan(np.exp(-0.5 * logsnr)) / (0.5 * math.pi)


def _ddim_scheduler(config, schedule, num_steps: int, grid: str) -> dict | None:
    """diffusers' ``DDIMScheduler`` config for DDIM on ``grid``, or None where it has no such spacing."""
    T = schedule.num_timesteps
    if T is None or config.diffusion.parameterization not in PARAMETERIZATIONS or config.diffusion.learned_variance:
        return None  # (DDIMScheduler steps with the whole output: a learned variance's channels too)
    if not (
        config.model.logsnr_input == "timestep" or (config.model.logsnr_input == "rescaled_timestep" and T == 1000)
    ):
        return None  # the scheduler gives the UNet its integer time step; this network takes another input
    if isinstance(schedule, schedules.LinearBetas):
        if (schedule.beta_start, schedule.beta_end) != (1e-4, 0.02):
            return None
        betas = {"beta_schedule": "linear", "beta_start": 1e-4 * 1000 / T, "beta_end": 0.02 * 1000 / T}
    elif isinstance(schedule, schedules.CosineBetas) and (schedule.s, schedule.max_beta) == (0.008, 0.999):
        betas = {"beta_schedule": "squaredcos_cap_v2"}
    else:
        return None
    levels = np.round(schedules.time_grid(schedule, num_steps, grid)[:-1] * T).astype(np.int64)
    for spacing, offset in (("leading", 0), ("leading", 1), ("trailing", 0)):
        kind = f"leading+{offset}" if offset else spacing
        theirs = np.round(schedules.time_grid(schedule, num_steps, kind)[:-1] * T).astype(np.int64)
        consistent = spacing == "leading" or T % num_steps == 0  # DDIMScheduler steps to t - T // N
        if consistent and np.array_equal(levels, theirs):
            return {
                "_class_name": "DDIMScheduler",
                "num_train_timesteps": T,
                **betas,
                "prediction_type": PARAMETERIZATIONS[config.diffusion.parameterization],
                "clip_sample": True,
                "set_alpha_to_one": True,
                "steps_offset": offset,
                "timestep_spacing": spacing,
            }
    return None


def export(workdir: str, folder: str, step: int | None = None) -> dict:
    """Writes ``folder`` (which must not exist) from ``workdir``'s checkpoint (newest, or ``step``); returns what
    it wrote: ``{"unet": config, "scheduler": config or None, "sampling": pdist_sampling.json's dict}``."""
    import safetensors.numpy

    import pdist

    if files.exists(folder):
        raise InputError(f"{folder} exists; export into a new folder.")
    model = pdist.load(workdir, step)
    config, spec = model.config, model.spec
    unet = unet_config(config)
    if config.diffusion.parameterization not in PARAMETERIZATIONS:
        raise InputError(
            f"The model predicts {config.diffusion.parameterization!r}; diffusers' models predict eps, x or v."
        )
    tensors = diffusers.to_diffusers_tensors(jax.device_get(model.ema_params), config)
    sampling = model.sampling
    grid = model.grid(sampling.grid)
    times = schedules.time_grid(spec.schedule, sampling.num_steps, grid)
    # the sampler's own alpha and sigma (a discrete schedule's t = 0 is (1, 0): the last step returns x-hat)
    alpha, sigma = (
        np.asarray(a, np.float64) for a in jax.device_get(spec.schedule.alpha_sigma(times.astype(np.float32)))
    )
    how = {
        "method": "ddim",
        "num_steps": int(sampling.num_steps),
        "grid": grid,
        "times": times.tolist(),
        "timesteps": network_timesteps(config, spec.schedule, times[:-1]).tolist(),
        "alpha": alpha.tolist(),
        "sigma": sigma.tolist(),
        "parameterization": config.diffusion.parameterization,
        "clip_x": bool(sampling.clip_x),
        "clip_keeps_eps": bool(sampling.clip_keeps_eps),
        "image_shape": [int(config.data.channels), int(config.data.image_size), int(config.data.image_size)],
        "variance_note": " (then the learned variance's channels)" if config.diffusion.learned_variance else "",
        "num_classes": int(config.data.num_classes) if config.model.class_conditional else 0,
        "labels_note": (
            f"The UNet takes `class_labels` 0 to {config.data.num_classes - 1}; label {config.data.num_classes} is "
            "pdist's null class, so classifier-free guidance with weight w is (1 + w) out(label) - w out(null).\n\n"
            if config.model.class_conditional
            else ""
        ),
        "source": {"workdir": workdir, "step": int(model.step)},
    }
    scheduler = _ddim_scheduler(config, spec.schedule, sampling.num_steps, grid)
    files.makedirs(os.path.join(folder, "unet"))
    files.write_json(os.path.join(folder, "unet", "config.json"), unet)
    files.write_bytes(os.path.join(folder, "unet", diffusers.WEIGHTS), safetensors.numpy.save(tensors))
    files.write_json(os.path.join(folder, "pdist_sampling.json"), how)
    files.write_text(os.path.join(folder, "sample_pdist.py"), SAMPLE_SCRIPT)
    if scheduler is not None:
        files.makedirs(os.path.join(folder, "scheduler"))
        files.write_json(os.path.join(folder, diffusers.SCHEDULER), scheduler)
        index = {"_class_name": "DDIMPipeline", "unet": ["diffusers", "UNet2DModel"],
                 "scheduler": ["diffusers", "DDIMScheduler"]}  # fmt: skip
        files.write_json(os.path.join(folder, "model_index.json"), index)
    files.write_text(os.path.join(folder, "README.md"), _readme(how, scheduler))
    return {"unet": unet, "scheduler": scheduler, "sampling": how}


def _readme(how: dict, scheduler: dict | None) -> str:
    n, grid = how["num_steps"], how["grid"]
    clip = (
        "x-hat clipped to [-1, 1] "
        + ("with the network's eps-hat kept" if how["clip_keeps_eps"] else "and eps-hat recomputed from it")
        if how["clip_x"]
        else "no clipping"
    )
    taus = [f"{tau:.6f}" for tau in how["timesteps"]] + ["(the end)"]
    rows = "\n".join(
        f"| {i} | {t:.6g} | {tau} | {a:.6g} | {s:.6g} |"
        for i, (t, tau, a, s) in enumerate(zip(how["times"], taus, how["alpha"], how["sigma"], strict=True))
    )
    if scheduler is not None:
        spacing = scheduler["timestep_spacing"] + (
            f" with steps_offset={scheduler['steps_offset']}" if scheduler["steps_offset"] else ""
        )
        with_diffusers = (
            f"`DDIMPipeline.from_pretrained(folder)` with `num_inference_steps={n}` and `eta=0` runs the same time "
            f"steps (its `{spacing}` spacing). Its `clip_sample` clips x-hat but keeps the network's eps-hat; "
            "pdist's equal of it is `pdist.load(workdir).sample(n, clip_keeps_eps=True)`"
            + (", which is the model's own sampler." if how["clip_keeps_eps"] or not how["clip_x"] else
               "; the model's own sampler recomputes eps-hat, as `sample_pdist.py` does.")
        )  # fmt: skip
    else:
        with_diffusers = (
            "No diffusers scheduler runs this grid (a continuous-time schedule, or a grid none of its spacings "
            "gives), so the folder has no scheduler: call the UNet at the time steps below, as `sample_pdist.py` "
            "does."
        )
    return f"""# A pdist model as a diffusers UNet2DModel

Written by `python -m pdist.interop export` from `{how["source"]["workdir"]}` (step {how["source"]["step"]}).
`UNet2DModel.from_pretrained("<this folder>/unet")` loads the network (float32); its output is the model's
{how["parameterization"]}-prediction{how["variance_note"]}.

The model's own sampler is DDIM with {n} steps on pdist's `{grid}` grid, {clip}. {with_diffusers}

{how["labels_note"]}`python sample_pdist.py NUM_IMAGES OUT.npy [SEED]` runs it in PyTorch
(a class-conditional model's labels 0, 1, 2, ... in turn, unguided): at step i the UNet takes the float time step
tau_i (a float tensor: a Python number would be cast to an integer) on z_i, gives x-hat
(eps: (z - sigma eps-hat) / alpha; v: alpha z - sigma v-hat), and z_(i+1) = alpha_(i+1) x-hat + sigma_(i+1) eps-hat;
the last row's (alpha, sigma) ends the loop (1, 0: the result is x-hat). `pdist_sampling.json` holds these numbers:

| i | pdist time t_i | UNet time step tau_i | alpha_i | sigma_i |
|---:|---:|---:|---:|---:|
{rows}
"""


def main_export(workdir: str, folder: str) -> int:
    import sys

    try:
        wrote = export(workdir, folder)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported {workdir} into {folder}" + ("" if wrote["scheduler"] else " (no scheduler: see its README)"))
    return 0
