"""Trained networks: the one loader, ``pdist.load(path)``, and :class:`Pretrained`, a thin facade over it.

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

Sampling is :mod:`pdist.sampling`'s (:class:`pdist.sampling.ImageSampler`),
editing :mod:`pdist.editing`'s (its :data:`pdist.editing.EDITORS` table), and
DPM-OT :mod:`pdist.ot`'s; ``Pretrained`` hands them this checkpoint's network.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import SingleDeviceSharding
from jax.tree_util import Partial

from pdist import build, editing, rng, schedules
from pdist import config as config_lib
from pdist import expressway as expressway_lib
from pdist import ot as ot_lib
from pdist.errors import ConfigError
from pdist.runtime import console, layout, preemption
from pdist.runtime import mesh as mesh_lib
from pdist.runtime.checkpoint import Checkpointer
from pdist.runtime.step import TrainState, abstract_state
from pdist.sampling import ImageSampler, Sampling
from pdist.spec import ModelSpec


@dataclasses.dataclass
class Restored:
    config: ml_collections.ConfigDict  # as stored, with defaults for keys added since
    spec: ModelSpec  # the network and its diffusion, from that config
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
    directory, found = layout.locate(path)
    step = found if step is None else step
    if mesh is None and jax.process_count() > 1:
        mesh = mesh_lib.data_mesh()
    sharding = SingleDeviceSharding(jax.local_devices()[0]) if mesh is None else mesh_lib.replicated(mesh)
    ckpt = Checkpointer(directory, asynchronous=False)
    try:
        config, metadata = _read_stored(ckpt, step)
        if check is not None:
            check(config, layout.step_folder(directory, metadata["step"]))
        spec = ModelSpec.of(config)
        init_fn, _ = build.state_init(config, spec)
        state, metadata = ckpt.restore(abstract_state(init_fn, sharding), metadata["step"])
    finally:
        ckpt.close()
    return Restored(config, spec, state, metadata, directory)


def stored(path: str, step: int | None = None) -> tuple[ml_collections.ConfigDict, dict]:
    """The config and metadata stored with the checkpoint at ``path`` (found as :func:`restore` finds it), no
    array read: what a job needs to know about a model before it builds anything."""
    directory, found = layout.locate(path)
    ckpt = Checkpointer(directory, asynchronous=False)
    try:
        return _read_stored(ckpt, found if step is None else step)
    finally:
        ckpt.close()


def _read_stored(ckpt: Checkpointer, step: int | None) -> tuple[ml_collections.ConfigDict, dict]:
    metadata = ckpt.metadata(step)
    return config_lib.from_stored(metadata["config"]), metadata


def load(path: str, step: int | None = None) -> Pretrained:
    """Loads the checkpoint at ``path`` (newest step unless ``step`` or a step folder is given)."""
    restored = restore(path, step)
    state = restored.state
    return Pretrained(
        restored.config,
        state.params,
        state.ema_params,
        int(state.step),
        restored.metadata,
        restored.directory,
        restored.spec,
    )


@dataclasses.dataclass
class Pretrained:
    config: ml_collections.ConfigDict
    params: Any
    ema_params: Any
    step: int
    metadata: dict
    directory: str

    spec: ModelSpec | None = None  # the network and its diffusion (None: made from config)

    def __repr__(self) -> str:
        c = self.config
        count = sum(int(np.prod(np.shape(p))) for p in jax.tree.leaves(self.params))
        steps = self.metadata.get("sampling_steps")
        what = "model" if steps is None else f"student ({console.count(steps, 'step')})"
        conditional = f", {c.data.num_classes} classes" if c.model.class_conditional else ""
        return (
            f"<pdist {what}: {c.model.name} on {c.data.name} {c.data.image_size}x{c.data.image_size}x"
            f"{c.data.channels}{conditional}, {c.diffusion.parameterization}-parameterization, {count:,} "
            f"parameters, step {self.step}, {self.directory}>"
        )

    def __post_init__(self):
        if self.spec is None:
            self.spec = ModelSpec.of(self.config)
        self._sampler = ImageSampler(self.spec)

    @property
    def schedule(self):
        return self.spec.schedule

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
        return self.spec.bind(self.ema_params if use_ema else self.params, label, guidance)

    @property
    def sampling(self) -> Sampling:
        """How :meth:`sample` samples by default: DDIM with the checkpoint's ``config.sample`` step count and
        grid (a distilled student's own steps and the uniform grid it was trained on; a teacher's ``auto``)."""
        return Sampling(num_steps=self.config.sample.num_steps, grid=self.config.sample.grid)

    def sample(
        self,
        num_samples: int,
        sampling: Sampling | None = None,
        *,
        use_ema: bool = True,
        labels=None,
        progress: str | None = None,
        **changes,
    ) -> np.ndarray:
        """``num_samples`` images [n, H, W, C] in [-1, 1] as ``sampling`` says (default :attr:`sampling`), with
        ``changes`` to it by field name (``method=``, ``num_steps=``, ``grid=``, ``seed=``, ``clip_x=``,
        ``guidance=``, ``batch_size=``, ``ot=``; :class:`pdist.sampling.Sampling`) and the rest the method's
        options (``variance="large"`` of ``ddpm``, for example). ``labels``: the classes of a
        class-conditional model (default: 0, 1, 2, ... in turn); ``guidance``: the classifier-free guidance
        weight w (:mod:`pdist.guidance`; or one per sample), for a model trained with label dropout, each
        step then one network call on twice the batch; or for a guided-distillation student, its input w
        (one call on the batch; default 0) in the range it was distilled for.
        """
        fields = {f.name for f in dataclasses.fields(Sampling)}
        given = {k: v for k, v in changes.items() if k in fields and not (k in ("num_steps", "grid") and v is None)}
        options = {k: v for k, v in changes.items() if k not in fields}
        sampling = (self.sampling if sampling is None else sampling).replace(**given)
        params = self.ema_params if use_ema else self.params
        return self._sampler(params, num_samples, sampling, labels=labels, progress=progress, **options)

    def check_expressway(self, ot) -> expressway_lib.Expressway:
        """``ot`` (an Expressway or its file) if this model can sample from it, else one sentence."""
        return self._sampler.check_expressway(ot)

    def expressway(self, x, t: float, *, seed: int = 0, **solver) -> expressway_lib.Expressway:
        """A DPM-OT expressway for this model (:mod:`pdist.ot`): targets ``alpha_t x + sigma_t eps`` of images
        ``x`` [N, H, W, C] at time ``t``, potentials from :func:`pdist.ot.solve` (``solver``: its settings).
        ``x``: data (the reference's choice), or the model's own samples (``self.sample(N)``: the marginal at t
        of its reverse process, no training image stored; bench/ot.py ``--targets``).
        ``Expressway.save(path)`` writes it; ``sample(..., ot=path)`` uses it."""
        try:
            ot_lib.check_time(t)
            if np.shape(x)[1:] != self.spec.image_shape:
                raise ValueError(f"x has shape {np.shape(x)}; this model's images are {self.spec.image_shape}.")
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
        spec = self.spec
        return expressway_lib.Expressway(targets, solution.potentials, float(t), spec.image_shape, spec.expressway_key)

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
        settings = editing.EditSettings(num_steps, noise_fraction, t_start, grid, clip_x, attention_steps)
        edit_fn = editing.EDITORS[method]
        out = []
        for start in range(0, len(x0), batch_size):
            rows = slice(start, start + batch_size)
            x = jnp.asarray(x0[rows])
            branches = [
                (jnp.asarray(labels[rows]), None if w is None else jnp.full((len(x),), w, jnp.float32))
                for labels, w in zip((source_labels, target_labels), weights, strict=True)
            ]
            denoiser = functools.partial(self.spec.bind, params)
            y = edit_fn(denoiser, self.schedule, x, *branches, rng.sample_key(seed, start), settings)
            out.append(np.clip(np.asarray(y), -1.0, 1.0))
            preemption.raise_if_stopped("editing")
        return np.concatenate(out)

    def _check_edit(self, x0, source_labels, target_labels, method, num_steps, noise_fraction, w_target, w_source):
        """The edit's inputs as arrays and its guidance weights (None: unguided), or one sentence (ConfigError)."""
        spec = self.spec
        if not spec.num_classes:
            raise ConfigError(
                "Editing moves an image from one class to another and needs a class-conditional model; this one "
                "is unconditional (train one with config.model.class_conditional=True, configs/digits_cond.py)."
            )
        if method not in editing.EDITORS:
            raise ConfigError(f"Unknown editing method {method!r}; choose one of {list(editing.EDITORS)}.")
        x0 = np.asarray(x0, np.float32)
        shape = spec.image_shape
        if x0.ndim != len(shape) + 1 or x0.shape[1:] != shape:
            raise ConfigError(
                f"x0 has shape {x0.shape}; this model edits images of shape [n, {', '.join(map(str, shape))}]."
            )
        try:
            editing.check_inputs(x0, source_labels, target_labels, num_steps, noise_fraction)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        labels = [np.asarray(v) for v in (source_labels, target_labels)]
        classes = spec.num_classes
        for name, v in zip(("source_labels", "target_labels"), labels, strict=True):
            if not np.issubdtype(v.dtype, np.integer) or v.min() < 0 or v.max() >= classes:
                raise ConfigError(
                    f"{name} must be class indices in [0, {classes}); got values from {v.min()} to {v.max()}."
                )
        if spec.guidance_input or w_source or w_target:  # a guided student's w is its input, checked too
            spec.check_guidance([w_source, w_target])
            weights = (float(w_source), float(w_target))
        else:
            weights = (None, None)
        return x0, labels[0].astype(np.int32), labels[1].astype(np.int32), weights
