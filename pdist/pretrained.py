"""Trained networks: the one loader, ``pdist.load(path)``, and sampling images from parameters.

>>> model = pdist.load("runs/digits")          # a workdir, its checkpoints/ or one step's folder
>>> x = model.sample(64, method="ddim", num_steps=32, seed=0)   # [64, H, W, C] numpy in [-1, 1]
>>> x = model.sample(64, method="ddpm", num_steps=50, grid="respaced")  # the time grid (pdist.schedules.GRIDS)
>>> student = pdist.load("runs/digits_distill")  # a distillation's newest round
>>> x = student.sample(64)   # with its own number of DDIM steps (student.metadata["sampling_steps"])

:func:`restore` is the only path from a folder to a config and a train state:
``pdist.load``, distillation's teacher and evaluation all go through it. The
config stored in the checkpoint rebuilds the network; with no mesh given,
parameters land on the first local device whatever mesh wrote them (in a
multi-process run: replicated over every device, as the run's sampler needs
them).

:class:`ImageSampler` compiles one program per (method, steps, grid, clip, batch)
and takes the parameters as an argument, so the same compiled sampler serves
every checkpoint and every EMA snapshot during training.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import SingleDeviceSharding
from jax.tree_util import Partial

from pdist import build, editing, rng, samplers, schedules
from pdist import config as config_lib
from pdist import ot as ot_lib
from pdist.errors import ConfigError
from pdist.runtime import console, preemption, workdir
from pdist.runtime import mesh as mesh_lib
from pdist.runtime.checkpoint import Checkpointer
from pdist.runtime.step import TrainState


@dataclasses.dataclass
class Restored:
    config: ml_collections.ConfigDict  # as stored, with defaults for keys added since
    state: TrainState
    metadata: dict
    directory: str  # the checkpoints folder


def restore(
    path: str,
    step: int | None = None,
    *,
    mesh=None,
    check: Callable[[ml_collections.ConfigDict, str], None] | None = None,
) -> Restored:
    """The checkpoint at ``path`` (newest step unless ``step`` or a step folder is given).

    ``mesh``: restore replicated over it (default: the first local device, or
    every device in a multi-process run). ``check(config, where)`` may refuse
    the stored config, with one sentence, before any array is read.
    """
    directory, found = workdir.locate(path)
    step = found if step is None else step
    if mesh is None and jax.process_count() > 1:
        mesh = mesh_lib.data_mesh()
    sharding = SingleDeviceSharding(jax.local_devices()[0]) if mesh is None else mesh_lib.replicated(mesh)
    ckpt = Checkpointer(directory, asynchronous=False)
    try:
        metadata = ckpt.metadata(step)
        config = config_lib.from_stored(metadata["config"])
        if check is not None:
            check(config, workdir.step_folder(directory, metadata["step"]))
        init_fn, _ = build.state_init(config)
        abstract = jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), jax.eval_shape(init_fn)
        )
        state, metadata = ckpt.restore(abstract, metadata["step"])
    finally:
        ckpt.close()
    return Restored(config, state, metadata, directory)


def load(path: str, step: int | None = None) -> Pretrained:
    """Loads the checkpoint at ``path`` (newest step unless ``step`` or a step folder is given)."""
    restored = restore(path, step)
    state = restored.state
    return Pretrained(
        restored.config, state.params, state.ema_params, int(state.step), restored.metadata, restored.directory
    )


@dataclasses.dataclass
class Pretrained:
    config: ml_collections.ConfigDict
    params: Any
    ema_params: Any
    step: int
    metadata: dict
    directory: str

    def __post_init__(self):
        self._sampler = ImageSampler(self.config)

    @property
    def schedule(self):
        return self._sampler.schedule

    def grid(self, grid: str | None = None) -> str:
        """The time grid ``grid`` (default: the checkpoint's ``config.sample.grid``) names for this model:
        ``auto`` is ``respaced`` on a discrete schedule and ``uniform`` on a continuous one."""
        return schedules.resolve_grid(self.config.sample.grid if grid is None else grid, self.schedule)

    def denoiser(self, *, use_ema: bool = True, label=None, guidance=None) -> Partial:
        """``denoise_fn(z, t) -> Prediction`` for :func:`pdist.samplers.sample`, carrying the parameters (and
        the class ``label`` [B]; with ``guidance`` w, the classifier-free guided prediction).

        The parameters are arguments of the compiled sampler, not constants:
        the EMA and raw parameters (or any other checkpoint of this network)
        share one compilation per shape and method.
        """
        return build.denoiser(self.config, self.ema_params if use_ema else self.params, label, guidance)

    def sample(
        self,
        num_samples: int,
        *,
        method: str = "ddim",
        num_steps: int | None = None,
        grid: str | None = None,
        seed: int = 0,
        clip_x: bool = True,
        labels=None,
        guidance: float | None = None,
        use_ema: bool = True,
        batch_size: int = 256,
        progress: str | None = None,
        ot=None,
        **options,
    ) -> np.ndarray:
        """``num_samples`` images [n, H, W, C] in [-1, 1] from ``method`` with ``num_steps`` steps and the
        method's ``options`` (``variance="large"`` of ``ddpm``, for example; see :class:`ImageSampler`).
        ``labels``: the classes of a class-conditional model (default: 0, 1, 2, ... in turn); ``guidance``:
        the classifier-free guidance weight w (:mod:`pdist.guidance`; or one per sample), for a model trained
        with label dropout, each step then one network call on twice the batch; or for a guided-distillation
        student, its input w (one call on the batch; default 0) in the range it was distilled for.

        ``num_steps`` and ``grid`` default to the checkpoint's ``config.sample``: a
        distilled student's own step count and the uniform grid it was trained
        on; a teacher's ``auto`` grid (:meth:`grid`).
        """
        return self._sampler(
            self.ema_params if use_ema else self.params,
            num_samples,
            method=method,
            num_steps=self.config.sample.num_steps if num_steps is None else num_steps,
            grid=self.grid(grid),
            seed=seed,
            clip_x=clip_x,
            labels=labels,
            guidance=guidance,
            batch_size=batch_size,
            progress=progress,
            ot=ot,
            **options,
        )

    def check_expressway(self, ot) -> ot_lib.Expressway:
        """``ot`` (an Expressway or its file) if this model can sample from it, else one sentence."""
        return self._sampler.check_expressway(ot)

    def expressway(self, x, t: float, *, seed: int = 0, **solver) -> ot_lib.Expressway:
        """A DPM-OT expressway for this model (:mod:`pdist.ot`): targets ``alpha_t x + sigma_t eps`` of images
        ``x`` [N, H, W, C] at time ``t``, potentials from :func:`pdist.ot.solve` (``solver``: its settings).
        ``x``: data (the reference's choice), or the model's own samples (``self.sample(N)``: the marginal at t
        of its reverse process, no training image stored; bench/ot.py ``--targets``).
        ``Expressway.save(path)`` writes it; ``sample(..., ot=path)`` uses it."""
        try:
            ot_lib.check_time(t)
            if np.shape(x)[1:] != tuple(self._sampler.shape):
                raise ValueError(f"x has shape {np.shape(x)}; this model's images are {tuple(self._sampler.shape)}.")
        except ValueError as e:
            raise ConfigError(str(e)) from None
        k_targets, k_solve = jax.random.split(jax.random.key(seed))
        targets = ot_lib.targets_from(self.schedule, x, k_targets, t)
        solution = ot_lib.solve(targets, k_solve, **solver)
        if not solution.converged:
            logging.warning(
                "The OT solver stopped at %d steps with gradient norm %.2e and %d empty cells (not converged).",
                solution.steps, solution.grad_norm, solution.empty_cells,
            )  # fmt: skip
        return ot_lib.Expressway(
            targets, solution.potentials, float(t), tuple(self._sampler.shape), expressway_model(self.config)
        )

    def edit(
        self,
        x0,
        source_labels,
        target_labels,
        *,
        method: str = "ddcm",
        num_steps: int = 12,
        noise_fraction: float = 1.0,
        guidance: float = 1.0,
        source_guidance: float = 0.0,
        t_start: float = 1.0,
        attention_steps: int = 0,
        grid: str | None = None,
        seed: int = 0,
        clip_x: bool = False,
        use_ema: bool = True,
        batch_size: int = 256,
    ) -> np.ndarray:
        """``x0`` [n, H, W, C] in [-1, 1] of classes ``source_labels`` [n] edited into ``target_labels`` [n];
        returns the edits, [n, H, W, C] numpy in [-1, 1] (:mod:`pdist.editing`).

        ``method``: ``ddcm`` (InfEdit's inversion-free edit: ``num_steps`` calls on the doubled batch, 2N
        evaluations; ``noise_fraction`` the fresh fraction of each step's noise, ``attention_steps`` the
        first steps whose target branch attends with the source's queries and keys), ``sdedit`` (x0 noised
        to ``t_start``, then ``num_steps`` DDIM steps under the target class; ``t_start = 1`` samples the
        target from scratch) or ``inversion`` (``num_steps`` of DDIM inversion under the source class, then
        as many DDIM steps under the target: 2N evaluations). ``guidance``, ``source_guidance``: the
        classifier-free weights w of the target and source branches (InfEdit's scales 2 and 1 are w = 1
        and 0; a weight needs a model trained with label dropout, or a guided student's range).
        """
        x0, source_labels, target_labels, weights = self._check_edit(
            x0, source_labels, target_labels, method, num_steps, noise_fraction, guidance, source_guidance
        )
        params = self.ema_params if use_ema else self.params
        grid = self.grid(grid)
        try:  # a grid or start that does not fit this model: one sentence, before compiling
            schedules.time_grid(self.schedule, num_steps, grid, t_start)
        except ValueError as e:
            raise ConfigError(f"Editing with grid={grid!r}, {num_steps} steps and t_start={t_start}: {e}") from None
        out = []
        for start in range(0, len(x0), batch_size):
            rows = slice(start, start + batch_size)
            x, a, b = jnp.asarray(x0[rows]), jnp.asarray(source_labels[rows]), jnp.asarray(target_labels[rows])
            key = rng.sample_key(seed, start)
            ws, wt = (None if w is None else jnp.full(a.shape, w, jnp.float32) for w in weights)
            if method == "ddcm":
                w = None if ws is None else jnp.concatenate([ws, wt])
                pair = build.denoiser(self.config, params, jnp.concatenate([a, b]), w)
                y = editing.ddcm(
                    pair,
                    self.schedule,
                    x,
                    key,
                    num_steps=num_steps,
                    noise_fraction=noise_fraction,
                    t_start=t_start,
                    grid=grid,
                    clip_x=clip_x,
                    attention_steps=attention_steps,
                )
            elif method == "sdedit":
                target = build.denoiser(self.config, params, b, wt)
                y = editing.sdedit(
                    target, self.schedule, x, key, t_start=t_start, num_steps=num_steps, grid=grid, clip_x=clip_x
                )
            else:
                z = editing.invert(
                    build.denoiser(self.config, params, a, ws), self.schedule, x, num_steps=num_steps, grid=grid,
                    t_start=t_start,
                )  # fmt: skip
                target = build.denoiser(self.config, params, b, wt)
                y = samplers.sample(
                    target, self.schedule, z, method="ddim", num_steps=num_steps, grid=grid, clip_x=clip_x,
                    t_start=t_start,
                )  # fmt: skip
            out.append(np.clip(np.asarray(y), -1.0, 1.0))
            preemption.check("editing")
        return np.concatenate(out)

    def _check_edit(self, x0, source_labels, target_labels, method, num_steps, noise_fraction, w_target, w_source):
        """The edit's inputs as arrays and its guidance weights (None: unguided), or one sentence (ConfigError)."""
        config = self.config
        if not config.model.class_conditional:
            raise ConfigError(
                "Editing moves an image from one class to another and needs a class-conditional model; this one "
                "is unconditional (train one with config.model.class_conditional=True, configs/digits_cond.py)."
            )
        if method not in editing.METHODS:
            raise ConfigError(f"Unknown editing method {method!r}; choose one of {list(editing.METHODS)}.")
        x0 = np.asarray(x0, np.float32)
        shape = tuple(build.image_shape(config))
        if x0.ndim != len(shape) + 1 or x0.shape[1:] != shape:
            raise ConfigError(
                f"x0 has shape {x0.shape}; this model edits images of shape [n, {', '.join(map(str, shape))}]."
            )
        try:
            editing.check(x0, source_labels, target_labels, num_steps, noise_fraction)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        labels = [np.asarray(v) for v in (source_labels, target_labels)]
        classes = config.data.num_classes
        for name, v in zip(("source_labels", "target_labels"), labels, strict=True):
            if not np.issubdtype(v.dtype, np.integer) or v.min() < 0 or v.max() >= classes:
                raise ConfigError(
                    f"{name} must be class indices in [0, {classes}); got values from {v.min()} to {v.max()}."
                )
        if config.model.guidance_input:  # a guided student: w is its input, checked against its range
            build.check_guidance(config, [w_source, w_target])
            weights = (float(w_source), float(w_target))
        elif w_source or w_target:
            build.check_guidance(config, [w_source, w_target])
            weights = (float(w_source), float(w_target))
        else:
            weights = (None, None)
        return x0, labels[0].astype(np.int32), labels[1].astype(np.int32), weights


def requested_labels(config: ml_collections.ConfigDict, num_samples: int) -> np.ndarray | None:
    """The classes a class-conditional model samples when none are given: 0, 1, 2, ... in turn (None for an
    unconditional model)."""
    if not config.model.class_conditional:
        return None
    return np.arange(num_samples) % config.data.num_classes


def expressway_model(config: ml_collections.ConfigDict) -> str:
    """What an expressway's latents belong to: the dataset, the image shape and the noise schedule (any model
    trained on these shares them)."""
    d = config.data
    T = config.diffusion.num_timesteps
    return f"{d.name}:{d.image_size}x{d.image_size}x{d.channels}:{config.diffusion.schedule}" + (f":{T}" if T else "")


class ImageSampler:
    """``sampler(params, n, method=..., num_steps=..., seed=...) -> [n, H, W, C]`` numpy in [-1, 1].

    Each batch is split over every device of every process (the last batch
    zero-padded to a multiple of the device count) and gathered back, so every
    process returns all ``n`` images; in a multi-process run every process must
    make the same call. The noise is drawn from ``(seed, batch start)`` inside
    the program before the split (:func:`pdist.rng.sample_key`), so
    deterministic samplers give the same images on any number of devices and
    processes.
    """

    def __init__(self, config: ml_collections.ConfigDict, mesh=None):
        self.config = config
        self.schedule = build.schedule(config)
        self.shape = build.image_shape(config)
        self.learned_variance = bool(config.diffusion.learned_variance)
        self.mesh = mesh_lib.data_mesh() if mesh is None else mesh
        self._compiled = {}

    def _program(
        self, method: str, num_steps: int, grid: str, clip_x: bool, n: int, options: tuple, guided: bool, t_ot
    ):
        k = (method, num_steps, grid, clip_x, n, options, guided, t_ot)
        if k not in self._compiled:
            pad = -n % self.mesh.devices.size

            def run(params, seed_start, label, guidance, way):
                k_noise, k_sample = jax.random.split(rng.sample_key(seed_start[0], seed_start[1]))
                noise = jax.random.normal(k_noise, (n, *self.shape), jnp.float32)
                noise = jnp.pad(noise, [(0, pad)] + [(0, 0)] * len(self.shape))
                noise = jax.lax.with_sharding_constraint(noise, mesh_lib.batch_sharded(self.mesh))
                if t_ot is not None:  # DPM-OT: the noise's target on the expressway, sampled from t' on
                    targets, potentials = way
                    flat = noise.reshape(noise.shape[0], -1)
                    noise = targets[ot_lib.assign(flat, targets, potentials)].reshape(noise.shape)
                x = samplers.sample(
                    build.denoiser(self.config, params, label, guidance),
                    self.schedule,
                    noise,
                    method=method,
                    num_steps=num_steps,
                    key=k_sample,
                    grid=grid,
                    clip_x=clip_x,
                    t_start=1.0 if t_ot is None else t_ot,
                    **dict(options),
                )
                return x[:n]

            self._compiled[k] = jax.jit(run, out_shardings=mesh_lib.replicated(self.mesh))
        return self._compiled[k]

    def check_expressway(self, ot) -> ot_lib.Expressway:
        """``ot`` (an Expressway or its file) as an Expressway for this model, or one sentence."""
        try:
            way = ot if isinstance(ot, ot_lib.Expressway) else ot_lib.load(ot)
            ot_lib.check_time(way.t)
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(str(e)) from None
        mine = expressway_model(self.config)
        if way.model != mine or tuple(way.shape) != tuple(self.shape):
            raise ConfigError(
                f"The expressway was built for {way.model} (images {tuple(way.shape)}) and this model is {mine} "
                f"(images {tuple(self.shape)}); build one for this model (Pretrained.expressway, bench/ot.py)."
            )
        if self.config.model.class_conditional:
            raise ConfigError("The expressway's targets carry no class; sample a class-conditional model without ot.")
        return way

    def __call__(
        self,
        params,
        num_samples: int,
        *,
        method: str = "ddim",
        num_steps: int = 128,
        grid: str = "auto",
        seed: int = 0,
        clip_x: bool = True,
        labels=None,
        guidance=None,
        batch_size: int = 256,
        progress: str | None = None,
        ot=None,
        **options,
    ) -> np.ndarray:
        """``ot``: a DPM-OT expressway (:mod:`pdist.ot`; an ``Expressway`` or its file): the noise goes to its
        target at the expressway's time t', and ``num_steps`` steps run from there.
        ``guidance``: a weight w, or one per sample [n] (:mod:`pdist.guidance`; a guided student's input).
        ``grid``: :data:`pdist.schedules.GRIDS`. ``progress``: show a progress line (images, images/s, ETA)
        with this label (:class:`pdist.runtime.console.Progress`). ``options``: the method's
        (:data:`pdist.samplers.METHODS`), such as ``variance``
        of ``ddpm``, which is ``learned`` by default for a model that learned its variances."""
        if method == "ddpm" and self.learned_variance:
            options = {"variance": "learned", **options}
        samplers.nfe(method, num_steps, self.schedule, **options)  # unknown method or option: one sentence
        options = tuple(sorted(options.items()))
        try:  # a grid that does not fit this model: one sentence, before compiling
            grid = schedules.resolve_grid(grid, self.schedule)
            schedules.time_grid(self.schedule, num_steps, grid)
        except ValueError as e:
            raise ConfigError(f"Sampling with grid={grid!r} and {num_steps} steps: {e}") from None
        if self.config.model.guidance_input:  # a guided student: w is its input, 0 unless given
            build.check_guidance(self.config, 0.0 if guidance is None else guidance)
        elif guidance is not None:  # one sentence for a model that never saw the null class, or a negative w
            build.check_guidance(self.config, guidance)
        per_example = guidance is not None and np.ndim(guidance) > 0
        if per_example and np.shape(guidance) != (num_samples,):
            raise ConfigError(
                f"guidance has shape {np.shape(guidance)}; give one weight, or one per sample ({num_samples},)."
            )
        if guidance is not None and not per_example:
            guidance = mesh_lib.replicate(np.asarray(guidance, np.float32), self.mesh)
        if labels is None:
            labels = requested_labels(self.config, num_samples)
        way, t_ot = None, None
        if ot is not None:
            expressway = self.check_expressway(ot)
            grid_start = schedules.start_time(self.schedule, expressway.t)
            try:
                schedules.time_grid(self.schedule, num_steps, grid, grid_start)
            except ValueError as e:
                raise ConfigError(f"Sampling from the expressway at t'={expressway.t:g}: {e}") from None
            way = mesh_lib.put_replicated((expressway.targets, expressway.potentials), self.mesh)
            t_ot = expressway.t
        params = mesh_lib.put_replicated(params, self.mesh)
        out = []
        shown = console.Progress(progress, num_samples, unit="images")
        for start in range(0, num_samples, batch_size):
            n = min(batch_size, num_samples - start)
            label = (
                None
                if labels is None
                else mesh_lib.shard_rows(np.asarray(labels[start : start + n], np.int32), self.mesh)
            )
            seed_start = mesh_lib.replicate(np.asarray([seed, start], np.int32), self.mesh)
            w = guidance
            if per_example:
                w = mesh_lib.shard_rows(np.asarray(guidance[start : start + n], np.float32), self.mesh)
            program = self._program(method, num_steps, grid, clip_x, n, options, guidance is not None, t_ot)
            out.append(np.asarray(program(params, seed_start, label, w, way)))
            preemption.check("sampling")
            shown.update(start + n)
        shown.close()
        return np.concatenate(out)
