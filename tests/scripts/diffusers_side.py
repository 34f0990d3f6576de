"""diffusers' side of an exported folder (``python -m pdist.interop export``), run with a Python that has torch and
diffusers (pdist's tests and pdist itself never import PyTorch): tests/test_interop.py (when PDIST_TORCH_PYTHON
names one) and bench/diffusers_export.py.

Usage: diffusers_side.py FOLDER INPUTS.npz OUT.npz

INPUTS holds ``z`` and ``tau`` (the UNet's input, NCHW, and its float time steps), ``noise`` (NCHW) and, for a
class-conditional model, ``labels`` (of ``z``'s rows) and ``noise_labels`` (of ``noise``'s); OUT gets
``out`` (``UNet2DModel.from_pretrained``'s output), ``loop`` (the folder's ``sample_pdist.py`` from ``noise``) and,
where the folder has a scheduler, ``scheduler`` (``DDIMScheduler`` with eta 0 at the model's step count).
"""

import json
import os
import sys

import numpy as np
import torch
from diffusers import DDIMScheduler, UNet2DModel

folder, inputs, out = sys.argv[1:]
sys.path.insert(0, folder)
import sample_pdist  # noqa: E402  (the folder's own loop)

a = np.load(inputs)
unet = UNet2DModel.from_pretrained(os.path.join(folder, "unet")).eval()
result = {}
labels, noise_labels = (torch.from_numpy(a[k]) if k in a.files else None for k in ("labels", "noise_labels"))
with torch.no_grad():
    result["out"] = unet(torch.from_numpy(a["z"]), torch.from_numpy(a["tau"]), class_labels=labels).sample.numpy()
    result["loop"] = sample_pdist.sample(torch.from_numpy(a["noise"]), noise_labels).numpy()
    if os.path.exists(os.path.join(folder, "scheduler")):
        ddim = DDIMScheduler.from_pretrained(os.path.join(folder, "scheduler"))
        ddim.set_timesteps(json.load(open(os.path.join(folder, "pdist_sampling.json")))["num_steps"])
        z = torch.from_numpy(a["noise"])
        for t in ddim.timesteps:
            z = ddim.step(unet(z, t).sample, t, z, eta=0.0).prev_sample
        result["scheduler"] = z.numpy()
np.savez(out, **result)
