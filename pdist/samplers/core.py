"""What every sampler shares: the predictor around a denoiser and step helpers.

A sampler sees a model only as ``denoise_fn(z, t) -> x_hat`` (``t`` of shape
[batch]) or ``-> Prediction``. :class:`Predictor` turns either into a full
:class:`~pdist.diffusion.Prediction` (x-hat and eps-hat), applies optional
clipping, and keeps the schedule's scalars at hand.

The last step onto clean data: on a schedule with ``sigma(0) = 0`` (the
discrete ones), :func:`pdist.samplers.sample` runs the method down to the last
noisy grid time and then takes the DDIM step onto t = 0, which returns the
denoiser's x-hat there (Karras et al. 2022 end the same way). A denoiser that
returns only x-hat says nothing about eps at t = 0, so no method can evaluate
there, and that last step is usually much shorter than the others (level 1
to 0 on a respaced grid), which multistep weights built for equal steps would
get wrong. Ancestral ``ddpm`` ends the same way on every schedule (its
method's ``ends_on_x``): on one that stops short of data, its last step
returns x-hat instead of drawing z at the lowest noise level.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pdist import diffusion
from pdist.diffusion import Prediction
from pdist.schedules import Schedule

Array = jax.Array


class Predictor:
    """Calls the denoiser at a scalar time and returns a complete Prediction."""

    def __init__(self, denoise_fn, schedule: Schedule, clip_x: bool, keep_eps: bool = False):
        self.denoise_fn = denoise_fn
        self.schedule = schedule
        self.clip_x = clip_x
        self.keep_eps = keep_eps  # clipping keeps the unclipped eps-hat (diffusion.clip_prediction)
        self.ends_at_data = schedule.ends_at_data

    def logsnr(self, t: Array) -> Array:
        return self.schedule.logsnr(t)

    def alpha_sigma(self, t: Array) -> tuple[Array, Array]:
        return self.schedule.alpha_sigma(t)

    def __call__(self, z: Array, t: Array, **inputs) -> Prediction:
        """The prediction at scalar time ``t``; ``inputs``: further keyword inputs of the denoiser (the
        attention control of :mod:`pdist.editing`)."""
        lam = self.logsnr(t)
        out = self.denoise_fn(z, jnp.full((z.shape[0],), t, dtype=jnp.float32), **inputs)
        pred = out if isinstance(out, Prediction) else diffusion.from_x(out, z, lam)
        if self.clip_x:
            pred = diffusion.clip_prediction(pred, z, lam, self.keep_eps)
        return pred

    def ddim(self, pred: Prediction, s: Array) -> Array:
        alpha_s, sigma_s = self.alpha_sigma(s)
        return diffusion.ddim_step(pred, alpha_s, sigma_s)


def step_pairs(times: Array) -> tuple[Array, Array]:
    """(t_i, t_{i+1}) for every step of a decreasing grid of N + 1 times."""
    return times[:-1], times[1:]
