"""``--config.mode=edit``: the first ``config.edit.num_images`` images of a split edited from their class into
each class of ``config.edit.targets`` (:meth:`pdist.pretrained.Pretrained.edit`), written as one grid (the
sources on the first row, then one row per target class; a class into itself gives the source back when
``config.edit.guidance`` equals ``config.edit.source_guidance``, not at the defaults 1 and 0) and an
npz (``source``, ``source_labels``, ``targets``, ``edits`` [targets, images, H, W, C])."""

from __future__ import annotations

import os

import ml_collections
import numpy as np

from pdist import editing, images
from pdist.errors import ConfigError, check_one_of, check_positive
from pdist.pretrained import load
from pdist.runtime import console, files, layout


def edit_targets(config: ml_collections.ConfigDict) -> list[int]:
    """The classes ``config.edit.targets`` names (every class when empty); one sentence on a bad entry."""
    classes, text = config.data.num_classes, config.edit.targets.strip()
    if not text:
        return list(range(classes))
    try:
        targets = [int(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError(f"config.edit.targets={text!r} must be comma-separated class indices, e.g. '3,8'.") from None
    bad = [c for c in targets if not 0 <= c < classes]
    if bad:
        raise ConfigError(
            f"config.edit.targets names class {bad[0]}, outside [0, {classes}); give classes of the dataset."
        )
    return targets


def validate(config: ml_collections.ConfigDict) -> None:
    """``config.edit``: the method, its settings and the target classes."""
    edit = config.edit
    check_one_of(edit.method, editing.EDITORS, "edit.method")
    for key in ("num_images", "num_steps", "batch_size"):
        check_positive(edit[key], f"edit.{key}")
    if not 0.0 <= edit.noise_fraction <= 1.0:
        raise ConfigError(
            f"config.edit.noise_fraction={edit.noise_fraction} must be in [0, 1] (1 is InfEdit's default)."
        )
    if edit.guidance < 0 or edit.source_guidance < 0:
        raise ConfigError(
            "config.edit.guidance and config.edit.source_guidance must be >= 0 (w = 0 is the conditional model)."
        )
    if not 0.0 < edit.t_start <= 1.0:
        raise ConfigError(f"config.edit.t_start={edit.t_start} must be in (0, 1] (1: from pure noise).")
    if edit.method == "sdedit" and edit.t_start == 1.0:
        raise ConfigError("SDEdit starts from the image noised to config.edit.t_start; set it below 1 (e.g. 0.5).")
    if not 0 <= edit.attention_steps <= edit.num_steps:
        raise ConfigError(f"config.edit.attention_steps={edit.attention_steps} must be in [0, config.edit.num_steps].")
    edit_targets(config)


def run(config: ml_collections.ConfigDict, workdir: str) -> tuple[str, str]:
    """Edits with ``config.edit.checkpoint`` (default: the newest in ``workdir``); returns the PNG and npz."""
    settings, data = config.edit, config.data
    model = load(settings.checkpoint or workdir)
    targets = edit_targets(config)
    from pdist.data import pipeline  # TensorFlow: when images are read, not at import (pdist.data)

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
    out = layout.edits_dir(workdir)
    files.makedirs(out)
    png, npz = os.path.join(out, f"{name}.png"), os.path.join(out, f"{name}.npz")
    rows = np.concatenate([source[None], edits]).reshape(-1, *source.shape[1:])
    images.save_png(png, images.grid(rows, columns=n), scale=max(1, 256 // source.shape[1] // 4))
    files.save_npz(npz, source=source, source_labels=labels, targets=np.asarray(targets), edits=edits)
    console.produced("edits", f"{png}, {os.path.basename(npz)}")
    return png, npz
