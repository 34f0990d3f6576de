"""Parity of imported diffusers pipeline folders with diffusers' own outputs.

    python bench/diffusers_parity.py   # writes docs/diffusers_parity.json and prints the table

Reads tests/fixtures/diffusers/ (written by diffusers; see its provenance.json), imports each pipeline folder
into a temporary workdir and reports the largest relative error (to the largest value) of the UNet's output at
diffusers' time steps (and at 0.1 x, where GroupNorm's epsilon shows), then with each convention flipped alone, and
pdist's DDIM against diffusers' DDIMScheduler from the same noise, unclipped and with its clip_sample; then
DDIMScheduler's other spacings, DPMSolverMultistepScheduler, PNDMScheduler (skip_prk_steps) and DDPMScheduler's
means and variances.
"""

import dataclasses
import json
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

import pdist
from pdist import diffusion, samplers, schedules
from pdist.interop import importer
from pdist.samplers import pndm
from pdist.samplers.core import Predictor

ROOT = os.path.join(os.path.dirname(__file__), "..")
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "diffusers")


def rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


def model_rows(name: str, tmp: str) -> dict:
    workdir = os.path.join(tmp, name)
    importer.import_checkpoint(os.path.join(FIXTURE, name), workdir)
    model = pdist.load(workdir)
    ref = np.load(os.path.join(FIXTURE, f"{name}.npz"))
    spec, T, params, m = model.spec, model.spec.schedule.num_timesteps, model.ema_params, model.config.model
    level = jnp.asarray(ref["timesteps"] + 1, jnp.float32)  # diffusers' time step t is pdist's level t + 1
    z, small = jnp.asarray(ref["x"]), jnp.asarray(ref["x_small"])
    rows = {
        "UNet output": rel(spec.apply(params, z, level / T, None, None), ref["out"]),
        "UNet output at 0.1 x": rel(spec.apply(params, small, level / T, None, None), ref["out_small"]),
    }
    flips = {
        f"sin_first={not m.sin_first}": {"sin_first": not m.sin_first},
        f"freq_shift={1 - m.freq_shift:g}": {"freq_shift": 1.0 - m.freq_shift},
        "norm_eps 1e-5 <-> 1e-6": {"norm_eps": 1e-5 if m.norm_eps == 1e-6 else 1e-6},
        "the other downsample padding": {
            "downsample_padding": "symmetric" if m.downsample_padding == "same" else "same"
        },
    }
    for key, change in flips.items():
        other = dataclasses.replace(spec, network=spec.network.clone(**change))
        rows[f"flipped: {key}"] = rel(other.apply(params, small, level / T, None, None), ref["out_small"])
    rows["flipped: level i as time step i"] = rel(
        spec.apply(params, small, (level - 1) / T, None, None), ref["out_small"]
    )
    noise = jnp.asarray(ref["ddim_noise"])

    def ddim(clip, keep):
        return samplers.sample(model.denoiser(), spec.schedule, noise, method="ddim", num_steps=10, grid="ddim_stride",
                               clip_x=clip, clip_keeps_eps=keep)  # fmt: skip

    rows["DDIM vs DDIMScheduler, 10 leading steps, unclipped"] = rel(ddim(False, False), ref["ddim_unclipped"])
    rows["DDIM vs DDIMScheduler, 10 leading steps, clip_sample"] = rel(ddim(True, True), ref["ddim_clipped"])
    rows["flipped: clipping recomputes eps-hat (pdist's own)"] = rel(ddim(True, False), ref["ddim_clipped"])
    rows.update(sampler_rows(model, ref, name))
    return rows


def sampler_rows(model, ref, name: str) -> dict:
    """Issue 37's samplers against diffusers' schedulers, from ``sampler_noise``, 10 steps unless said."""
    schedule, den, T = model.spec.schedule, model.denoiser(), model.spec.schedule.num_timesteps
    noise = jnp.asarray(ref["sampler_noise"])

    def run(key, method, n, grid, **options):
        return rel(samplers.sample(den, schedule, noise, method=method, num_steps=n, grid=grid, **options), ref[key])

    final = dict(lower_order_final="final")
    rows = {
        "DDIM vs DDIMScheduler, trailing": run("ddim_trailing", "ddim", 10, "trailing"),
        "DDIM vs DDIMScheduler, leading, steps_offset=1": run("ddim_leading_offset", "ddim", 10, "leading+1"),
        "DDIM on linspace vs DDIMScheduler's linspace (steps to t - T//N: no grid)": run(
            "ddim_linspace", "ddim", 10, "linspace"
        ),
        "DPM-Solver++ 2M vs DPMSolverMultistepScheduler, linspace": run(
            "dpmpp_2m", "dpmpp_2m", 10, "linspace_dpm", **final
        ),
        "DPM-Solver++ 2M vs DPMSolverMultistepScheduler, linspace, 20 steps": run(
            "dpmpp_2m_20", "dpmpp_2m", 20, "linspace_dpm", **final
        ),
        "DPM-Solver++ 2M vs DPMSolverMultistepScheduler, trailing": run(
            "dpmpp_2m_trailing", "dpmpp_2m", 10, "trailing", **final
        ),
        "flipped: DPM-Solver++ lower_order_final=always (pdist's default)": run(
            "dpmpp_2m", "dpmpp_2m", 10, "linspace_dpm", lower_order_final="always"
        ),
    }
    times = jnp.asarray(schedules.time_grid(schedule, 10, "leading")[:-1], jnp.float32)
    for blend in ("eps", "auto"):  # PNDMScheduler (set_alpha_to_one=False) ends with z on level 1
        z = jax.jit(lambda x, b=blend: pndm.plms(Predictor(den, schedule, False), times, x, None,
                                               warmup="improved_euler", blend=b))(noise)  # fmt: skip
        label = "PLMS vs PNDMScheduler skip_prk_steps" if blend == "eps" else "flipped: PLMS blend=auto (pdist's)"
        rows[label + (" (it blends a v model's raw outputs)" if name != "ho" and blend == "eps" else "")] = rel(
            z, ref["plms"]
        )
    z, levels = jnp.asarray(ref["ddpm_z"]), ref["ddpm_timesteps"] + 1
    worst_mean = worst_var = 0.0
    for i, (t, s) in enumerate(zip(levels[:-1], levels[1:], strict=True)):
        tt, ss = (jnp.full((len(z),), v / T, jnp.float32) for v in (t, s))
        tr = diffusion.transition(schedule.logsnr(ss), schedule.logsnr(tt))
        worst_mean = max(worst_mean, rel(diffusion.posterior_mean(tr, den(z, tt).x, z), ref["ddpm_means"][i]))
        var = float(np.exp(np.asarray(diffusion.log_variance("small", tr, None)))[0])
        worst_var = max(worst_var, abs(var / float(ref["ddpm_variances"][i]) - 1))
    rows["DDPM means vs DDPMScheduler, each step"] = worst_mean
    rows["DDPM variances vs DDPMScheduler (float32 1 - alphas_cumprod on its side)"] = worst_var
    return rows


def main():
    made = json.loads(open(os.path.join(FIXTURE, "provenance.json")).read())
    with tempfile.TemporaryDirectory() as tmp:
        table = {name: model_rows(name, tmp) for name in made["models"]}
    out = {"diffusers": made["diffusers"], "fixture": "tests/fixtures/diffusers", "largest relative error": table}
    with open(os.path.join(ROOT, "docs", "diffusers_parity.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    for name, rows in table.items():
        print(name)
        for k, v in rows.items():
            print(f"  {k:80s} {v:.2e}")


if __name__ == "__main__":
    main()
