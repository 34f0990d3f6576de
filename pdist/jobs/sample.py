"""``--config.mode=sample``: ``config.sample`` images from a checkpoint, as a PNG grid and an npz named by the
method, steps, time grid and checkpoint step."""

from __future__ import annotations

import os

import ml_collections

from pdist import images
from pdist.pretrained import load
from pdist.runtime import console, layout
from pdist.sampling import Sampling


def run(config: ml_collections.ConfigDict, workdir: str) -> tuple[str, str]:
    """Samples ``config.sample.checkpoint`` (default: the newest in ``workdir``); returns the PNG and npz paths."""
    settings = config.sample
    model = load(settings.checkpoint or workdir)
    sampling = Sampling.from_config(settings)
    grid = model.grid(sampling.grid)
    x = model.sample(settings.num_samples, sampling, use_ema=settings.use_ema, progress=f"sampling {sampling.label}")
    guided = "" if settings.guidance is None else f"_w{settings.guidance:g}"
    expressway = "" if settings.ot is None else "_ot"
    name = f"samples_{settings.method}_{settings.num_steps}_{grid}{guided}{expressway}_step{model.step}"
    png, npz = images.save_samples(layout.samples_dir(workdir), name, x)
    console.produced("samples", f"{npz}, {os.path.basename(png)}")
    return png, npz
