"""Builds what a config asks of a model (:class:`pdist.spec.ModelSpec`): the losses, a student's initial
parameters, the optimizer (a refined schedule's logged norms read here) and the initial train state.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax
import jax
import ml_collections
import numpy as np

from pdist import losses, optim, refine, rng
from pdist.distillation import DISTILLERS, Round
from pdist.errors import ConfigError
from pdist.importance import LossAwareSampler
from pdist.runtime.step import TrainState, init_state
from pdist.spec import ModelSpec

Array = jax.Array


def student_params(student: ModelSpec, teacher_params, key: Array):
    """A student network's (``student``) initial parameters: the teacher's, and fresh ones (from ``key``) for
    what the teacher's network lacks (a guided student's w layers, which start at zero: the student is the
    teacher). One sentence if a shared parameter's shape differs."""
    fresh = flax.traverse_util.flatten_dict(student.param_shapes())
    given = flax.traverse_util.flatten_dict(teacher_params)
    for path, value in given.items():
        if path not in fresh or fresh[path].shape != value.shape:
            raise ConfigError(
                f"The teacher's parameter {'/'.join(path)} has no counterpart of shape {value.shape} in the "
                "student's network; distill with the config the teacher was trained with."
            )
    if len(given) == len(fresh):
        return teacher_params
    new = flax.traverse_util.flatten_dict(jax.jit(student.init_params)(key))  # one program
    return flax.traverse_util.unflatten_dict({path: given.get(path, new[path]) for path in fresh})


def loss(config: ml_collections.ConfigDict, spec: ModelSpec) -> losses.Loss:
    """The teacher loss ``(params, batch, key) -> (loss, aux)`` of model ``spec`` with ``config``'s training
    settings (the weighting, the loss type, the VLB weight, label dropout)."""
    settings = config.diffusion
    return losses.make_diffusion_loss(
        spec.apply,
        spec.schedule,
        parameterization=spec.parameterization,
        weighting=settings.weighting,
        loss_type=settings.loss,
        learned_variance=spec.learned_variance,
        num_timesteps=settings.num_timesteps,
        vlb_weight=settings.vlb_weight,
        label_dropout=config.train.label_dropout,
        num_classes=spec.num_classes,
    )


def distillation_loss(student: ModelSpec, config: ml_collections.ConfigDict, rnd: Round) -> losses.Loss:
    """Round ``rnd``'s student loss ``(params, batch, key, teacher_params) -> (loss, aux)`` of
    ``config.distill.method`` on the ``student`` network (the method's student of ``config``'s model)."""
    return DISTILLERS[config.distill.method].loss(student, config, rnd)


def importance_sampler(config: ml_collections.ConfigDict) -> LossAwareSampler | None:
    settings = config.diffusion
    return LossAwareSampler(int(settings.num_timesteps)) if settings.importance_sampling else None


def refined_norms(settings: ml_collections.ConfigDict) -> tuple[np.ndarray, np.ndarray]:
    """The gradient norms ``settings.refine_from``'s run logged for ``settings.optimizer`` (steps, values);
    ConfigError (one sentence) when there are none, too few or unusable ones (:mod:`pdist.refine`)."""
    from pdist.runtime import events, files  # clu's writers import TensorFlow: not on pdist.load's path

    directory, tag = settings.refine_from, refine.NORM_TAGS[settings.optimizer]
    where = f"config.optim.refine_from={directory!r}"
    if not directory or not files.isdir(directory):
        raise ConfigError(
            f"{where} is not a folder: schedule='refined' needs the workdir of a previous run to refine from."
        )
    steps, norms = events.scalars(directory, tag)
    refine.check_norms(steps, norms, where, tag)
    return steps, norms


def refined_schedule(settings: ml_collections.ConfigDict, total_steps: int) -> np.ndarray:
    """A refined schedule's multipliers at counts 0..total_steps, from the logs of ``settings.refine_from``."""
    return refine.multipliers(*refined_norms(settings), settings.optimizer, total_steps)


def optimizer(settings: ml_collections.ConfigDict, total_steps: int) -> optim.Optimizer:
    """``config.optim``'s optimizer over ``total_steps`` updates; a refined schedule's table is read from its
    source run's logs when the numbers are first used (restoring a state reads none)."""
    table = None
    if settings.schedule == "refined":
        table = functools.partial(refined_schedule, ml_collections.ConfigDict(settings.to_dict()), total_steps)
    return optim.optimizer(settings, total_steps, table)


def state_init(config: ml_collections.ConfigDict, spec: ModelSpec) -> tuple[Callable[[], TrainState], optim.Optimizer]:
    """(``init_fn() -> TrainState``, optimizer) of a teacher run of model ``spec``; ``init_fn`` is pure, for
    ``jit``/``eval_shape``."""
    opt = optimizer(config.optim, config.train.num_steps)
    key = rng.init_key(config.seed)
    sampler = importance_sampler(config)

    target = spec.consistency is not None  # a consistency student's state keeps its target network

    def init_fn():
        return init_state(spec.init_params(key), opt.tx, sampler, target)

    # the state's shapes without tracing the network's init again (runtime.step.abstract_state; every restore)
    init_fn.shapes = lambda: jax.eval_shape(lambda p: init_state(p, opt.tx, sampler, target), spec.param_shapes())
    return init_fn, opt
