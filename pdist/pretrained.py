"""``pdist.load(path)``: a checkpoint as an object that samples, with no training code.

>>> model = pdist.load("runs/digits")          # a workdir, its checkpoints/ or one step's folder
>>> x = model.sample(64, method="ddim", num_steps=32, seed=0)   # [64, H, W, C] numpy in [-1, 1]
>>> student = pdist.load("runs/digits_distill")  # a distillation's newest round
>>> x = student.sample(64)   # with its own number of DDIM steps (student.metadata["sampling_steps"])

The config stored in the checkpoint rebuilds the network; parameters land on
the first local device whatever mesh wrote them (in a multi-process run:
replicated over every device, as the run's sampler needs them).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import SingleDeviceSharding

from pdist import build, parallel
from pdist import config as config_lib
from pdist.checkpoint import Checkpointer, locate
from pdist.sample import ImageSampler


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

    def denoiser(self, *, use_ema: bool = True, label=None):
        """``denoise_fn(z, t) -> Prediction`` for :func:`pdist.samplers.sample`."""
        return build.denoiser(self.config, self.ema_params if use_ema else self.params, label)

    def sample(
        self,
        num_samples: int,
        *,
        method: str = "ddim",
        num_steps: int | None = None,
        seed: int = 0,
        clip_x: bool = True,
        labels=None,
        use_ema: bool = True,
        batch_size: int = 256,
        log_every_seconds: float | None = None,
    ) -> np.ndarray:
        """``num_samples`` images [n, H, W, C] in [-1, 1] from ``method`` with ``num_steps`` steps.

        ``num_steps`` defaults to the checkpoint's ``config.sample.num_steps``: a
        distilled student's own step count.
        """
        num_steps = self.config.sample.num_steps if num_steps is None else num_steps
        params = self.ema_params if use_ema else self.params
        return self._sampler(
            params,
            num_samples,
            method=method,
            num_steps=num_steps,
            seed=seed,
            clip_x=clip_x,
            labels=labels,
            batch_size=batch_size,
            log_every_seconds=log_every_seconds,
        )


def load(path: str, step: int | None = None) -> Pretrained:
    """Loads the checkpoint at ``path`` (newest step unless ``step`` or a step folder is given)."""
    directory, found_step = locate(path)
    step = found_step if step is None else step
    ckpt = Checkpointer(directory, asynchronous=False)
    try:
        metadata = ckpt.metadata(step)
        config = config_lib.from_stored(metadata["config"])
        init_fn, _ = build.state_init(config)
        if jax.process_count() > 1:
            sharding = parallel.replicated(parallel.data_mesh())
        else:
            sharding = SingleDeviceSharding(jax.local_devices()[0])
        abstract = jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), jax.eval_shape(init_fn)
        )
        state, metadata = ckpt.restore(abstract, metadata["step"])
    finally:
        ckpt.close()
    return Pretrained(config, state.params, state.ema_params, int(state.step), metadata, directory)
