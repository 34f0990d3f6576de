"""What a model is: its network and its diffusion, described once from a config (:meth:`ModelSpec.of`).

A :class:`ModelSpec` is a small frozen value: the architecture's Flax module
(with the outputs the parameterization needs), the noise schedule, the
parameterization, whether variances are learned, the image shape, the
classes, whether the null class of classifier-free guidance was trained, and,
for a guided student, the range of guidance weights it takes as input. A job
makes it once from its config and hands it to the losses (:mod:`pdist.build`),
the sampler (:mod:`pdist.sampling`), the distillation methods and the loader
(:mod:`pdist.pretrained`); a distillation method's student config gives the
student's spec (:func:`pdist.jobs.distill.run`). Equal configs give equal,
hashable specs, so a spec is a static argument of compiled programs.

The one place where the Flax network meets the pure math: losses see
``spec.apply(params, z, t, label, key, guidance) -> raw output`` and samplers
see ``spec.bind(params, label, guidance)``, a ``denoise_fn(z, t) ->
Prediction``; neither knows which architecture (:data:`pdist.models.
ARCHITECTURES`) runs.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.tree_util import Partial

from pdist import diffusion
from pdist import guidance as guidance_lib
from pdist.diffusion import Prediction
from pdist.errors import ConfigError
from pdist.models import ARCHITECTURES, checked_apply
from pdist.models.unet import TIMESTEP_INPUTS
from pdist.schedules import Schedule, boundary_time, get_schedule

Array = jax.Array


def has_null_class(config: ml_collections.ConfigDict) -> bool:
    """The config's model learns a null class (trained with its labels sometimes dropped): what classifier-free
    guidance, guided distillation and the consistency distillation of a guided ODE need. Read from the config
    alone, so that validation can ask before anything is built."""
    return bool(config.model.class_conditional and config.train.label_dropout > 0)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A network and its diffusion. ``spec(params, label, guidance, z, t)`` is its :class:`Prediction`.

    With a guidance weight (not None), the conditional and null-class predictions come from one network
    call on a doubled batch and are blended (:mod:`pdist.guidance`). A guided student (``guidance_range``
    set) takes the weight as an input instead: one call on the batch (None: w = 0).
    """

    network: nn.Module
    schedule: Schedule
    parameterization: str
    learned_variance: bool
    image_shape: tuple[int, int, int]  # (H, W, C)
    num_classes: int = 0  # 0: unconditional
    null_class: bool = False  # trained with labels dropped (classifier-free guidance can be applied)
    guidance_range: tuple[float, float] | None = None  # a guided student: w is its input, distilled for this range
    # What the network is given as its noise input: "logsnr", or a discrete schedule's time step ("timestep": level
    # i is step i - 1, OpenAI's; "rescaled_timestep": that times 1000 / T)
    network_input: str = "logsnr"
    # What a DPM-OT expressway's latents belong to (pdist.expressway): the dataset, the image shape and the
    # noise schedule; any model trained on these shares them.
    expressway_key: str = ""
    # A consistency student (pdist.distillation.consistency): (t_min, sigma_data), and x-hat is the consistency
    # function built on the network's (diffusion.consistency_output), the identity at t_min
    consistency: tuple[float, float] | None = None

    @classmethod
    def of(cls, config: ml_collections.ConfigDict) -> ModelSpec:
        """The model ``config`` describes (``config.model``, ``config.diffusion``, ``config.data``)."""
        d, m = config.diffusion, config.model
        kwargs = {} if d.num_timesteps is None else {"num_timesteps": int(d.num_timesteps)}
        out_channels = diffusion.output_channels(config.data.channels, d.parameterization, d.learned_variance)
        guided = bool(m.guidance_input)
        size, channels = int(config.data.image_size), int(config.data.channels)
        key = f"{config.data.name}:{size}x{size}x{channels}:{d.schedule}" + (
            f":{d.num_timesteps}" if d.num_timesteps else ""
        )
        schedule = get_schedule(d.schedule, **kwargs)
        consistency = None
        if d.consistency_sigma_min > 0:
            consistency = (boundary_time(schedule, float(d.consistency_sigma_min)), float(d.sigma_data))
        return cls(
            network=ARCHITECTURES[m.name].build(config, out_channels),
            schedule=schedule,
            parameterization=d.parameterization,
            learned_variance=bool(d.learned_variance),
            image_shape=(size, size, channels),
            num_classes=int(config.data.num_classes) if m.class_conditional else 0,
            null_class=has_null_class(config),
            guidance_range=(float(config.distill.guidance_min), float(config.distill.guidance_max)) if guided else None,
            expressway_key=key,
            network_input=m.logsnr_input if m.logsnr_input in TIMESTEP_INPUTS else "logsnr",
            consistency=consistency,
        )

    @property
    def guidance_input(self) -> bool:
        """A guided student: the guidance weight is the network's input."""
        return self.guidance_range is not None

    def init_params(self, key: Array):
        """The network's initial parameters (a plain nested dict)."""
        return _init(self.network, self.image_shape, bool(self.num_classes), self.guidance_input, key)

    def param_shapes(self):
        """The shapes and dtypes of :meth:`init_params`' parameters, traced once for each distinct model in a
        process (a network's init takes a tenth of a second or more to trace, and the preflight, the teacher
        check and a student's initialization each ask). Read it, do not change it."""
        return _param_shapes(self)

    def apply(
        self, params, z: Array, t: Array, label: Array | None, key: Array | None, guidance=None, **control
    ) -> Array:
        """The network's raw output at times ``t``; ``key`` None runs without dropout; ``guidance`` [B]: the
        weight w a guided student takes as input (ignored by other networks, as ``label`` is by an
        unconditional one); ``control``: the network's own keywords (``attention_from``). ``params`` are checked
        against :meth:`param_shapes` as a whole (:mod:`pdist.models.checked_apply`)."""
        rngs = None if key is None else {"dropout": key}
        label = label if self.num_classes else None
        w = guidance if self.guidance_input else None
        return checked_apply.apply(
            self.network, params, self.param_shapes(), z, self.noise_input(t), label, w, train=key is not None,
            rngs=rngs, **control,
        )  # fmt: skip

    def noise_input(self, t: Array) -> Array:
        """What the network is given for times ``t``: their logSNR, or the discrete time step (``network_input``)."""
        if self.network_input == "logsnr":
            return self.schedule.logsnr(t)
        T = self.schedule.num_timesteps
        step = self.schedule.level(t) - 1.0  # level i = T t is OpenAI's step i - 1
        return step * (1000.0 / T) if self.network_input == "rescaled_timestep" else step

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
        control = {} if attention_from is None else {"attention_from": attention_from}
        return self.predict(self.apply(params, z, t, label, None, w, **control), z, t)

    def predict(self, output: Array, z: Array, t: Array) -> Prediction:
        """The :class:`Prediction` of the network's raw ``output`` at ``(z, t)``: by the parameterization, and for
        a consistency student its consistency function (:func:`pdist.diffusion.consistency_output`)."""
        logsnr = self.schedule.logsnr(t)
        pred = diffusion.predict(
            output, z, logsnr, parameterization=self.parameterization, learned_variance=self.learned_variance
        )
        if self.consistency is None:
            return pred
        t_min, sigma_data = self.consistency
        logsnr_min = self.schedule.logsnr(jnp.float32(t_min))
        return diffusion.consistency_output(
            pred, z, t, logsnr, t_min=t_min, logsnr_min=logsnr_min, sigma_data=sigma_data
        )

    def bind(self, params, label: Array | None = None, guidance=None) -> Partial:
        """``denoise_fn(z, t) -> Prediction`` with ``params`` (and class ``label`` [B]); with a classifier-free
        ``guidance`` weight (a scalar or [B]), the guided prediction, or for a guided student its prediction
        at that weight (None: 0).

        A ``Partial`` pytree that carries ``params``, ``label`` and ``guidance``: passed to
        :func:`pdist.samplers.sample`, they are arguments of the compiled program, so one compilation serves
        every parameter set of the same shapes (and every weight).
        """
        if guidance is not None:
            self.check_guidance(None if isinstance(guidance, jax.core.Tracer) else guidance)
            guidance = jnp.asarray(guidance, jnp.float32)
        return Partial(self, params, label, guidance)

    def call_batch(self, guidance) -> int:
        """How many times the batch one network call evaluates: 2 for classifier-free guidance (the doubled
        batch), 1 unguided or for a guided student (w is its input)."""
        return 2 if guidance is not None and not self.guidance_input else 1

    def check_guidance(self, w=None) -> None:
        """One sentence unless this model can be sampled at guidance weight(s) ``w`` (None: any): a negative
        weight, an unconditional model, one trained without label dropout (its null class never learned), or
        a weight outside the range a guided student was distilled for."""
        weights = None if w is None else np.asarray(w, np.float64)
        if weights is not None and weights.size and weights.min() < 0:
            raise ConfigError(
                f"The guidance weight w={weights.min():g} is negative; use w >= 0 (w = 0 is the conditional model)."
            )
        if self.guidance_input:
            low, high = self.guidance_range
            if weights is not None and weights.size and (weights.min() < low or weights.max() > high):
                bad = weights.min() if weights.min() < low else weights.max()
                raise ConfigError(
                    f"This guided student was distilled for guidance weights in [{low:g}, {high:g}] and w={bad:g} "
                    "is outside; sample it at a weight in that range."
                )
            return
        if not self.num_classes:
            raise ConfigError("Guidance needs a class-conditional model; this one is unconditional (guidance=None).")
        if not self.null_class:
            raise ConfigError(
                "Guidance needs a model trained with its labels sometimes dropped (config.train.label_dropout > 0, "
                "0.1 is usual); this one never saw the null class."
            )

    def default_labels(self, num_samples: int) -> np.ndarray | None:
        """The classes a class-conditional model samples when none are given: 0, 1, 2, ... in turn (None for
        an unconditional model)."""
        return np.arange(num_samples) % self.num_classes if self.num_classes else None


# Network fields that change no parameter's shape: models that differ only in them share one traced init
# (a teacher trained with dropout and its students without, for example).
_SHAPELESS = {"dropout": 0.0, "remat": False}


def _param_shapes(spec: ModelSpec):
    network = spec.network.clone(**{k: v for k, v in _SHAPELESS.items() if hasattr(spec.network, k)})
    return _init_shapes(network, spec.image_shape, bool(spec.num_classes), spec.guidance_input)


@functools.lru_cache(maxsize=64)
def _init_shapes(network, image_shape: tuple, conditional: bool, guided: bool):
    return jax.eval_shape(functools.partial(_init, network, image_shape, conditional, guided), jax.random.key(0))


def _init(network, image_shape: tuple, conditional: bool, guided: bool, key: Array):
    x = jnp.zeros((1, *image_shape), jnp.float32)
    label = jnp.zeros((1,), jnp.int32) if conditional else None
    w = jnp.zeros((1,)) if guided else None
    return network.init({"params": key}, x, jnp.zeros((1,)), label, w)["params"]
