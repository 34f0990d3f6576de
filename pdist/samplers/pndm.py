"""Pseudo numerical methods (Liu et al. 2022, "PNDM"): PRK, PLMS, S-PNDM, F-PNDM.

A pseudo method keeps DDIM's transfer ``z_t -> z_s`` (exact when the
prediction is constant along the path) and feeds it a combination of
predictions taken at several points, with Runge-Kutta (PNDM Eq. 13) or
Adams-Bashforth (Eq. 12) weights.

Stability near alpha = 0. The paper blends eps-hats and transfers with
``z_s = (alpha_s / alpha_t) z_t + (sigma_s - alpha_s sigma_t / alpha_t) eps'``. A blend
of eps-hats taken at different points is not consistent with z_t, and the
transfer multiplies the mismatch by ``sigma_s (e^h - 1)``, ``h = (logsnr_s -
logsnr_t) / 2``: about 2e4 for a pseudo Runge-Kutta step leaving logsnr = -20,
enough to turn a 10-step sample into values of 1e6. The same transfer written
for data predictions, ``z_s = (sigma_s / sigma_t) z_t + alpha_s (1 - e^-h) x'``, is
exact for a constant x-hat and multiplies a mismatch by ``alpha_s (1 - e^-h) <= 1``.
The eps coefficient is the smaller of the two exactly when ``logsnr_t >= 0``,
so each step blends eps-hats (the paper's method) where SNR >= 1 and x-hats
where SNR < 1. Every step is then bounded for any schedule and step count, and
the method is the paper's on the low-noise half, where its accuracy is decided.
Histories keep both predictions so a multistep run can cross SNR = 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pdist.diffusion import Prediction
from pdist.samplers.core import Predictor, step_pairs

Array = jax.Array

# Adams-Bashforth weights on (f_i, f_{i-1}, f_{i-2}, f_{i-3}) for orders 1..4.
_AB = np.array(
    [
        [1.0, 0.0, 0.0, 0.0],
        [3 / 2, -1 / 2, 0.0, 0.0],
        [23 / 12, -16 / 12, 5 / 12, 0.0],
        [55 / 24, -59 / 24, 37 / 24, -9 / 24],
    ],
    dtype=np.float32,
)


def _transfer(ev: Predictor, z: Array, blend: Prediction, t: Array, s: Array, eps_only: bool = False) -> Array:
    """DDIM's transfer t -> s driven by blended predictions, in the better-conditioned form (``eps_only``: the
    eps-hat form at every SNR, the paper's and diffusers' ``PNDMScheduler``'s)."""
    alpha_t, sigma_t = ev.alpha_sigma(t)
    alpha_s, sigma_s = ev.alpha_sigma(s)
    from_eps = (alpha_s / alpha_t) * z + (sigma_s - alpha_s * sigma_t / alpha_t) * blend.eps
    from_x = (sigma_s / sigma_t) * z + (alpha_s - sigma_s * alpha_t / sigma_t) * blend.x
    return from_eps if eps_only else jnp.where(ev.logsnr(t) >= 0.0, from_eps, from_x)


def _combine(weights, preds) -> Prediction:
    x = sum(w * p.x for w, p in zip(weights, preds, strict=True))
    eps = sum(w * p.eps for w, p in zip(weights, preds, strict=True))
    return Prediction(x, eps)


def _prk_scan(ev: Predictor, ts: Array, ss: Array, z: Array) -> tuple[Array, Prediction]:
    """Pseudo Runge-Kutta steps (PNDM Eq. 13); returns z and each step's prediction at its start."""

    def step(z, inputs):
        t, s = inputs
        m = 0.5 * (t + s)
        p1 = ev(z, t)
        p2 = ev(_transfer(ev, z, p1, t, m), m)
        p3 = ev(_transfer(ev, z, p2, t, m), m)
        p4 = ev(_transfer(ev, z, p3, t, s), s)
        blend = _combine((1 / 6, 1 / 3, 1 / 3, 1 / 6), [p1, p2, p3, p4])
        return _transfer(ev, z, blend, t, s), Prediction(p1.x, p1.eps)

    return jax.lax.scan(step, z, (ts, ss))


def _multistep_scan(
    ev: Predictor,
    ts: Array,
    ss: Array,
    z: Array,
    history: tuple[Prediction, ...],
    start: int,
    max_order: int,
    eps_only: bool = False,
) -> Array:
    """Pseudo linear multistep (PNDM Eq. 12): one evaluation per step.

    ``history`` holds the three previous predictions, most recent first; step j
    uses order ``min(start + j + 1, max_order)`` (lower orders warm it up). The
    blend is elementwise with scalar weights, so it fuses into the transfer.
    """
    orders = jnp.minimum(start + jnp.arange(ts.shape[0]) + 1, max_order)
    weights = jnp.asarray(_AB)[orders - 1]

    def step(carry, inputs):
        z, hist = carry
        t, s, w = inputs
        p = Prediction(*ev(z, t)[:2])
        blend = _combine([w[0], w[1], w[2], w[3]], [p, *hist])
        return (_transfer(ev, z, blend, t, s, eps_only), (p, hist[0], hist[1])), None

    (z, _), _ = jax.lax.scan(step, (z, history), (ts, ss, weights))
    return z


def _history(z: Array, *latest: Prediction) -> tuple[Prediction, ...]:
    """Three history slots, most recent first, zero-filled beyond ``latest``."""
    zeros = Prediction(jnp.zeros_like(z), jnp.zeros_like(z))
    return tuple(latest) + (zeros,) * (3 - len(latest))


def prk(ev: Predictor, times: Array, z: Array, key: Array) -> Array:
    """Pseudo Runge-Kutta at every step: 4 evaluations per step."""
    del key
    z, _ = _prk_scan(ev, *step_pairs(times), z)
    return z


PLMS_WARMUPS = ("ramp", "improved_euler")
PLMS_BLENDS = ("auto", "eps")


def plms(ev: Predictor, times: Array, z: Array, key: Array, *, warmup: str = "ramp", blend: str = "auto") -> Array:
    """Pseudo linear multistep to fourth order, one evaluation per step after the first.

    ``warmup``: ``ramp`` takes orders 1, 2, 3 on the first three steps (N
    evaluations); ``improved_euler`` takes a pseudo improved-Euler first step
    (2 evaluations) and then orders 2, 3, 4, as Latent Diffusion's and
    diffusers' PLMS do (N + 1 evaluations).

    ``blend``: ``auto`` blends eps-hats where SNR >= 1 and x-hats below (the
    module's note); ``eps`` blends eps-hats everywhere, as the paper and
    diffusers' ``PNDMScheduler`` do.
    """
    del key
    if warmup not in PLMS_WARMUPS:
        raise ValueError(f"Unknown plms warmup {warmup!r}; choose one of {list(PLMS_WARMUPS)}.")
    if blend not in PLMS_BLENDS:
        raise ValueError(f"Unknown plms blend {blend!r}; choose one of {list(PLMS_BLENDS)}.")
    ts, ss = step_pairs(times)
    if warmup == "improved_euler":
        return _improved_euler_then_multistep(ev, ts, ss, z, max_order=4, eps_only=blend == "eps")
    return _multistep_scan(ev, ts, ss, z, _history(z), start=0, max_order=4, eps_only=blend == "eps")


def spndm(ev: Predictor, times: Array, z: Array, key: Array) -> Array:
    """S-PNDM: a pseudo improved-Euler first step (2 evaluations), then second-order multistep."""
    del key
    return _improved_euler_then_multistep(ev, *step_pairs(times), z, max_order=2)


def _improved_euler_then_multistep(
    ev: Predictor, ts: Array, ss: Array, z: Array, max_order: int, eps_only: bool = False
) -> Array:
    if ts.shape[0] == 0:
        return z
    t, s = ts[0], ss[0]
    p1 = ev(z, t)
    p2 = ev(_transfer(ev, z, p1, t, s, eps_only), s)
    z = _transfer(ev, z, _combine((0.5, 0.5), [p1, p2]), t, s, eps_only)
    history = _history(z, Prediction(p1.x, p1.eps))
    return _multistep_scan(ev, ts[1:], ss[1:], z, history, start=1, max_order=max_order, eps_only=eps_only)


def fpndm(ev: Predictor, times: Array, z: Array, key: Array) -> Array:
    """F-PNDM: three pseudo Runge-Kutta steps, then fourth-order pseudo multistep."""
    del key
    ts, ss = step_pairs(times)
    n_prk = min(3, ts.shape[0])
    z, starts = _prk_scan(ev, ts[:n_prk], ss[:n_prk], z)
    latest = [Prediction(starts.x[i], starts.eps[i]) for i in reversed(range(n_prk))]
    return _multistep_scan(ev, ts[n_prk:], ss[n_prk:], z, _history(z, *latest), start=n_prk, max_order=4)
