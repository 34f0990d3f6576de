"""``--config.mode=train``: a teacher, from scratch or resumed from the workdir's newest checkpoint.

One phase of the train step (:mod:`pdist.runtime.phase`) with the config's
loss, to ``config.train.num_steps``; sample grids every
``config.train.sample_every`` steps and at the end (PNG and TensorBoard);
then ``samples.npz`` and its PNG grid from the EMA parameters (guided by
``config.sample.guidance`` when set, for a model trained with label dropout).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import jax
import ml_collections

from pdist import data, images, teacher
from pdist.jobs import sections
from pdist.runtime import console, files, layout, phase
from pdist.runtime import mesh as mesh_lib
from pdist.runtime.step import TrainState
from pdist.sampling import ImageSampler, Sampling
from pdist.spec import ModelSpec

if TYPE_CHECKING:  # clu's writers import TensorFlow (pdist.runtime.phase)
    from clu import metric_writers


def validate(config: ml_collections.ConfigDict) -> None:
    """What training adds to the shared sections (:func:`pdist.jobs.sections.validate_training`)."""
    sections.validate_training(config)


def preflight(config: ml_collections.ConfigDict, workdir: str) -> None:
    """The batch over the devices and the dataset and split (one sentence if any does not fit), even for a
    finished run."""
    mesh_lib.check_batch_size(config.train.batch_size, mesh_lib.data_mesh(), config.train.grad_accum_steps)
    data.training_builder(config.data)


def run(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Trains (or resumes) the teacher ``config`` describes in ``workdir``; returns its final state."""
    mesh = mesh_lib.data_mesh()
    mesh_lib.check_batch_size(config.train.batch_size, mesh, config.train.grad_accum_steps)
    workdir = files.absolute(workdir)
    data.training_builder(config.data)  # a dataset or split that is not there: one sentence, even for a finished run
    spec = ModelSpec.of(config)
    sampler = ImageSampler(spec, mesh)
    grids = lambda step, state, writer: _write_grid(sampler, state, config, workdir, step, writer)  # noqa: E731
    result = phase.run(teacher.phase_of(config, spec, workdir, grids, config.train.sample_every), mesh)
    if not result.trained and files.isfile(os.path.join(workdir, f"{layout.SAMPLES}.npz")):
        console.say(f"its samples are in {console.short(os.path.join(workdir, layout.SAMPLES + '.npz'))} (kept; "
                    "--config.mode=sample draws more)")  # fmt: skip
        return result.state
    sampling = Sampling.from_config(config.sample)
    x = sampler(result.state.ema_params, config.sample.num_samples, sampling, progress=f"sampling {sampling.label}")
    if jax.process_index() == 0:
        png, npz = images.save_samples(workdir, layout.SAMPLES, x)
        steps = result.metadata.get("step", config.train.num_steps)
        console.produced("checkpoint", layout.step_folder(layout.checkpoints(workdir), steps))
        if files.isdir(layout.grids(workdir)):
            console.produced("grids", layout.grids(workdir))
        console.produced("samples", f"{npz}, {os.path.basename(png)}")
        console.produced("TensorBoard", f"tensorboard --logdir {console.short(workdir)}")
        if result.metadata.get("loss") is not None:
            console.fact(f"final loss {result.metadata['loss']:.4g}")
    return result.state


def _write_grid(sampler, state, config, workdir: str, step: int, writer: metric_writers.MetricWriter) -> None:
    x = sampler(state.ema_params, config.train.num_grid_samples, Sampling.from_config(config.sample))
    grid = images.grid(x)
    if jax.process_index() == 0:
        path = layout.grid(workdir, step)
        files.makedirs(os.path.dirname(path))
        images.save_png(path, grid, scale=max(1, 64 // x.shape[1]))
    writer.write_images(step, {"samples": grid[None]})
