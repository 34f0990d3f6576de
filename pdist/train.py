"""Teacher training: ``train_and_evaluate(config, workdir)``.

Validates the config, builds the input, state and step, resumes from the
newest checkpoint in ``<workdir>/checkpoints`` if there is one, and runs
:func:`pdist.loop.run_steps` (scalars: loss, learning rate, gradient norm,
steps/s, ETA; checkpoints every ``checkpoint_every`` steps, asynchronous,
newest ``keep_checkpoints`` kept; sample grids every ``sample_every`` steps).
At the end it writes a final checkpoint and ``<workdir>/samples.npz`` with
its PNG grid.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable

import jax
import ml_collections
from clu import metric_writers

import pdist
from pdist import build, data, images, loop, optim, parallel, train_step
from pdist.checkpoint import CHECKPOINTS, Checkpointer
from pdist.config import validate
from pdist.sample import ImageSampler, write_samples


def metadata(config: ml_collections.ConfigDict, step: int, **extra) -> dict:
    return {"config": json.loads(config.to_json()), "step": step, "pdist_version": pdist.__version__, **extra}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> train_step.TrainState:
    validate(config)
    mesh = parallel.data_mesh()
    parallel.check_batch_size(config.train.batch_size, mesh, config.train.grad_accum_steps)
    workdir = os.path.abspath(workdir)
    t = config.train

    # Everything that can fail on bad input (checkpoint, dataset) comes before anything is written or compiled.
    ckpt = Checkpointer(os.path.join(workdir, CHECKPOINTS), keep=t.keep_checkpoints, writer=True)
    init_fn, tx = build.state_init(config)
    state, resumed = ckpt.resume(train_step.abstract_state(init_fn, mesh), fallback=t.fallback_checkpoint)
    start = resumed.get("step", 0)
    batches = data.train_batches(
        config,
        local_batch_size=t.batch_size // jax.process_count(),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        start_step=start,
    )
    if start:
        logging.info("Resumed from %s at step %d.", ckpt.directory, start)
    else:
        state = train_step.create_state(init_fn, mesh)
    os.makedirs(workdir, exist_ok=True)
    step_fn = compiled_step(config, tx, mesh)
    key = step_key(config)

    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    if start == 0:
        writer.write_hparams(_flat_hparams(config))
    sampler = ImageSampler(config)

    with metric_writers.ensure_flushes(writer):
        result = loop.run_steps(
            step_fn,
            state,
            batches,
            key,
            mesh=mesh,
            start=start,
            num_steps=t.num_steps,
            writer=writer,
            ckpt=ckpt,
            metadata=lambda step, scalars, seconds: metadata(config, step),
            log_every=t.log_every,
            checkpoint_every=t.checkpoint_every,
            every=(t.sample_every, lambda step, st: _write_grid(writer, sampler, st, config, workdir, step)),
            resumed=resumed,
            skip_limit=t.skip_nonfinite,
        )
        ckpt.wait()
        state = result.state
        _write_grid(writer, sampler, state, config, workdir, t.num_steps)
        s = config.sample
        x = sampler(
            state.ema_params,
            s.num_samples,
            method=s.method,
            num_steps=s.num_steps,
            seed=s.seed,
            clip_x=s.clip_x,
            batch_size=s.batch_size,
        )
        if jax.process_index() == 0:
            write_samples(workdir, "samples", x)
    ckpt.close()
    return state


def compiled_step(config: ml_collections.ConfigDict, tx, mesh) -> Callable:
    """The teacher's train step for ``config``, compiled over ``mesh``."""
    t = config.train
    step = train_step.make_train_step(
        build.loss_fn(config),
        tx,
        ema_decay=t.ema_decay,
        learning_rate=optim.learning_rate(config.optim, t.num_steps),
        importance=build.importance_sampler(config),
        accum_steps=t.grad_accum_steps,
        skip_nonfinite=t.skip_nonfinite > 0,
    )
    return train_step.compile_step(step, mesh)


def step_key(config: ml_collections.ConfigDict) -> jax.Array:
    """The key every step folds its step number into."""
    return jax.random.fold_in(jax.random.key(config.seed), 1)


def _write_grid(writer, sampler, state, config, workdir, step):
    s = config.sample
    x = sampler(state.ema_params, config.train.num_grid_samples, method=s.method, num_steps=s.num_steps, seed=s.seed)
    grid = images.grid(x)
    if jax.process_index() == 0:
        os.makedirs(os.path.join(workdir, "grids"), exist_ok=True)
        images.save_png(os.path.join(workdir, "grids", f"step_{step:08d}.png"), grid, scale=max(1, 64 // x.shape[1]))
    writer.write_images(step, {"samples": grid[None]})


def _flat_hparams(config: ml_collections.ConfigDict) -> dict:
    out = {}

    def walk(prefix, d):
        for k, v in d.items():
            if isinstance(v, dict):
                walk(f"{prefix}{k}.", v)
            else:
                out[prefix + k] = v if isinstance(v, (int, float, str, bool)) else str(v)

    walk("", config.to_dict())
    return out
