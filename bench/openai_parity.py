"""Parity of imported improved-diffusion and guided-diffusion checkpoints with their codes' own outputs.

    python bench/openai_parity.py   # writes docs/openai_parity.json and prints the table

Reads tests/fixtures/openai/ (written by each code; see its provenance.json), imports each checkpoint with its
flags into a temporary workdir and reports the largest relative error (to the largest value) of each quantity:
the network's raw output (and at 0.1 x, where GroupNorm's epsilon shows), x-hat, the reverse step's mean and
learned log-variance of the full and of the respaced diffusion, and the code's DDIM sample from the same noise;
then the same raw output with each convention flipped alone; and the absolute error, in bits/dim, of each term of
the NLL bound the eval mode computes for the model (its tanh CDF) against the code's ``_vb_terms_bpd``.
"""

import dataclasses
import json
import os
import tempfile

import jax.numpy as jnp
import numpy as np

import pdist
from pdist import diffusion, samplers
from pdist.evaluation import nll
from pdist.interop import importer, openai

ROOT = os.path.join(os.path.dirname(__file__), "..")
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "openai")


def rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


def model_rows(name: str, made: dict, tmp: str) -> dict:
    workdir = os.path.join(tmp, name)
    path = os.path.join(FIXTURE, f"{name}.pt")
    importer.import_checkpoint(
        path, workdir, source_flags=f"{made['flags']} --timestep_respacing {made['timestep_respacing']}"
    )
    model = pdist.load(workdir)
    ref = np.load(os.path.join(FIXTURE, f"{name}.npz"))
    spec, T, params = model.spec, model.spec.schedule.num_timesteps, model.ema_params
    label = jnp.asarray(ref["y"]) if "y" in ref.files else None
    z, small = jnp.asarray(ref["x"]), jnp.asarray(ref["x_small"])
    level = jnp.asarray(ref["steps"] + 1, jnp.float32)
    rows = {
        "raw output": rel(spec.apply(params, z, level / T, label, None), ref["raw"]),
        "raw output at 0.1 x": rel(spec.apply(params, small, level / T, label, None), ref["raw_small"]),
    }

    def step(t_level, s_level, tag, rows_used):
        pred = spec(params, label, None, z, t_level / T)
        tr = diffusion.transition(spec.schedule.logsnr(s_level / T), spec.schedule.logsnr(t_level / T))
        rows[f"x-hat ({tag})"] = rel(pred.x, ref[f"{tag}_pred_xstart"])
        rows[f"mean ({tag})"] = rel(diffusion.posterior_mean(tr, pred.x, z), ref[f"{tag}_mean"])
        log_var = np.asarray(diffusion.log_variance("learned", tr, pred.var_frac))
        rows[f"learned log-variance ({tag})"] = rel(log_var[rows_used], ref[f"{tag}_log_variance"][rows_used])

    step(level, level - 1, "full", slice(1, None))  # the last step's variance is never used by pdist (x-hat)
    spaced = ref["spaced_timesteps"]
    k = (len(spaced) - 1) // 2
    step(jnp.full((4,), spaced[k] + 1.0), jnp.full((4,), spaced[k - 1] + 1.0), "spaced", slice(None))
    s = model.config.sample
    x = samplers.sample(model.denoiser(label=label), spec.schedule, jnp.asarray(ref["ddim_noise"]), method="ddim",
                        num_steps=s.num_steps, grid=s.grid, clip_x=True)  # fmt: skip
    rows[f"DDIM, {s.num_steps} steps on {s.grid}, clipped"] = rel(x, ref["ddim"])

    m = model.config.model
    flips = {"GroupNorm epsilon 1e-6 (Flax's)": dataclasses.replace(spec, network=spec.network.clone(norm_eps=1e-6))}
    if not m.resblock_updown:
        flips["strided conv padding 'same' (Flax's)"] = dataclasses.replace(
            spec, network=spec.network.clone(downsample_padding="same")
        )
    if T != 1000:
        other = {"timestep": "rescaled_timestep"}.get(m.logsnr_input, "timestep")
        flips[f"time input {other}"] = dataclasses.replace(spec, network_input=other)
    for key, other in flips.items():
        rows[f"flipped: {key}"] = rel(other.apply(params, small, level / T, label, None), ref["raw_small"])
    rows["flipped: level i as step i"] = rel(spec.apply(params, small, (level - 1) / T, label, None), ref["raw_small"])
    new_order = model.metadata["source"]["flags"].get("use_new_attention_order", False)
    swapped = openai.to_pdist_params(openai.read(open(path, "rb").read()), model.config, not new_order)
    rows["flipped: qkv order"] = rel(spec.apply(swapped, z, level / T, label, None), ref["raw"])
    # the NLL bound's terms (the eval mode's protocol for this model) against _vb_terms_bpd, from the same noise
    x0 = jnp.asarray(ref["vb_x"])
    denoise_fn = spec.bind(params, None if label is None else label[:2])
    cdf = model.config.eval.nll_cdf
    for clip in (True, False):
        tag = "clipped" if clip else "unclipped"
        for i, eps, theirs in zip(ref["vb_steps"], ref["vb_noise"], ref[f"vb_terms_{tag}"], strict=True):
            ours = nll.level_term(denoise_fn, model.schedule, x0, jnp.asarray(eps), int(i) + 1, T, "learned", clip, cdf)
            what = "decoder NLL" if i == 0 else f"KL at step {int(i)}"
            rows[f"NLL bound, {what}, x-hat {tag} (bits/dim, absolute)"] = float(np.max(np.abs(ours - theirs)))
    return rows


def main():
    made = json.load(open(os.path.join(FIXTURE, "provenance.json")))["models"]
    with tempfile.TemporaryDirectory() as tmp:
        out = {f"{name}-diffusion": model_rows(name, made[name], tmp) for name in ("improved", "guided")}
    path = os.path.join(ROOT, "docs", "openai_parity.json")
    with open(path, "w") as f:
        json.dump({"command": "python bench/openai_parity.py", "max_relative_error": out}, f, indent=1)
    for name, rows in out.items():
        print(name)
        for k, v in rows.items():
            print(f"  {k:48s} {v:.2e}")


if __name__ == "__main__":
    main()
