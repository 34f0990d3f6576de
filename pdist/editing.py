"""Editing an image with a conditional denoiser: InfEdit's DDCM and the baselines it is measured against.

**DDCM** (Denoising Diffusion Consistent Model; Xu et al., "Inversion-Free Image Editing with Natural
Language", CVPR 2024, code sled-group/InfEdit) edits ``x0`` of condition A into condition B without inverting
it. DDIM with its noise at the largest value is multistep consistency sampling, ``z_s = alpha_s x-hat +
sigma_s noise`` (``samplers`` method ``consistency``); with the noise chosen as ``(z_t - alpha_t x0) /
sigma_t`` a source branch reproduces x0 at every step ("virtual inversion"). A target branch runs beside it
from the same noise, and its x-hat is calibrated by the source branch's error. On the grid ``t_0 > ... >
t_{N-1}`` (``schedules.time_grid``), from ``z^s_0 = z^t_0 = xi_0`` (pure noise at ``t_start = 1``, else
``alpha_0 x0 + sigma_0 xi_0``), for k = 0 .. N-1::

    x~_k   = x0 + x-hat_B(z^t_k) - x-hat_A(z^s_k)                      (returned at k = N - 1)
    eps~_k = eps-hat_B(z^t_k) - eps-hat_A(z^s_k) + (z^s_k - alpha_k x0) / sigma_k
    n_k    = sqrt(1 - noise_fraction) eps~_k + sqrt(noise_fraction) xi_{k+1}     (xi fresh, shared)
    z^s_{k+1} = alpha_{k+1} x0 + sigma_{k+1} n_k,   z^t_{k+1} = alpha_{k+1} x~_k + sigma_{k+1} n_k

``noise_fraction`` is the reference's ``eta``, the fraction of the next level's noise variance that is fresh
(1, its default: all of it); it is not DDIM's eta, hence the other name. Both branches are one denoiser call
on the doubled batch ``[z^s; z^t]`` (conditions ``[A; B]``): N calls, 2N evaluations. With A = B *and the same
guidance weight on both branches* the edit is x0 exactly, for any denoiser. With different weights (the
command line's and ``Pretrained.edit``'s defaults: target w = 1, source w = 0) the two branches differ even
for A = B, and the first step already moves x0 by ``(w_t - w_s) (x-hat_c - x-hat_null)``.

The guidance weights are pdist's ``w`` (:mod:`pdist.guidance`): the reference's guidance scale ``s``
(``uncond + s (cond - uncond)``) is ``w = s - 1``, so its defaults (source 1, target 2) are ``w = 0`` and
``w = 1``.

**Self-attention control** (InfEdit's, the part of its attention control that applies to a network without
text): in the first ``attention_steps`` steps the target branch attends with the source branch's queries and
keys (its own values), keeping the source's layout. The denoiser must accept ``attention_from`` [2B] (the
row whose queries and keys each row uses): a network's denoiser does (:mod:`pdist.models.unet`).

**Baselines at equal evaluations**: :func:`sdedit` (Meng et al. 2022: noise x0 to ``t_start``, sample back
with condition B, 2N steps for DDCM's 2N evaluations) and :func:`invert` (DDIM inversion under A, N steps,
then DDIM under B from the inverted noise, N steps).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from pdist import diffusion, samplers
from pdist.samplers.core import Predictor
from pdist.schedules import Schedule, start_time, time_grid

Array = jax.Array


def check_inputs(x0, source_labels, target_labels, num_steps: int, noise_fraction: float = 1.0) -> None:
    """One sentence (ValueError) unless the images, labels and settings of an edit fit together."""
    if np.ndim(x0) < 2:
        raise ValueError(f"x0 has shape {np.shape(x0)}; give a batch of images [B, H, W, C] (or [B, D]).")
    n = np.shape(x0)[0]
    for name, labels in (("source_labels", source_labels), ("target_labels", target_labels)):
        if labels is not None and np.shape(labels) != (n,):
            raise ValueError(f"{name} has shape {np.shape(labels)}; give one class per image, shape ({n},).")
    if not (isinstance(num_steps, (int, np.integer)) and num_steps >= 1):
        raise ValueError(f"num_steps={num_steps!r} must be a positive integer (12 to 15 is InfEdit's default).")
    if not 0.0 <= noise_fraction <= 1.0:
        raise ValueError(
            f"noise_fraction={noise_fraction!r} must be in [0, 1]: the fresh fraction of each step's noise "
            "variance (1 is InfEdit's default)."
        )


def ddcm(
    pair_fn: Callable,
    schedule: Schedule,
    x0: Array,
    key: Array,
    *,
    num_steps: int,
    noise_fraction: float = 1.0,
    t_start: float = 1.0,
    grid: str = "auto",
    clip_x: bool = False,
    attention_steps: int = 0,
) -> Array:
    """The DDCM edit of ``x0`` [B, ...]: ``pair_fn(z, t)`` [2B] evaluates the source condition on the first
    half of the batch and the target condition on the second (``-> x_hat`` or a Prediction). One compiled
    ``lax.scan`` of ``num_steps`` calls; returns x~ [B, ...]."""
    check_inputs(x0, None, None, num_steps, noise_fraction)
    if not (isinstance(attention_steps, (int, np.integer)) and 0 <= attention_steps <= num_steps):
        raise ValueError(f"attention_steps={attention_steps!r} must be an integer in [0, num_steps={num_steps}].")
    times = time_grid(schedule, num_steps, grid, t_start)
    noised = bool(times[0] < 1.0)  # t_start = 1: the reference starts from pure noise
    return _ddcm(
        samplers.as_pytree(pair_fn),
        schedule,
        clip_x,
        noised,
        int(attention_steps),
        jnp.asarray(times, jnp.float32),
        jnp.asarray(x0, jnp.float32),
        key,
        jnp.float32(noise_fraction),
    )


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _ddcm(pair_fn, schedule, clip_x, noised, attention_steps, times, x0, key, noise_fraction):
    ev = Predictor(pair_fn, schedule, clip_x)
    b = x0.shape[0]
    k_start, k_steps = jax.random.split(key)
    xi = jax.random.normal(k_start, x0.shape, x0.dtype)
    if noised:
        xi = diffusion.diffuse(x0, xi, schedule.logsnr(times[0]))
    rows = jnp.arange(2 * b)
    shared = jnp.concatenate([jnp.arange(b), jnp.arange(b)])  # the target rows use the source rows' q and k
    fresh, kept = jnp.sqrt(noise_fraction), jnp.sqrt(1.0 - noise_fraction)

    def step(carry, inputs):
        z_s, z_t, _ = carry
        t, s, k, index = inputs
        inputs = {"attention_from": jnp.where(index < attention_steps, shared, rows)} if attention_steps else {}
        pred = ev(jnp.concatenate([z_s, z_t]), t, **inputs)
        alpha_t, sigma_t = schedule.alpha_sigma(t)
        x_tilde = x0 + (pred.x[b:] - pred.x[:b])  # exactly x0 where both branches agree
        eps_tilde = (pred.eps[b:] - pred.eps[:b]) + (z_s - alpha_t * x0) / sigma_t
        noise = kept * eps_tilde + fresh * jax.random.normal(k, x0.shape, x0.dtype)
        alpha_s, sigma_s = schedule.alpha_sigma(s)
        return (alpha_s * x0 + sigma_s * noise, alpha_s * x_tilde + sigma_s * noise, x_tilde), None

    n = times.shape[0] - 1
    inputs = (times[:-1], times[1:], jax.random.split(k_steps, n), jnp.arange(n))
    (_, _, x_tilde), _ = jax.lax.scan(step, (xi, xi, jnp.zeros_like(x0)), inputs)
    return x_tilde


def noised(schedule: Schedule, x0: Array, key: Array, t_start: float) -> Array:
    """``alpha x0 + sigma eps`` at ``schedules.start_time(schedule, t_start)``: where SDEdit starts."""
    eps = jax.random.normal(key, jnp.shape(x0), jnp.float32)
    return diffusion.diffuse(x0, eps, schedule.logsnr(jnp.float32(start_time(schedule, t_start))))


def sdedit(
    denoise_fn: Callable,
    schedule: Schedule,
    x0: Array,
    key: Array,
    *,
    t_start: float,
    num_steps: int,
    method: str = "ddim",
    grid: str = "auto",
    clip_x: bool = False,
    **options,
) -> Array:
    """SDEdit (Meng et al. 2022): x0 noised to ``t_start``, then ``method`` for ``num_steps`` steps under the
    target condition ``denoise_fn`` carries. Larger ``t_start``: more of the target, less of the source."""
    k_noise, k_sample = jax.random.split(key)
    z = noised(schedule, jnp.asarray(x0, jnp.float32), k_noise, t_start)
    return samplers.sample(
        denoise_fn,
        schedule,
        z,
        method=method,
        num_steps=num_steps,
        key=k_sample,
        grid=grid,
        clip_x=clip_x,
        t_start=t_start,
        **options,
    )


def invert(
    denoise_fn: Callable, schedule: Schedule, x0: Array, *, num_steps: int, grid: str = "auto", t_start: float = 1.0
) -> Array:
    """DDIM inversion: z at ``t_0`` (the grid's start) whose deterministic DDIM trajectory under ``denoise_fn``
    leads back to about x0. Each of the ``num_steps`` steps runs DDIM's update backwards, from ``z`` at ``s``
    to the next higher time ``t``, with eps-hat evaluated at ``(z, t)`` (the usual explicit approximation:
    ``z_t = alpha_t (z - sigma_s eps) / alpha_s + sigma_t eps``); ``samplers.sample(..., method='ddim',
    t_start=...)`` from the result regenerates, under another condition for an edit."""
    times = time_grid(schedule, num_steps, grid, t_start)
    return _invert(samplers.as_pytree(denoise_fn), schedule, jnp.asarray(times[::-1], jnp.float32), x0)


@functools.partial(jax.jit, static_argnums=(1,))
def _invert(denoise_fn, schedule, times, x0):
    ev = Predictor(denoise_fn, schedule, False)

    def step(z, inputs):
        s, t = inputs
        eps = ev(z, t).eps
        alpha_s, sigma_s = schedule.alpha_sigma(s)
        alpha_t, sigma_t = schedule.alpha_sigma(t)
        return alpha_t * (z - sigma_s * eps) / alpha_s + sigma_t * eps, None

    z, _ = jax.lax.scan(step, jnp.asarray(x0, jnp.float32), (times[:-1], times[1:]))
    return z


@dataclasses.dataclass(frozen=True)
class EditSettings:
    """What every editing method takes beside its denoisers: ``num_steps`` on time ``grid`` from ``t_start``,
    x-hat clipped when ``clip_x``; DDCM's ``noise_fraction`` and ``attention_steps``."""

    num_steps: int
    noise_fraction: float = 1.0
    t_start: float = 1.0
    grid: str = "auto"
    clip_x: bool = False
    attention_steps: int = 0


def _by_ddcm(denoiser: Callable, schedule: Schedule, x0: Array, source, target, key: Array, s: EditSettings):
    (a, w_a), (b, w_b) = source, target
    weights = None if w_a is None else jnp.concatenate([w_a, w_b])
    pair = denoiser(jnp.concatenate([a, b]), weights)  # one call on [source; target]
    return ddcm(
        pair, schedule, x0, key, num_steps=s.num_steps, noise_fraction=s.noise_fraction, t_start=s.t_start,
        grid=s.grid, clip_x=s.clip_x, attention_steps=s.attention_steps,
    )  # fmt: skip


def _by_sdedit(denoiser: Callable, schedule: Schedule, x0: Array, source, target, key: Array, s: EditSettings):
    return sdedit(
        denoiser(*target), schedule, x0, key, t_start=s.t_start, num_steps=s.num_steps, grid=s.grid, clip_x=s.clip_x
    )


def _by_inversion(denoiser: Callable, schedule: Schedule, x0: Array, source, target, key: Array, s: EditSettings):
    z = invert(denoiser(*source), schedule, x0, num_steps=s.num_steps, grid=s.grid, t_start=s.t_start)
    return samplers.sample(
        denoiser(*target), schedule, z, method="ddim", num_steps=s.num_steps, grid=s.grid, clip_x=s.clip_x,
        t_start=s.t_start,
    )  # fmt: skip


# name -> fn(denoiser, schedule, x0, source, target, key, settings) -> edits; ``denoiser(labels, w)`` gives
# ``denoise_fn(z, t)`` for classes ``labels`` [B] at guidance weights ``w`` [B] (None: unguided), and
# ``source``/``target`` are the (labels, w) of each branch.
EDITORS = {"ddcm": _by_ddcm, "sdedit": _by_sdedit, "inversion": _by_inversion}
