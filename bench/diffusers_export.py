"""Exported pdist models run by diffusers itself: ``python -m pdist.interop export``'s folders loaded with
``UNet2DModel.from_pretrained`` in PyTorch, against pdist on the same inputs.

    python bench/diffusers_export.py --torch_python /path/to/venv/bin/python   # writes docs/diffusers_export.json

``--torch_python``: a Python with torch and diffusers (tests/scripts/make_diffusers_fixture.py's virtualenv; pdist
never imports PyTorch). Models: the two diffusers fixtures imported with 10 sampling steps (a discrete eps model
with additive conditioning, a discrete v model with scale-shift), and a continuous-time 4-step student of pdist's
own (the digits config's cosine logSNR and noise embedding at width 32, random weights), unconditional and
class-conditional (labels 0, 1, 2, ... in turn). For each: the UNet's output
at the model's own time steps, the folder's ``sample_pdist.py`` against ``pdist.load(workdir).sample``, and where
the folder has a scheduler, diffusers' ``DDIMScheduler`` against pdist's DDIM with diffusers' clipping
(``clip_keeps_eps=True``); largest difference relative to the largest value.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import jax
import numpy as np

ROOT = os.path.join(os.path.dirname(__file__), "..")
sys.path.insert(0, os.path.join(ROOT, "tests"))

import pdist  # noqa: E402
from pdist import samplers  # noqa: E402
from pdist.interop import exporter, importer  # noqa: E402

SIDE = os.path.join(ROOT, "tests", "scripts", "diffusers_side.py")  # run with --torch_python


def rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / np.max(np.abs(np.asarray(b))))


def nchw(x):
    return np.ascontiguousarray(np.moveaxis(np.asarray(x, np.float32), -1, 1))


def check(workdir: str, tmp: str, torch_python: str) -> dict:
    folder = os.path.join(tmp, os.path.basename(workdir) + "_diffusers")
    wrote = exporter.export(workdir, folder)
    model, how = pdist.load(workdir), wrote["sampling"]
    c, size = model.config.data.channels, model.config.data.image_size
    key = jax.random.key(0)
    z = np.asarray(jax.random.normal(key, (len(how["timesteps"]), size, size, c)), np.float32)
    times = np.asarray(how["times"][:-1], np.float32)
    classes = how["num_classes"]
    labels = np.arange(len(z)) % classes if classes else None
    noise_labels = np.arange(4) % classes if classes else None  # sample_pdist.py's default labels
    ours_out = np.asarray(model.spec.apply(model.ema_params, z, times, labels, None))
    noise = np.asarray(jax.random.normal(jax.random.key(1), (4, size, size, c)), np.float32)
    n, grid = how["num_steps"], how["grid"]

    def ddim(keep):
        den = model.denoiser(label=noise_labels)
        return np.asarray(samplers.sample(den, model.schedule, noise, method="ddim", num_steps=n, grid=grid,
                                          clip_x=how["clip_x"], clip_keeps_eps=keep))  # fmt: skip

    own = ddim(how["clip_keeps_eps"])
    inputs = os.path.join(tmp, "inputs.npz")
    extra = {"labels": labels, "noise_labels": noise_labels} if classes else {}
    np.savez(inputs, z=nchw(z), tau=np.asarray(how["timesteps"], np.float32), noise=nchw(noise), **extra)
    out = os.path.join(tmp, "theirs.npz")
    subprocess.run([torch_python, SIDE, folder, inputs, out], check=True)
    theirs = np.load(out)
    row = {
        "steps": n,
        "grid": grid,
        "scheduler": wrote["scheduler"] is not None,
        "UNet2DModel output vs pdist's network": rel(np.moveaxis(theirs["out"], 1, -1), ours_out),
        "sample_pdist.py vs pdist's sampler": rel(np.moveaxis(theirs["loop"], 1, -1), own),
    }
    if "scheduler" in theirs.files:
        row["DDIMScheduler vs pdist's DDIM with clip_keeps_eps"] = rel(np.moveaxis(theirs["scheduler"], 1, -1),
                                                                       ddim(True))  # fmt: skip
    return row


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--torch_python", required=True)
    args = parser.parse_args()
    from test_interop import _native_workdir

    table = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("ho", "scale_shift"):
            workdir = os.path.join(tmp, name)
            fixture = os.path.join(ROOT, "tests", "fixtures", "diffusers", name)
            importer.import_checkpoint(fixture, workdir, overrides=[("sample.num_steps", "10")])
            table[f"diffusers fixture {name}, imported, 10 steps"] = check(workdir, tmp, args.torch_python)
        student = _native_workdir(os.path.join(tmp, "student"))
        table["pdist continuous-time 4-step student"] = check(student, tmp, args.torch_python)
        student = _native_workdir(os.path.join(tmp, "class_student"), class_conditional=True)
        table["pdist continuous-time 4-step class-conditional student"] = check(student, tmp, args.torch_python)
    versions = subprocess.run([args.torch_python, "-c", "import torch, diffusers; print(torch.__version__, "
                               "diffusers.__version__)"], capture_output=True, text=True).stdout.split()  # fmt: skip
    out = {"torch": versions[0], "diffusers": versions[1], "largest relative error": table}
    with open(os.path.join(ROOT, "docs", "diffusers_export.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    for name, row in table.items():
        print(name)
        for k, v in row.items():
            print(f"  {k:52s} {v if isinstance(v, (bool, int, str)) else f'{v:.2e}'}")


if __name__ == "__main__":
    main()
