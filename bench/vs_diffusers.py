"""The same imported model sampled by pdist (JAX) and by diffusers (PyTorch) from the same noise, side by side.

    python bench/vs_diffusers.py --torch_python /path/to/venv/bin/python [--steps 10 50 250] [--batch 4]
        # prints the table and writes docs/vs_diffusers.json

``--torch_python``: a Python with torch and diffusers (pdist never imports PyTorch). The model is Ho et al.'s
CIFAR-10 DDPM architecture (``google/ddpm-cifar10-32``'s UNet2DModel config: 35.7M parameters, additive time
conditioning, attention at 16x16) with random weights, made and saved by diffusers with a linear-beta
``DDIMScheduler``, then imported with ``python -m pdist.interop import``. Each side runs DDIM (eta 0, the
scheduler's ``leading`` spacing, no clipping: a random network's x-hat lies far outside [-1, 1], where clipping with
the network's eps-hat kept turns float rounding into different images after tens of steps) for each step count from
one noise batch: images per second over a second, timed run (the first call, compilation or warm-up, apart), and the
largest difference of the images relative to their largest value. The same script runs on an accelerator when JAX
and PyTorch see one.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.join(os.path.dirname(__file__), "..")

TORCH_SIDE = r"""
import json, os, sys, time
import numpy as np, torch
from diffusers import DDIMScheduler, DDPMPipeline, UNet2DModel
folder, mode = sys.argv[1], sys.argv[2]
torch.set_num_threads(int(os.environ.get("BENCH_THREADS", os.cpu_count())))
if mode == "make":
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
                       block_out_channels=(128, 256, 256, 256),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                       flip_sin_to_cos=False, freq_shift=1, downsample_padding=0, norm_eps=1e-6,
                       attention_head_dim=None)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.02 * torch.randn_like(p))
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                              clip_sample=False)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    print(json.dumps({"parameters": sum(p.numel() for p in unet.parameters()), "torch": torch.__version__}))
    sys.exit()
inputs, out = sys.argv[3], sys.argv[4]
a = np.load(inputs)
device = "cuda" if torch.cuda.is_available() else "cpu"
unet = UNet2DModel.from_pretrained(os.path.join(folder, "unet")).eval().to(device)
ddim = DDIMScheduler.from_pretrained(os.path.join(folder, "scheduler"))
res, times = {}, {}
for n in [int(s) for s in a["steps"]]:
    for run in ("first", "timed"):
        began = time.perf_counter()
        ddim.set_timesteps(n)
        z = torch.from_numpy(a["noise"]).to(device)
        with torch.no_grad():
            for t in ddim.timesteps:
                z = ddim.step(unet(z, t).sample, t, z, eta=0.0).prev_sample
        z = z.cpu()  # waits for the device
        times[f"{n}_{run}"] = time.perf_counter() - began
    res[f"x_{n}"] = z.numpy()
np.savez(out, **res)
print(json.dumps(times))
"""


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--torch_python", required=True)
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 50, 250])
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    import pdist
    from pdist import samplers
    from pdist.interop import importer

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder, workdir = os.path.join(tmp, "pipeline"), os.path.join(tmp, "workdir")
        made = subprocess.run([args.torch_python, "-c", TORCH_SIDE, folder, "make"], check=True, capture_output=True,
                              text=True)  # fmt: skip
        made = json.loads(made.stdout.strip().splitlines()[-1])
        importer.import_checkpoint(folder, workdir)
        model = pdist.load(workdir)
        noise = np.asarray(jax.random.normal(jax.random.key(0), (args.batch, 32, 32, 3)), np.float32)
        inputs, out = os.path.join(tmp, "inputs.npz"), os.path.join(tmp, "theirs.npz")
        np.savez(inputs, noise=np.ascontiguousarray(np.moveaxis(noise, -1, 1)), steps=np.asarray(args.steps))
        ran = subprocess.run([args.torch_python, "-c", TORCH_SIDE, folder, "sample", inputs, out], check=True,
                             capture_output=True, text=True)  # fmt: skip
        theirs_times, theirs = json.loads(ran.stdout.strip().splitlines()[-1]), np.load(out)
        for n in args.steps:
            times = {}
            for run in ("first", "timed"):
                began = time.perf_counter()
                x = samplers.sample(model.denoiser(), model.schedule, jnp.asarray(noise), method="ddim", num_steps=n,
                                    grid="leading", clip_x=False)  # fmt: skip
                x = np.asarray(jax.block_until_ready(x))
                times[run] = time.perf_counter() - began
            theirs_x = np.moveaxis(theirs[f"x_{n}"], 1, -1)
            diff = float(np.abs(x - theirs_x).max() / np.abs(theirs_x).max())
            rows.append({
                "steps": n,
                "batch": args.batch,
                "pdist images/s": args.batch / times["timed"],
                "diffusers images/s": args.batch / theirs_times[f"{n}_timed"],
                "pdist first call s": times["first"],
                "diffusers first call s": theirs_times[f"{n}_first"],
                "largest difference, relative": diff,
            })  # fmt: skip
    result = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "torch": made["torch"],
              "parameters": made["parameters"], "rows": rows}  # fmt: skip
    with open(os.path.join(ROOT, "docs", "vs_diffusers.json"), "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print(f"{made['parameters']:,} parameters, batch {args.batch}, {result['device']}")
    print("| steps | pdist img/s | diffusers img/s | ratio | pdist first call | diffusers first call | max rel. diff |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['steps']} | {r['pdist images/s']:.2f} | {r['diffusers images/s']:.2f} | "
              f"{r['pdist images/s'] / r['diffusers images/s']:.2f} | {r['pdist first call s']:.1f} s | "
              f"{r['diffusers first call s']:.1f} s | {r['largest difference, relative']:.1e} |")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
