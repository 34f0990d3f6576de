"""Ancestral DDPM and DDIM (Ho et al. 2020; Nichol & Dhariwal 2021; Song et al. 2021a), and multistep
consistency sampling (Song et al. 2023), DDIM with its noise at the largest value.

Both run on any decreasing time grid (respaced or strided), using the exact
transition between consecutive grid times (``pdist.diffusion.transition``), so
fixed and learned variances rescale automatically with the respacing. The
last step of ``ddpm`` returns x-hat on every schedule, as Improved DDPM's and
Progressive Distillation's samplers do (``samplers/core.py``): no noise is
added onto the samples, also where the schedule stops short of clean data
(``cosine_logsnr`` at logSNR 20), where the ``large`` variance's last step
would add noise of standard deviation sqrt(beta) of that step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pdist import diffusion
from pdist.samplers.core import Predictor, step_pairs

Array = jax.Array


def ddpm(ev: Predictor, times: Array, z: Array, key: Array, *, variance: str = "small") -> Array:
    """Ancestral sampling from p(z_s | z_t) = N(mu(x-hat, z_t), Sigma).

    ``variance`` (:data:`pdist.diffusion.VARIANCES`): ``small`` = beta_tilde,
    ``large`` = beta_{t|s}, ``learned`` = Improved DDPM's interpolation with the
    denoiser's ``var_frac``.
    """
    if variance not in diffusion.VARIANCES:
        raise ValueError(f"Unknown ddpm variance {variance!r}; choose one of {list(diffusion.VARIANCES)}.")
    ts, ss = step_pairs(times)
    keys = jax.random.split(key, ts.shape[0])

    def step(z, inputs):
        t, s, k = inputs
        pred = ev(z, t)
        tr = diffusion.transition(ev.logsnr(s), ev.logsnr(t))
        mean = diffusion.posterior_mean(tr, pred.x, z)
        log_var = diffusion.log_variance(variance, tr, pred.var_frac)
        std = jnp.exp(0.5 * log_var)
        noise = jax.random.normal(k, z.shape, z.dtype)
        return mean + diffusion.bcast(std, z) * noise, None

    z, _ = jax.lax.scan(step, z, (ts, ss, keys))
    return z


def ddim(ev: Predictor, times: Array, z: Array, key: Array, *, eta: float = 0.0) -> Array:
    """DDIM (Song et al. 2021a, Eq. 12 and 16): eta = 0 deterministic, eta = 1 is DDPM 'small'.

    ``z_s = alpha_s x + sqrt(sigma_s^2 - c^2) eps + c xi`` with
    ``c = eta sqrt(beta_tilde)``.
    """
    if eta < 0:
        raise ValueError(f"ddim eta must be >= 0, got {eta}.")
    ts, ss = step_pairs(times)
    keys = jax.random.split(key, ts.shape[0])

    def step(z, inputs):
        t, s, k = inputs
        pred = ev(z, t)
        if eta == 0:
            return ev.ddim(pred, s), None
        tr = diffusion.transition(ev.logsnr(s), ev.logsnr(t))
        c = eta * jnp.exp(0.5 * tr.log_beta_tilde)
        sigma_dir = jnp.sqrt(jnp.maximum(tr.sigma_s**2 - c**2, 0.0))
        noise = jax.random.normal(k, z.shape, z.dtype)
        z_s = diffusion.ddim_step(diffusion.Prediction(pred.x, pred.eps), tr.alpha_s, sigma_dir)
        return z_s + diffusion.bcast(c, z) * noise, None

    z, _ = jax.lax.scan(step, z, (ts, ss, keys))
    return z


def consistency(ev: Predictor, times: Array, z: Array, key: Array) -> Array:
    """Multistep consistency sampling (Song et al. 2023, Algorithm 1): ``z_s = alpha_s x-hat(z_t) + sigma_s xi``
    with fresh noise ``xi`` every step.

    DDIM's step with its noise at the largest value (``sigma_t = sqrt(1 - alphabar_{t-1})``: no direction
    term), the form InfEdit's DDCM editing builds on (:mod:`pdist.editing`). Made for few-step students,
    whose x-hat is already a sample: every step re-noises it to the next level and denoises again. The last
    step returns x-hat (the method's ``ends_on_x``).
    """
    ts, ss = step_pairs(times)
    keys = jax.random.split(key, ts.shape[0])

    def step(z, inputs):
        t, s, k = inputs
        pred = ev(z, t)
        alpha_s, sigma_s = ev.alpha_sigma(s)
        return alpha_s * pred.x + sigma_s * jax.random.normal(k, z.shape, z.dtype), None

    z, _ = jax.lax.scan(step, z, (ts, ss, keys))
    return z
