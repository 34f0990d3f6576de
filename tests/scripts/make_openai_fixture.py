"""Writes tests/fixtures/openai/: two tiny OpenAI networks with random weights, saved and run by OpenAI's own code.

Run once, with PyTorch, in a virtualenv of its own (the tests never import PyTorch):

    python3 -m venv /tmp/tv && /tmp/tv/bin/pip install torch==2.13.0 numpy blobfile tqdm
    git -C <improved-diffusion checkout> archive --prefix=improved/ HEAD | tar x -C /tmp/oai
    git -C <guided-diffusion checkout> archive --prefix=guided/ HEAD | tar x -C /tmp/oai
    /tmp/tv/bin/python tests/scripts/make_openai_fixture.py tests/fixtures/openai /tmp/oai/improved /tmp/oai/guided

For each code (``improved``: improved-diffusion, ``guided``: guided-diffusion) it builds the model and
diffusion of the flags below with the code's ``script_util`` (its defaults for every flag not given), adds
N(0, 0.05^2) noise to every parameter (so that the zero-initialized layers are not zero), rounds it to float16,
saves the state dict with ``torch.save`` in float16 (``<name>.pt``, half the bytes; the model runs in float32) and writes ``<name>.npz``: the raw network output at a few (fractional)
time steps, ``p_mean_variance`` of the full T-step diffusion (mean, log-variance, x-hat; unclipped) and of its
respaced diffusion, the code's DDIM sample (eta 0, clip_denoised) from given noise on its
``timestep_respacing``, and the terms of its NLL bound (``_vb_terms_bpd`` at a few steps from given noise,
clipped and not, the decoder's log-likelihood of each pixel, and ``_prior_bpd``). Images are NHWC in the .npz (pdist's layout). provenance.json also lists every model
each README releases, with its flags and the parameter count of the network the code builds from them.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys

import numpy as np
import torch as th

FLAGS = {
    # improved-diffusion at 32x32 (channel_mult 1,2,2,2): additive conditioning, legacy qkv order, class-
    # conditional, learned sigmas, cosine schedule, rescaled time steps (its default)
    "improved": dict(
        image_size=32, num_channels=32, num_res_blocks=1, num_heads=2, attention_resolutions="16,8",
        class_cond=True, learn_sigma=True, use_scale_shift_norm=False, diffusion_steps=100, noise_schedule="cosine",
    ),
    # guided-diffusion at 32x32 with channel_mult 1,1: scale-shift, BigGAN up/down blocks, heads of 16 channels
    # in the new qkv order, learned sigmas, linear schedule, unscaled time steps (its default)
    "guided": dict(
        image_size=32, num_channels=32, num_res_blocks=1, channel_mult="1,1", num_head_channels=16,
        attention_resolutions="32,16", resblock_updown=True, use_new_attention_order=True, learn_sigma=True,
        diffusion_steps=1000, noise_schedule="linear",
    ),
}  # fmt: skip
RESPACING = {"improved": "ddim5", "guided": "8"}  # ddim's stride grid and the evenly respaced one


def flag_string(flags: dict) -> str:
    return " ".join(f"--{k} {v}" for k, v in flags.items())


def run(name: str, checkout: str, out_dir: str) -> dict:
    sys.path.insert(0, checkout)
    package = "improved_diffusion" if name == "improved" else "guided_diffusion"
    su = importlib.import_module(f"{package}.script_util")
    respace = importlib.import_module(f"{package}.respace")
    losses = importlib.import_module(f"{package}.losses")
    args = {**su.model_and_diffusion_defaults(), **FLAGS[name]}
    th.manual_seed(0)
    model, diffusion = su.create_model_and_diffusion(**args)
    with th.no_grad():
        for p in model.parameters():
            p.add_(0.05 * th.randn_like(p))
            p.copy_(p.half().float())  # weights that float16 holds exactly: the file stores them in float16
    model.eval()
    th.save({k: v.half() for k, v in model.state_dict().items()}, os.path.join(out_dir, f"{name}.pt"))

    size, T = args["image_size"], args["diffusion_steps"]
    g = th.Generator().manual_seed(1)
    x = th.randn(4, 3, size, size, generator=g)
    y = th.tensor([3, 999, 0, 41]) if args["class_cond"] else None
    kw = {} if y is None else {"y": y}
    steps = th.tensor([0, 17, T // 2, T - 1])
    record = {"x": x, "steps": steps}
    if y is not None:
        record["y"] = y
    with th.no_grad():
        # the network as the diffusion calls it (SpacedDiffusion's wrapper maps and rescales the time steps)
        record["raw"] = diffusion._wrap_model(model)(x, steps, **kw)
        # an input of small variance, where GroupNorm's epsilon shows in the output
        record["x_small"] = 0.1 * x
        record["raw_small"] = diffusion._wrap_model(model)(record["x_small"], steps, **kw)
        # the full diffusion's reverse step at those steps (unclipped)
        pmv = diffusion.p_mean_variance(model, x, steps, clip_denoised=False, model_kwargs=kw)
        for k in ("mean", "log_variance", "pred_xstart"):
            record[f"full_{k}"] = pmv[k].expand_as(x) if pmv[k].shape != x.shape else pmv[k]
        # the respaced diffusion (what timestep_respacing samples with): its timesteps and its DDIM sample
        spacing = RESPACING[name]
        spaced = su.create_gaussian_diffusion(
            steps=T, learn_sigma=args["learn_sigma"], noise_schedule=args["noise_schedule"],
            use_kl=args["use_kl"], predict_xstart=args["predict_xstart"], rescale_timesteps=args["rescale_timesteps"],
            rescale_learned_sigmas=args["rescale_learned_sigmas"], timestep_respacing=spacing,
            **({"sigma_small": args["sigma_small"]} if "sigma_small" in args else {}),
        )  # fmt: skip
        record["spaced_timesteps"] = th.tensor(sorted(respace.space_timesteps(T, spacing)))
        last = th.tensor([len(record["spaced_timesteps"]) - 1] * 4)
        pmv = spaced.p_mean_variance(model, x, last // 2, clip_denoised=False, model_kwargs=kw)
        for k in ("mean", "log_variance", "pred_xstart"):
            record[f"spaced_{k}"] = pmv[k].expand_as(x) if pmv[k].shape != x.shape else pmv[k]
        noise = th.randn(4, 3, size, size, generator=g)
        record["ddim_noise"] = noise
        record["ddim"] = spaced.ddim_sample_loop(
            model, (4, 3, size, size), noise=noise, clip_denoised=True, model_kwargs=kw, eta=0.0
        )
        # the bound's terms (calc_bpd_loop's, at a few of its steps, from given noise): an image on the 256-level
        # grid, diffused to each step; _vb_terms_bpd's decoder NLL at step 0, its KL elsewhere, in bits/dim,
        # with x-hat clipped (calc_bpd_loop's default) and not; and the prior term
        x0 = th.round((x[:2].clamp(-1, 1) + 1) * 127.5) / 127.5 - 1  # two images, two classes
        vb_kw = {} if y is None else {"y": y[:2]}
        vb_steps = th.tensor([0, 1, 17, T // 2, T - 1])
        vb_noise = th.randn(len(vb_steps), 2, 3, size, size, generator=g)
        record["vb_x"], record["vb_steps"], record["vb_noise"] = x0, vb_steps, vb_noise
        for clip in (True, False):
            terms = []
            for s, n in zip(vb_steps, vb_noise, strict=True):
                t = th.full((2,), int(s))
                z = diffusion.q_sample(x0, t, noise=n)
                out = diffusion._vb_terms_bpd(model, x0, z, t, clip_denoised=clip, model_kwargs=vb_kw)
                terms.append(out["output"])
                if s == 0:  # the decoder's log-likelihood of each pixel, as _vb_terms_bpd computes it
                    p_mean = diffusion.p_mean_variance(model, z, t, clip_denoised=clip, model_kwargs=vb_kw)
                    means, log_scales = p_mean["mean"], 0.5 * p_mean["log_variance"].expand_as(z)
                    pixels = losses.discretized_gaussian_log_likelihood(x0, means=means, log_scales=log_scales)
                    record[f"vb_decoder_pixels_{'clipped' if clip else 'unclipped'}"] = pixels
            record[f"vb_terms_{'clipped' if clip else 'unclipped'}"] = th.stack(terms)
        record["vb_prior"] = diffusion._prior_bpd(x0)
    arrays = {}
    for k, v in record.items():
        a = v.numpy()
        arrays[k] = np.moveaxis(a, -3, -1) if a.ndim >= 4 else a
    np.savez_compressed(os.path.join(out_dir, f"{name}.npz"), **arrays)
    sys.path.remove(checkout)
    return {
        "flags": flag_string(FLAGS[name]),
        "timestep_respacing": spacing,
        "parameters": int(sum(p.numel() for p in model.parameters())),
    }


def readme_models(checkout: str) -> dict[str, str]:
    """The released models of a checkout's README.md: {checkpoint name: its MODEL_FLAGS and DIFFUSION_FLAGS}.
    improved-diffusion names each checkpoint in a link above its flags; guided-diffusion's command after its
    MODEL_FLAGS gives ``--model_path models/NAME.pt``."""
    import re

    lines = open(os.path.join(checkout, "README.md")).read().splitlines()
    found, name, flags = {}, None, []
    for line in lines:
        link = re.search(r"march-2021/([\w.]+)\.pt", line)
        if link:
            name, flags = link.group(1), []
        m = re.match(r'(MODEL|DIFFUSION)_FLAGS="(.*)"', line.strip())
        if m:
            flags = (flags if m.group(1) == "DIFFUSION" else []) + [m.group(2)]
            if name and m.group(1) == "DIFFUSION":
                found[name] = " ".join(flags)
        path = re.search(r"--model_path models/([\w.]+)\.pt", line)
        if path and flags:
            found[path.group(1)] = " ".join(flags)
    return found


def released(checkout: str, package: str) -> dict:
    """{name: {"flags", "parameters"}}: each README model built by the code's create_model (random weights)."""
    import argparse

    sys.path.insert(0, checkout)
    su = importlib.import_module(f"{package}.script_util")
    out = {}
    for name, flags in readme_models(checkout).items():
        parser = argparse.ArgumentParser()
        su.add_dict_to_argparser(parser, su.model_and_diffusion_defaults())
        args, _ = parser.parse_known_args(flags.split())
        try:
            model, _ = su.create_model_and_diffusion(**su.args_to_dict(args, su.model_and_diffusion_defaults()))
        except Exception as e:  # noqa: BLE001  (a README model its own create_model does not build: recorded)
            out[name] = {"flags": flags, "error": f"{type(e).__name__}: {e}"}
            continue
        out[name] = {"flags": flags, "parameters": int(sum(p.numel() for p in model.parameters()))}
        del model
    sys.path.remove(checkout)
    for module in [m for m in sys.modules if m.startswith(package)]:
        del sys.modules[module]
    return out


def main(out_dir: str, improved: str, guided: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    made = {"improved": run("improved", improved, out_dir), "guided": run("guided", guided, out_dir)}
    for module in [m for m in sys.modules if m.startswith(("improved_diffusion", "guided_diffusion"))]:
        del sys.modules[module]
    readme = {**released(improved, "improved_diffusion"), **released(guided, "guided_diffusion")}
    provenance = {
        "generator": "tests/scripts/make_openai_fixture.py (this repository)",
        "command": "python tests/scripts/make_openai_fixture.py tests/fixtures/openai IMPROVED GUIDED",
        "code": {
            "improved": "openai/improved-diffusion 1bc7bbbdc414d83d4abf2ad8cc1446dc36c4e4d5 (git archive of that commit)",
            "guided": "openai/guided-diffusion 22e0df8183507e13a7813f8d38d51b072ca1e67c (git archive of that commit)",
        },
        "torch": th.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "seeds": "torch.manual_seed(0) before each model; inputs from torch.Generator seed 1",
        "weights": "each code's initialization plus N(0, 0.05^2) on every parameter, rounded to float16 and stored so; run in float32",
        "models": made,
        "released": readme,  # each README's models: their flags, and their parameter count built by the code
    }
    with open(os.path.join(out_dir, "provenance.json"), "w") as f:
        json.dump(provenance, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main(*sys.argv[1:4])
