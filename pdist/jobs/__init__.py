"""The jobs ``python -m pdist.main`` runs, one module per ``config.mode``.

Each module's ``run(config, workdir)`` does one job: ``train`` (a teacher),
``distill`` (every round of ``config.distill.method``), ``sample`` (images
from a checkpoint), ``eval`` (``evaluate``: sample quality and NLL of a
checkpoint) and ``edit`` (images of one class edited into others). Modules
are imported when their job runs, so that the math core and ``pdist.load``
stay light.
"""

from __future__ import annotations

import importlib

import ml_collections

# mode -> module
JOBS = {"train": "train", "distill": "distill", "sample": "sample", "eval": "evaluate", "edit": "edit"}
MODES = tuple(JOBS)


def run(config: ml_collections.ConfigDict, workdir: str):
    """Checks ``config``, then runs the job ``config.mode`` names in this process (which has joined the run)."""
    from pdist import config as config_lib
    from pdist.runtime import workdir as workdir_lib

    config_lib.validate(config)
    workdir_lib.check(workdir)
    return importlib.import_module(f"pdist.jobs.{JOBS[config.mode]}").run(config, workdir)
