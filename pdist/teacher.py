"""The teacher run a config describes, as a phase of the one train step (:mod:`pdist.runtime.phase`).

The train job runs it (with its sample grids as the snapshot); benchmarks that need the teacher's exact run
(its data order, step keys and optimizer), with something of their own at every step, run it too.
"""

from __future__ import annotations

from collections.abc import Callable

import ml_collections

from pdist import build, data, rng
from pdist.runtime import phase
from pdist.spec import ModelSpec


def phase_of(
    config: ml_collections.ConfigDict,
    spec: ModelSpec,
    directory: str,
    snapshot: Callable | None = None,
    snapshot_every: int = 0,
) -> phase.Phase:
    """The teacher run of ``config`` (model ``spec``) in ``directory``: its loss, initial state, optimizer over
    ``config.train.num_steps``, data in the teacher's order and step keys; ``snapshot(step, state, writer)``
    every ``snapshot_every`` steps and at the last."""
    init_fn, optimizer = build.state_init(config, spec)
    return phase.Phase(
        name="teacher",
        directory=directory,
        config=config,
        loss=build.loss(config, spec),
        init_fn=init_fn,
        optimizer=optimizer,
        num_steps=config.train.num_steps,
        batches=lambda start: data.process_batches(config, start, rng.TEACHER),
        key=rng.phase_key(config.seed, rng.TEACHER),
        importance=build.importance_sampler(config),
        snapshot=snapshot,
        snapshot_every=snapshot_every,
        program=("teacher", config.to_json()),  # the whole config: equal configs, equal steps
    )
