"""A saved DPM-OT expressway: the map :mod:`pdist.ot` solves for, as a value and as a file.

The file is an npz of the targets, the dual potentials, ``t``, the image
shape and the model key (what the targets' latents belong to, checked when
sampling). The math that builds and applies the map stays in :mod:`pdist.ot`;
this module only holds it and moves it to and from files.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from pdist.runtime import files


@dataclasses.dataclass(frozen=True)
class Expressway:
    """The saved map: ``targets`` [N, D] (latents at time ``t``), ``potentials`` [N], the image ``shape`` the
    rows flatten, and ``model`` (what the targets' latents belong to: schedule and dataset, checked when
    sampling; :attr:`pdist.spec.ModelSpec.expressway_key`)."""

    targets: np.ndarray
    potentials: np.ndarray
    t: float
    shape: tuple[int, ...]
    model: str

    def save(self, path: str) -> None:
        files.makedirs(os.path.dirname(files.absolute(path)))
        files.save_npz(
            path,
            targets=self.targets,
            potentials=self.potentials,
            t=np.float64(self.t),
            shape=np.asarray(self.shape),
            model=np.asarray(self.model),
        )


def load(path: str) -> Expressway:
    """The expressway saved at ``path`` (``Expressway.save``)."""
    if not files.exists(path):
        raise FileNotFoundError(f"No expressway at {path}; build one with Pretrained.expressway (bench/ot.py).")
    f = files.load_npz(path)
    return Expressway(f["targets"], f["potentials"], float(f["t"]), tuple(int(v) for v in f["shape"]), str(f["model"]))
