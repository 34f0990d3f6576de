"""Images from a network's parameters: how to sample (:class:`Sampling`) and the sampler every job uses.

:class:`Sampling` is the one description of a sampling run (method, steps,
time grid, clipping, guidance, batch, seed, DPM-OT expressway), made from
``config.sample`` once (:meth:`Sampling.from_config`) and adjusted per use
(:meth:`Sampling.replace`). :class:`ImageSampler` turns parameters and a
``Sampling`` into images; it compiles one program per (method, steps, grid,
clip, batch, options, guided, expressway time) and takes the parameters as an
argument, so the same compiled sampler serves every checkpoint and every EMA
snapshot during training. The jobs, :class:`pdist.pretrained.Pretrained` and
the benchmarks all sample through it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pdist import expressway as expressway_lib
from pdist import ot as ot_lib
from pdist import rng, samplers, schedules
from pdist.errors import ConfigError
from pdist.runtime import console, preemption
from pdist.runtime import mesh as mesh_lib
from pdist.spec import ModelSpec


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How to sample: ``method`` (:data:`pdist.samplers.SAMPLERS`) with ``num_steps`` steps on time ``grid``
    (:data:`pdist.schedules.GRIDS`; ``auto``: the model's), x-hat clipped to [-1, 1] when ``clip_x``, the
    classifier-free ``guidance`` weight w (None: unguided; or one weight per sample), ``batch_size`` images
    per compiled call, noise from ``seed``, and ``ot``: a DPM-OT expressway (its file or an
    :class:`pdist.expressway.Expressway`) to start from (None: from t = 1)."""

    method: str = "ddim"
    num_steps: int = 128
    grid: str = "auto"
    clip_x: bool = True
    guidance: Any = None
    batch_size: int = 256
    seed: int = 0
    ot: Any = None
    clip_keeps_eps: bool = False  # clipping keeps the network's eps-hat (diffusers' schedulers' clip_sample)

    @classmethod
    def from_config(cls, settings: ml_collections.ConfigDict) -> Sampling:
        """``config.sample`` as a Sampling."""
        return cls(
            method=settings.method,
            num_steps=settings.num_steps,
            grid=settings.grid,
            clip_x=settings.clip_x,
            guidance=settings.guidance,
            batch_size=settings.batch_size,
            seed=settings.seed,
            ot=settings.get("ot"),
            clip_keeps_eps=bool(settings.get("clip_keeps_eps", False)),
        )

    def replace(self, **changes) -> Sampling:
        return dataclasses.replace(self, **changes)

    @property
    def label(self) -> str:
        """``method:steps``, as progress lines show it."""
        return f"{self.method}:{self.num_steps}"


class ImageSampler:
    """``sampler(params, n, Sampling(...)) -> [n, H, W, C]`` numpy in [-1, 1].

    Each batch is split over every device of every process (the last batch
    zero-padded to a multiple of the device count) and gathered back, so every
    process returns all ``n`` images; in a multi-process run every process must
    make the same call. The noise is drawn from ``(seed, batch start)`` inside
    the program before the split (:func:`pdist.rng.sample_key`), so
    deterministic samplers give the same images on any number of devices and
    processes.
    """

    def __init__(self, spec: ModelSpec, mesh=None):
        self.spec = spec
        self.schedule = spec.schedule
        self.shape = spec.image_shape
        self.mesh = mesh_lib.data_mesh() if mesh is None else mesh
        self._compiled = {}

    def check_expressway(self, ot) -> expressway_lib.Expressway:
        """``ot`` (an Expressway or its file) as an Expressway for this model, or one sentence."""
        try:
            way = ot if isinstance(ot, expressway_lib.Expressway) else expressway_lib.load(ot)
            ot_lib.check_time(way.t)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(str(e)) from None
        mine = self.spec.expressway_key
        if way.model != mine or tuple(way.shape) != tuple(self.shape):
            raise ConfigError(
                f"The expressway was built for {way.model} (images {tuple(way.shape)}) and this model is {mine} "
                f"(images {tuple(self.shape)}); build one for this model (Pretrained.expressway, bench/ot.py)."
            )
        if self.spec.num_classes:
            raise ConfigError("The expressway's targets carry no class; sample a class-conditional model without ot.")
        return way

    def __call__(
        self,
        params,
        num_samples: int,
        sampling: Sampling | None = None,
        *,
        labels=None,
        progress: str | None = None,
        **options,
    ) -> np.ndarray:
        """``num_samples`` images as ``sampling`` says (default: :class:`Sampling`'s defaults).

        ``labels``: the classes of a class-conditional model (default :meth:`pdist.spec.ModelSpec.default_labels`).
        ``progress``: show a progress line (images, images/s, ETA) with this label
        (:class:`pdist.runtime.console.Progress`). ``options``: the method's (:data:`pdist.samplers.SAMPLERS`),
        such as ``variance`` of ``ddpm``, which is ``learned`` by default for a model that learned its
        variances. A guided student (``spec.guidance_input``) takes w as its input, 0 unless given.
        """
        s = Sampling() if sampling is None else sampling
        if s.method == "ddpm" and self.spec.learned_variance:
            options = {"variance": "learned", **options}
        samplers.nfe(s.method, s.num_steps, self.schedule, **options)  # unknown method or option: one sentence
        options = tuple(sorted(options.items()))
        try:  # a grid that does not fit this model: one sentence, before compiling
            grid = schedules.resolve_grid(s.grid, self.schedule)
            schedules.time_grid(self.schedule, s.num_steps, grid)
        except ValueError as e:
            raise ConfigError(f"Sampling with grid={s.grid!r} and {s.num_steps} steps: {e}") from None
        guidance = s.guidance
        if self.spec.guidance_input:
            self.spec.check_guidance(0.0 if guidance is None else guidance)
        elif guidance is not None:  # one sentence for a model that never saw the null class, or a negative w
            self.spec.check_guidance(guidance)
        per_example = guidance is not None and np.ndim(guidance) > 0
        if per_example and np.shape(guidance) != (num_samples,):
            raise ConfigError(
                f"guidance has shape {np.shape(guidance)}; give one weight, or one per sample ({num_samples},)."
            )
        if guidance is not None and not per_example:
            guidance = mesh_lib.replicate(np.asarray(guidance, np.float32), self.mesh)
        if labels is None:
            labels = self.spec.default_labels(num_samples)
        elif not self.spec.num_classes:
            raise ConfigError("labels were given but this model is unconditional; sample it without labels.")
        elif np.shape(labels) != (num_samples,):
            raise ConfigError(f"labels has shape {np.shape(labels)}; give one class per sample ({num_samples},).")
        elif not np.all((np.asarray(labels) >= 0) & (np.asarray(labels) < self.spec.num_classes)):
            raise ConfigError(f"labels must be classes in [0, {self.spec.num_classes - 1}]; got {np.asarray(labels)}.")
        way, t_ot = None, None
        if s.ot is not None:
            expressway = self.check_expressway(s.ot)
            grid_start = schedules.start_time(self.schedule, expressway.t)
            try:
                schedules.time_grid(self.schedule, s.num_steps, grid, grid_start)
            except ValueError as e:
                raise ConfigError(f"Sampling from the expressway at t'={expressway.t:g}: {e}") from None
            way = mesh_lib.put_replicated((expressway.targets, expressway.potentials), self.mesh)
            t_ot = expressway.t
        params = mesh_lib.put_replicated(params, self.mesh)
        out = []
        shown = console.Progress(progress, num_samples, unit="images")
        for start in range(0, num_samples, s.batch_size):
            n = min(s.batch_size, num_samples - start)
            label = (
                None
                if labels is None
                else mesh_lib.shard_rows(np.asarray(labels[start : start + n], np.int32), self.mesh)
            )
            seed_start = mesh_lib.replicate(np.asarray([s.seed, start], np.int32), self.mesh)
            w = guidance
            if per_example:
                w = mesh_lib.shard_rows(np.asarray(s.guidance[start : start + n], np.float32), self.mesh)
            clip = (s.clip_x, s.clip_x and s.clip_keeps_eps)
            program = self._program(s.method, s.num_steps, grid, clip, n, options, guidance is not None, t_ot)
            out.append(np.asarray(program(params, seed_start, label, w, way)))
            preemption.raise_if_stopped("sampling")
            shown.update(start + n)
        shown.close()
        return np.concatenate(out)

    def _program(self, method: str, num_steps: int, grid: str, clip: tuple, n: int, options: tuple, guided: bool, t_ot):
        k = (method, num_steps, grid, clip, n, options, guided, t_ot)  # clip: (clip_x, clip_keeps_eps)
        if k not in self._compiled:  # another sampler of this model on this mesh may have compiled it
            self._compiled[k] = _PROGRAMS.get((self.spec, self.mesh, k))
        if self._compiled[k] is None:
            pad = -n % self.mesh.devices.size

            def run(params, seed_start, label, guidance, way):
                k_noise, k_sample = jax.random.split(rng.sample_key(seed_start[0], seed_start[1]))
                noise = jax.random.normal(k_noise, (n, *self.shape), jnp.float32)
                noise = jnp.pad(noise, [(0, pad)] + [(0, 0)] * len(self.shape))
                noise = jax.lax.with_sharding_constraint(noise, mesh_lib.batch_sharded(self.mesh))
                if t_ot is not None:  # DPM-OT: the noise's target on the expressway, sampled from t' on
                    noise = ot_lib.on_expressway(noise, *way)
                x = samplers.sample(
                    self.spec.bind(params, label, guidance),
                    self.schedule,
                    noise,
                    method=method,
                    num_steps=num_steps,
                    key=k_sample,
                    grid=grid,
                    clip_x=clip[0],
                    clip_keeps_eps=clip[1],
                    t_start=1.0 if t_ot is None else t_ot,
                    **dict(options),
                )
                return x[:n]

            self._compiled[k] = jax.jit(run, out_shardings=mesh_lib.replicated(self.mesh))
            while len(_PROGRAMS) >= _MAX_PROGRAMS:
                _PROGRAMS.pop(next(iter(_PROGRAMS)))
            _PROGRAMS[(self.spec, self.mesh, k)] = self._compiled[k]
        return self._compiled[k]


# Sampling programs by (model, mesh, settings), shared by every ImageSampler in this process: a job, a
# resumed run and the loader sampling the same model trace and lower each program once.
_PROGRAMS: dict = {}
_MAX_PROGRAMS = 64
