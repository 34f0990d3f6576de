"""``--config.mode=edit``: the first ``config.edit.num_images`` images of a split edited from their class into
each class of ``config.edit.targets`` (:meth:`pdist.pretrained.Pretrained.edit`), written as one grid (the
sources on the first row, then one row per target class; a class into itself gives the source back) and an
npz (``source``, ``source_labels``, ``targets``, ``edits`` [targets, images, H, W, C])."""

from __future__ import annotations

import os

import ml_collections
import numpy as np

from pdist import images
from pdist.config import edit_targets
from pdist.data import pipeline
from pdist.errors import ConfigError
from pdist.pretrained import load
from pdist.runtime import console, files, workdir


def run(config: ml_collections.ConfigDict, directory: str) -> tuple[str, str]:
    """Edits with ``config.edit.checkpoint`` (default: the newest in ``directory``); returns the PNG and npz."""
    settings, data = config.edit, config.data
    model = load(settings.checkpoint or directory)
    targets = edit_targets(config)
    split = pipeline.load_split(data.name, settings.split, data.data_dir, data.image_size, data.channels)
    if "label" not in split:
        raise ConfigError(f"The {data.name} {settings.split!r} split has no labels; editing needs each image's class.")
    n = min(settings.num_images, len(split["image"]))
    source, labels = split["image"][:n], split["label"][:n].astype(np.int32)
    edits = []
    for target in targets:
        edits.append(
            model.edit(
                source,
                labels,
                np.full(n, target, np.int32),
                method=settings.method,
                num_steps=settings.num_steps,
                noise_fraction=settings.noise_fraction,
                guidance=settings.guidance,
                source_guidance=settings.source_guidance,
                t_start=settings.t_start,
                attention_steps=settings.attention_steps,
                seed=settings.seed,
                use_ema=settings.use_ema,
                batch_size=settings.batch_size,
            )
        )
        console.say(f"edited {n} images into class {target}")
    edits = np.stack(edits)
    name = f"edits_{settings.method}_{settings.num_steps}_w{settings.guidance:g}_step{model.step}"
    out = workdir.edits_dir(directory)
    files.makedirs(out)
    png, npz = os.path.join(out, f"{name}.png"), os.path.join(out, f"{name}.npz")
    rows = np.concatenate([source[None], edits]).reshape(-1, *source.shape[1:])
    images.save_png(png, images.grid(rows, columns=n), scale=max(1, 256 // source.shape[1] // 4))
    files.save_npz(npz, source=source, source_labels=labels, targets=np.asarray(targets), edits=edits)
    console.produced("edits", f"{png}, {os.path.basename(npz)}")
    return png, npz
