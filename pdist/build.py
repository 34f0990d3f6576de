"""Builds what a config names: the schedule, the network, the functions the
losses and samplers see (``apply_fn`` and ``denoise_fn``), the losses, and the
initial train state.

The one place where the Flax network meets the pure math modules: losses see
``apply_fn(params, z, t, label, key) -> raw output`` and samplers see
``denoise_fn(z, t) -> Prediction``; neither knows which architecture
(:data:`pdist.models.ARCHITECTURES`) runs.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.tree_util import Partial

from pdist import diffusion, losses, optim, refine, rng
from pdist import guidance as guidance_lib
from pdist.diffusion import Prediction
from pdist.distillation import METHODS, Round
from pdist.errors import ConfigError
from pdist.importance import LossAwareSampler
from pdist.models import ARCHITECTURES
from pdist.runtime.step import TrainState, init_state
from pdist.schedules import Schedule, get_schedule

Array = jax.Array


def schedule(config: ml_collections.ConfigDict) -> Schedule:
    settings = config.diffusion
    kwargs = {} if settings.num_timesteps is None else {"num_timesteps": int(settings.num_timesteps)}
    return get_schedule(settings.schedule, **kwargs)


def network(config: ml_collections.ConfigDict) -> nn.Module:
    """The ``config.model.name`` architecture, with the outputs the parameterization needs."""
    settings = config.diffusion
    out_channels = diffusion.output_channels(config.data.channels, settings.parameterization, settings.learned_variance)
    return ARCHITECTURES[config.model.name].build(config, out_channels)


def image_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
    return (config.data.image_size, config.data.image_size, config.data.channels)


def init_params(config: ml_collections.ConfigDict, key: Array):
    """The network's initial parameters (a plain nested dict)."""
    x = jnp.zeros((1, *image_shape(config)), jnp.float32)
    label = jnp.zeros((1,), jnp.int32) if config.model.class_conditional else None
    w = jnp.zeros((1,)) if config.model.guidance_input else None
    return network(config).init({"params": key}, x, jnp.zeros((1,)), label, w)["params"]


def student_params(config: ml_collections.ConfigDict, teacher_params, key: Array):
    """A student network's (``config``) initial parameters: the teacher's, and fresh ones (from ``key``) for
    what the teacher's network lacks (a guided student's w layers, which start at zero: the student is the
    teacher). One sentence if a shared parameter's shape differs."""
    fresh = flax.traverse_util.flatten_dict(jax.eval_shape(functools.partial(init_params, config), key))
    given = flax.traverse_util.flatten_dict(teacher_params)
    for path, value in given.items():
        if path not in fresh or fresh[path].shape != value.shape:
            raise ConfigError(
                f"The teacher's parameter {'/'.join(path)} has no counterpart of shape {value.shape} in the "
                "student's network; distill with the config the teacher was trained with."
            )
    if len(given) == len(fresh):
        return teacher_params
    new = flax.traverse_util.flatten_dict(jax.jit(functools.partial(init_params, config))(key))  # one program
    return flax.traverse_util.unflatten_dict({path: given.get(path, new[path]) for path in fresh})


def apply_fn(config: ml_collections.ConfigDict) -> Callable:
    """``apply_fn(params, z, t, label, key, guidance=None)``; ``key`` None runs without dropout; ``guidance``
    [B]: the weight w a guided student (``config.model.guidance_input``) takes as input."""
    net, sched = network(config), schedule(config)
    conditional, guided = config.model.class_conditional, config.model.guidance_input

    def apply(params, z, t, label, key, guidance=None):
        rngs = None if key is None else {"dropout": key}
        label = label if conditional else None
        w = guidance if guided else None
        return net.apply({"params": params}, z, sched.logsnr(t), label, w, train=key is not None, rngs=rngs)

    return apply


@dataclasses.dataclass(frozen=True)
class NetworkDenoiser:
    """``(params, label, guidance, z, t) -> Prediction`` of a network: hashable, equal for equal configs.

    The static half of :func:`denoiser`; parameters, labels and the guidance weight are its arguments.
    With a guidance weight (not None), the conditional and null-class predictions come from one network
    call on a doubled batch and are blended (:mod:`pdist.guidance`). A guided student
    (``guidance_input``) takes the weight as an input instead: one call on the batch (None: w = 0).
    """

    network: nn.Module
    schedule: Schedule
    parameterization: str
    learned_variance: bool
    num_classes: int  # 0: unconditional
    guidance_input: bool = False

    def __call__(
        self, params, label: Array | None, guidance: Array | None, z: Array, t: Array, attention_from=None
    ) -> Prediction:
        """``attention_from`` [B]: the rows whose attention queries and keys each row uses (:mod:`pdist.editing`);
        with guidance's doubled batch each half keeps to its own half."""
        if self.guidance_input:
            w = jnp.broadcast_to(jnp.asarray(0.0 if guidance is None else guidance, jnp.float32), z.shape[:1])
            return self._predict(params, label, z, t, w, attention_from)
        if guidance is None:
            return self._predict(params, label, z, t, None, attention_from)
        if attention_from is not None:
            attention_from = jnp.concatenate([attention_from, attention_from + z.shape[0]])
        predict = lambda z_, t_, label_: self._predict(params, label_, z_, t_, None, attention_from)  # noqa: E731
        return guidance_lib.guided(predict, z, t, label, guidance, self.num_classes)

    def _predict(self, params, label, z, t, w=None, attention_from=None) -> Prediction:
        logsnr = self.schedule.logsnr(t)
        label = label if self.num_classes else None
        control = {} if attention_from is None else {"attention_from": attention_from}
        out = self.network.apply({"params": params}, z, logsnr, label, w, train=False, **control)
        return diffusion.predict(
            out, z, logsnr, parameterization=self.parameterization, learned_variance=self.learned_variance
        )


def denoiser(config: ml_collections.ConfigDict, params, label: Array | None = None, guidance=None) -> Partial:
    """``denoise_fn(z, t) -> Prediction`` of the network with ``params`` (and class ``label`` [B]); with a
    classifier-free ``guidance`` weight (a scalar or [B]), the guided prediction (:mod:`pdist.guidance`), or
    for a guided student (``config.model.guidance_input``) its prediction at that weight (None: 0).

    A ``Partial`` pytree that carries ``params``, ``label`` and ``guidance``: passed to
    :func:`pdist.samplers.sample`, they are arguments of the compiled program,
    so one compilation serves every parameter set of the same shapes (and every weight).
    """
    if guidance is not None:
        check_guidance(config, None if isinstance(guidance, jax.core.Tracer) else guidance)
        guidance = jnp.asarray(guidance, jnp.float32)
    settings = config.diffusion
    fn = NetworkDenoiser(
        network(config),
        schedule(config),
        settings.parameterization,
        settings.learned_variance,
        config.data.num_classes if config.model.class_conditional else 0,
        bool(config.model.guidance_input),
    )
    return Partial(fn, params, label, guidance)


def call_batch(config: ml_collections.ConfigDict, guidance) -> int:
    """How many times the batch one network call of :class:`NetworkDenoiser` evaluates: 2 for classifier-free
    guidance (the doubled batch), 1 unguided or for a guided student (w is its input)."""
    return 2 if guidance is not None and not config.model.guidance_input else 1


def check_guidance(config: ml_collections.ConfigDict, w=None) -> None:
    """One sentence unless the model ``config`` describes can be sampled at guidance weight(s) ``w`` (None:
    any): a negative weight, an unconditional model, one trained without label dropout (its null class
    never learned), or a weight outside the range a guided student was distilled for."""
    weights = None if w is None else np.asarray(w, np.float64)
    if weights is not None and weights.size and weights.min() < 0:
        raise ConfigError(
            f"The guidance weight w={weights.min():g} is negative; use w >= 0 (w = 0 is the conditional model)."
        )
    if config.model.guidance_input:
        low, high = config.distill.guidance_min, config.distill.guidance_max
        if weights is not None and weights.size and (weights.min() < low or weights.max() > high):
            bad = weights.min() if weights.min() < low else weights.max()
            raise ConfigError(
                f"This guided student was distilled for guidance weights in [{low:g}, {high:g}] and w={bad:g} is "
                "outside; sample it at a weight in that range."
            )
        return
    if not config.model.class_conditional:
        raise ConfigError("Guidance needs a class-conditional model; this one is unconditional (guidance=None).")
    if not config.train.label_dropout > 0:
        raise ConfigError(
            "Guidance needs a model trained with its labels sometimes dropped (config.train.label_dropout > 0, "
            "0.1 is usual); this one never saw the null class."
        )


def loss(config: ml_collections.ConfigDict) -> losses.Loss:
    """The teacher loss ``(params, batch, key) -> (loss, aux)`` the config asks for."""
    settings = config.diffusion
    return losses.make_diffusion_loss(
        apply_fn(config),
        schedule(config),
        parameterization=settings.parameterization,
        weighting=settings.weighting,
        loss_type=settings.loss,
        learned_variance=settings.learned_variance,
        num_timesteps=settings.num_timesteps,
        vlb_weight=settings.vlb_weight,
        label_dropout=config.train.label_dropout,
        num_classes=config.data.num_classes if config.model.class_conditional else 0,
    )


def distillation_loss(config: ml_collections.ConfigDict, rnd: Round) -> losses.Loss:
    """Round ``rnd``'s student loss ``(params, batch, key, teacher_params) -> (loss, aux)`` of
    ``config.distill.method``, on the method's student network."""
    method = METHODS[config.distill.method]
    return method.loss(apply_fn(method.student(config)), schedule(config), config, rnd)


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


def state_init(config: ml_collections.ConfigDict) -> tuple[Callable[[], TrainState], optim.Optimizer]:
    """(``init_fn() -> TrainState``, optimizer) of a teacher run; ``init_fn`` is pure, for ``jit``/``eval_shape``."""
    opt = optimizer(config.optim, config.train.num_steps)
    key = rng.init_key(config.seed)
    sampler = importance_sampler(config)

    def init_fn():
        return init_state(init_params(config, key), opt.tx, sampler)

    return init_fn, opt
