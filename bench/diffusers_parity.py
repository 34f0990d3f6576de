"""Parity of imported diffusers pipeline folders with diffusers' own outputs.

    python bench/diffusers_parity.py   # writes docs/diffusers_parity.json and prints the table

Reads tests/fixtures/diffusers/ (written by diffusers; see its provenance.json), imports each pipeline folder
into a temporary workdir and reports the largest relative error (to the largest value) of the UNet's output at
diffusers' time steps (and at 0.1 x, where GroupNorm's epsilon shows), then with each convention flipped alone, and
pdist's DDIM against diffusers' DDIMScheduler from the same noise, unclipped and with its clip_sample.
"""

import dataclasses
import json
import os
import tempfile

import jax.numpy as jnp
import numpy as np

import pdist
from pdist import samplers
from pdist.interop import importer

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
            print(f"  {k:48s} {v:.2e}")


if __name__ == "__main__":
    main()
