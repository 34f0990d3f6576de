"""Probability-flow ODE solvers: Euler, Heun and DPM-Solver++ 2M.

Euler and Heun integrate the probability-flow ODE in the angle
``phi = atan2(sigma, alpha)``, where it reads ``dz/dphi = v-hat``
(``v = alpha eps - sigma x``): a bounded right-hand side for every VP schedule,
including the ends of a logSNR schedule clipped at +-20 where steps in sigma/alpha
or in logSNR blow up. For the Progressive Distillation cosine, phi is affine in
t, so these are Euler and Heun in t.

DPM-Solver++ 2M (Lu et al. 2022b, Alg. 2) is the exponential integrator in
``lambda = logsnr / 2`` with data prediction: exact for the linear part of the
ODE, second order through a multistep correction with variable step ratio.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pdist import diffusion
from pdist.samplers.core import Predictor, step_pairs

Array = jax.Array


def _phi(ev: Predictor, t: Array) -> Array:
    alpha, sigma = ev.alpha_sigma(t)
    return jnp.arctan2(sigma, alpha)


def euler(ev: Predictor, times: Array, z: Array, key: Array) -> Array:
    """Explicit Euler in phi: ``z_s = z_t + (phi_s - phi_t) v-hat(z_t, t)``."""
    del key

    def step(z, inputs):
        t, s = inputs
        v = diffusion.to_v(ev(z, t), ev.logsnr(t))
        return z + (_phi(ev, s) - _phi(ev, t)) * v, None

    z, _ = jax.lax.scan(step, z, step_pairs(times))
    return z


def heun(ev: Predictor, times: Array, z: Array, key: Array) -> Array:
    """Heun's second-order method in phi (Karras et al. 2022, Alg. 1, in phi).

    Two evaluations per step. When the grid ends at t = 0 of a schedule that
    does not reach clean data (the clipped logSNR cosine: sigma(0) = e^-10), the
    last step is an Euler step, as Karras et al.'s step to sigma = 0: the
    corrector there would see eps recomputed from a clipped x-hat,
    (z - alpha x-hat) / sigma, which is unbounded. On schedules that end at
    data the grid stops one level early (the DDIM step finishes), so every
    step keeps its corrector.
    """
    del key

    def step(z, inputs):
        t, s = inputs
        dphi = _phi(ev, s) - _phi(ev, t)
        v1 = diffusion.to_v(ev(z, t), ev.logsnr(t))
        z_pred = z + dphi * v1
        v2 = diffusion.to_v(ev(z_pred, s), ev.logsnr(s))
        return z + dphi * 0.5 * (v1 + v2), None

    if ev.ends_at_data:
        z, _ = jax.lax.scan(step, z, step_pairs(times))
        return z
    z, _ = jax.lax.scan(step, z, step_pairs(times[:-1]))
    return euler(ev, times[-2:], z, None)


LOWER_ORDER_FINAL = ("always", "below_15", "final")


def dpmpp_2m(ev: Predictor, times: Array, z: Array, key: Array, *, lower_order_final: str = "always") -> Array:
    """DPM-Solver++(2M), data prediction in lambda = logsnr / 2 (Lu et al. 2022b, Alg. 2).

    ``z_s = (sigma_s / sigma_t) z_t - alpha_s expm1(-h) D`` with ``h = lambda_s - lambda_t``,
    ``D = (1 + 1/(2r)) x_i - 1/(2r) x_{i-1}``, ``r = h_{i-1} / h_i``; first order
    (``D = x_i``) on the first step, and on the last one: ``always`` (the last
    step of a uniform grid on the clipped cosine jumps to logsnr = 20, where
    extrapolating x-hat in lambda would be wrong by a large factor) or
    ``below_15`` steps only, as Lu et al.'s and diffusers' ``lower_order_final``.
    On a schedule that reaches clean data (a discrete one) the step onto t = 0 is
    the caller's x-hat, first order by nature, and ``always`` and ``below_15``
    lower the step before it too (the respaced grid's last gap is wide in
    lambda: extrapolating over it costs order, tests/test_samplers.py);
    ``final`` lowers the step onto t = 0 only, as diffusers'
    ``DPMSolverMultistepScheduler`` does with its default final sigma zero
    (on a schedule that does not reach clean data, the same as ``always``).
    """
    del key
    if lower_order_final not in LOWER_ORDER_FINAL:
        raise ValueError(f"Unknown lower_order_final {lower_order_final!r}; choose one of {list(LOWER_ORDER_FINAL)}.")
    ts, ss = step_pairs(times)
    first = jnp.arange(ts.shape[0]) == 0
    if lower_order_final == "final":
        lower_last = not ev.ends_at_data  # there the step onto t = 0 is x-hat, outside this scan
    else:
        lower_last = lower_order_final == "always" or ts.shape[0] < 15
    last = (jnp.arange(ts.shape[0]) == ts.shape[0] - 1) & lower_last

    def step(carry, inputs):
        z, x_prev, h_prev = carry
        t, s, is_first, is_last = inputs
        lam_t, lam_s = ev.logsnr(t), ev.logsnr(s)
        pred = ev(z, t)
        h = 0.5 * (lam_s - lam_t)
        r = h_prev / h
        d2 = (1.0 + 0.5 / r) * pred.x - (0.5 / r) * x_prev
        d = jnp.where(is_first | is_last, pred.x, d2)
        alpha_s, sigma_s = ev.alpha_sigma(s)
        _, sigma_t = ev.alpha_sigma(t)
        z_s = (sigma_s / sigma_t) * z - alpha_s * jnp.expm1(-h) * d
        return (z_s, pred.x, h), None

    init = (z, jnp.zeros_like(z), jnp.ones((), z.dtype))
    (z, _, _), _ = jax.lax.scan(step, init, (ts, ss, first, last))
    return z
