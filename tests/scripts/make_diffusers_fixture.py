"""Writes tests/fixtures/diffusers/: two tiny diffusers pipelines with random weights, saved and run by diffusers.

Run once, with PyTorch and diffusers, in a virtualenv of its own (the tests never import PyTorch):

    python3 -m venv /tmp/tv && /tmp/tv/bin/pip install torch==2.13.0 diffusers==0.42.0 safetensors numpy
    /tmp/tv/bin/python tests/scripts/make_diffusers_fixture.py tests/fixtures/diffusers

Each pipeline is a ``DDPMPipeline`` folder written by ``save_pretrained`` (``model_index.json``, ``unet/`` with
``config.json`` and ``diffusion_pytorch_model.safetensors`` in float16, ``scheduler/scheduler_config.json``):

* ``ho``: Ho et al.'s DDPM layout (as ``google/ddpm-cifar10-32``): additive time conditioning, sines first with
  frequency shift 1, the strided convolution padded (0, 1, 0, 1), GroupNorm epsilon 1e-6, one attention head;
  a linear-beta ``DDPMScheduler`` predicting eps.
* ``scale_shift``: scale-shift conditioning, cosines first without shift, padding 1, epsilon 1e-5, heads of 16
  channels; a ``squaredcos_cap_v2`` scheduler predicting v.

Every parameter gets N(0, 0.05^2) added (so that no layer is zero) and is rounded to float16, the dtype the
file stores; the network runs in float32. ``<name>.npz`` holds inputs and diffusers' outputs, images NHWC:
the UNet's output at a few time steps (``x``, ``timesteps``, ``out``; ``x_small`` = 0.1 x and ``out_small``),
and ``DDIMScheduler``'s 10-step sample (eta 0, its default spacing) from ``ddim_noise``, unclipped and clipped.
"""

from __future__ import annotations

import json
import os
import platform
import sys

import diffusers
import numpy as np
import torch as th
from diffusers import (
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    PNDMScheduler,
    UNet2DModel,
)

COMMON = dict(
    sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(32, 64),
    down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
)  # fmt: skip
MODELS = {
    "ho": (
        dict(flip_sin_to_cos=False, freq_shift=1, downsample_padding=0, norm_eps=1e-6, attention_head_dim=None),
        dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02),
    ),
    "scale_shift": (
        dict(
            flip_sin_to_cos=True, freq_shift=0, downsample_padding=1, norm_eps=1e-5, attention_head_dim=16,
            resnet_time_scale_shift="scale_shift",
        ),
        dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"),
    ),
}  # fmt: skip


def run(name: str, out_dir: str) -> dict:
    unet_args, scheduler_args = MODELS[name]
    th.manual_seed(0)
    unet = UNet2DModel(**COMMON, **unet_args)
    with th.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * th.randn_like(p))
            p.copy_(p.half().float())
    unet.eval()
    scheduler = DDPMScheduler(**scheduler_args)
    DDPMPipeline(unet=unet.half(), scheduler=scheduler).save_pretrained(os.path.join(out_dir, name))
    unet = unet.float()

    g = th.Generator().manual_seed(1)
    x = th.randn(4, 3, 16, 16, generator=g)
    timesteps = th.tensor([0, 17, 500, 999])
    with th.no_grad():
        out = unet(x, timesteps).sample
        out_small = unet(0.1 * x, timesteps).sample  # a small input, where GroupNorm's epsilon shows
    arrays = {"x": x, "timesteps": timesteps, "out": out, "x_small": 0.1 * x, "out_small": out_small}
    # DDIMScheduler (eta 0) from the pipeline's scheduler config: 10 steps of its default "leading" spacing,
    # from given noise, with clip_sample off and on
    noise = th.randn(4, 3, 16, 16, generator=g)
    arrays["ddim_noise"] = noise
    for clip in (False, True):
        ddim = DDIMScheduler.from_config(scheduler.config, clip_sample=clip)
        ddim.set_timesteps(10)
        z = noise.clone()
        with th.no_grad():
            for t in ddim.timesteps:
                z = ddim.step(unet(z, t).sample, t, z, eta=0.0).prev_sample
        arrays[f"ddim_{'clipped' if clip else 'unclipped'}"] = z
        arrays["ddim_timesteps"] = ddim.timesteps
    arrays.update(more_samplers(unet, scheduler, g))
    arrays = {k: (np.moveaxis(v.numpy(), -3, -1) if v.ndim >= 4 else v.numpy()) for k, v in arrays.items()}
    np.savez_compressed(os.path.join(out_dir, f"{name}.npz"), **arrays)
    return {
        "unet": {**COMMON, **unet_args},
        "scheduler": scheduler_args,
        "parameters": int(sum(p.numel() for p in unet.parameters())),
    }


def _sample(unet, scheduler, noise, num_steps: int, **step_kwargs) -> tuple[th.Tensor, th.Tensor]:
    """``scheduler``'s sample of ``num_steps`` steps from ``noise`` and the time steps it evaluated the network at."""
    scheduler.set_timesteps(num_steps)
    z, seen = noise.clone(), []
    with th.no_grad():
        for t in scheduler.timesteps:
            seen.append(int(t))
            z = scheduler.step(unet(z, t).sample, t, z, **step_kwargs).prev_sample
    return z, th.tensor(seen)


def more_samplers(unet, scheduler, g) -> dict:
    """The samplers of issue 37 from one more noise draw (drawn after the arrays above, which stay as they were):
    ``DDIMScheduler`` (eta 0, no clipping) with ``trailing``, ``linspace`` and ``leading`` spacing with ``steps_offset=1``;
    ``DPMSolverMultistepScheduler`` (``dpmsolver++``, order 2, its defaults: ``linspace`` spacing,
    ``lower_order_final``, final sigma zero) at 10 and 20 steps, and with ``trailing`` spacing;
    ``PNDMScheduler`` with ``skip_prk_steps`` (its PLMS) at 10 steps; and ``DDPMScheduler``'s posterior mean and
    variance (``fixed_small``, no clipping) at each of its 10 leading-spaced steps from ``ddpm_z``. Each ``<name>`` has
    ``<name>_timesteps``, the time steps it called the network at."""
    noise = th.randn(4, 3, 16, 16, generator=g)
    out = {"sampler_noise": noise}
    runs = {
        "ddim_trailing": (DDIMScheduler, dict(timestep_spacing="trailing", clip_sample=False), 10, dict(eta=0.0)),
        "ddim_linspace": (DDIMScheduler, dict(timestep_spacing="linspace", clip_sample=False), 10, dict(eta=0.0)),
        "ddim_leading_offset": (DDIMScheduler, dict(steps_offset=1, clip_sample=False), 10, dict(eta=0.0)),
        "dpmpp_2m": (DPMSolverMultistepScheduler, {}, 10, {}),
        "dpmpp_2m_20": (DPMSolverMultistepScheduler, {}, 20, {}),
        "dpmpp_2m_trailing": (DPMSolverMultistepScheduler, dict(timestep_spacing="trailing"), 10, {}),
        "plms": (PNDMScheduler, dict(skip_prk_steps=True), 10, {}),
    }
    for name, (kind, overrides, num_steps, step_kwargs) in runs.items():
        sched = kind.from_config(scheduler.config, **overrides)
        out[name], out[f"{name}_timesteps"] = _sample(unet, sched, noise, num_steps, **step_kwargs)
    ddpm = DDPMScheduler.from_config(scheduler.config, clip_sample=False)
    ddpm.set_timesteps(10)
    z = th.randn(4, 3, 16, 16, generator=g)
    means, variances = [], []
    with th.no_grad():
        for i, t in enumerate(ddpm.timesteps):
            eps = unet(z, t).sample
            stepped = ddpm.step(eps, t, z, generator=th.Generator().manual_seed(100 + i)).prev_sample
            variance = ddpm._get_variance(int(t)) if i < len(ddpm.timesteps) - 1 else th.tensor(0.0)
            drawn = th.randn(z.shape, generator=th.Generator().manual_seed(100 + i))
            means.append(stepped - variance**0.5 * drawn)
            variances.append(variance)
    out.update(ddpm_z=z, ddpm_timesteps=ddpm.timesteps, ddpm_means=th.stack(means), ddpm_variances=th.stack(variances))
    return out


def main(out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    provenance = {
        "generator": "tests/scripts/make_diffusers_fixture.py (this repository)",
        "command": "python tests/scripts/make_diffusers_fixture.py tests/fixtures/diffusers",
        "diffusers": diffusers.__version__,
        "torch": th.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "seeds": "torch.manual_seed(0) before each model; inputs from torch.Generator seed 1",
        "weights": "diffusers' initialization plus N(0, 0.05^2) on every parameter, rounded to float16 and stored so",
        "models": {name: run(name, out_dir) for name in MODELS},
    }
    with open(os.path.join(out_dir, "provenance.json"), "w") as f:
        json.dump(provenance, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
