"""Variational bound terms in bits per dimension (Ho et al. 2020; Nichol & Dhariwal 2021).

For a T-step grid with levels ``t_i = i / T``, the bound is
``L_vlb = L_prior + sum_{i>=2} KL(q(z_{i-1} | z_i, x) || p(z_{i-1} | z_i)) - log p(x | z_1)``.
The decoder term uses a discretized Gaussian over 256 bins of width 2/255
on [-1, 1] (outer bins open-ended); KLs are between diagonal Gaussians. All
functions are per-example: they return [B] arrays averaged over data dims and
divided by log 2.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import log_ndtr

from pdist import diffusion
from pdist.diffusion import Prediction, Transition

Array = jax.Array


def normal_kl(mean1: Array, logvar1: Array, mean2: Array, logvar2: Array) -> Array:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (logvar2 - logvar1 + jnp.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * jnp.exp(-logvar2) - 1.0)


def _log_prob_between(lo: Array, hi: Array) -> Array:
    """log(Phi(hi) - Phi(lo)) for lo < hi, accurate in both tails."""
    # Work in the lower tail: Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi) when the bin is above 0.
    flip = lo > 0
    a, b = jnp.where(flip, -hi, lo), jnp.where(flip, -lo, hi)
    log_b, log_a = log_ndtr(b), log_ndtr(a)
    return log_b + jnp.log(-jnp.expm1(jnp.minimum(log_a - log_b, -1e-30)))


# How the decoder's bin probabilities are computed: "exact" (the normal CDF, accurate in both tails) or "tanh",
# the approximation Phi(u) ~ (1 + tanh(sqrt(2/pi) (u + 0.044715 u^3))) / 2 with probabilities floored at 1e-12
# that improved- and guided-diffusion use, and so the NLLs their papers report. pdist evaluates that formula as
# sigmoid(2 sqrt(2/pi) (u + 0.044715 u^3)), the same function without 1 + tanh's cancellation in the tails, and
# takes a bin's mass in the upper half from 1 - Phi: far from x-hat its value is the formula's, where float32's
# 1 + tanh would round it to a few steps of 2^-24 or to the floor.
CDFS = ("exact", "tanh")


def _tanh_log_prob_between(lo: Array, hi: Array) -> Array:
    """log(Phi~(hi) - Phi~(lo)) of the tanh approximation Phi~, floored at log 1e-12 as its code does."""
    flip = lo > 0  # in the upper half: Phi~(hi) - Phi~(lo) = Phi~(-lo) - Phi~(-hi) (Phi~ is odd about 1/2)
    a, b = jnp.where(flip, -hi, lo), jnp.where(flip, -lo, hi)

    def cdf(u):
        return jax.nn.sigmoid(2.0 * math.sqrt(2.0 / math.pi) * (u + 0.044715 * u**3))

    return jnp.log(jnp.maximum(cdf(b) - cdf(a), 1e-12))


def discretized_gaussian_log_likelihood(
    x: Array, *, mean: Array, log_scale: Array, num_bins: int = 256, cdf: str = "exact"
) -> Array:
    """log P(bin of x) under N(mean, e^{2 log_scale}) discretized to ``num_bins`` bins, elementwise nats.

    ``x`` holds bin centres ``-1 + 2k / (num_bins - 1)``; the first and last bins
    extend to -inf and +inf, so the bin probabilities sum to one exactly (with ``cdf="exact"``; see
    :data:`CDFS`).
    """
    half = 1.0 / (num_bins - 1)
    inv = jnp.exp(-log_scale)
    lo = jnp.where(x < -1.0 + half, -jnp.inf, (x - half - mean) * inv)
    hi = jnp.where(x > 1.0 - half, jnp.inf, (x + half - mean) * inv)
    return _tanh_log_prob_between(lo, hi) if cdf == "tanh" else _log_prob_between(lo, hi)


def bits_per_dim(nats: Array) -> Array:
    """Mean over all but the batch axis, in bits."""
    return jnp.mean(nats.reshape(nats.shape[0], -1), axis=1) / math.log(2.0)


def prior_bpd(x: Array, logsnr_1: Array) -> Array:
    """KL(q(z_1 | x) || N(0, I)) in bits/dim, per example (independent of the model)."""
    alpha, sigma = diffusion.alpha_sigma_from_logsnr(logsnr_1)
    mean = diffusion.bcast(alpha, x) * x
    logvar = diffusion.bcast(jnp.log(sigma**2), x)
    return bits_per_dim(normal_kl(mean, logvar, 0.0, 0.0))


def step_transition(schedule, t: Array, num_timesteps: int) -> tuple[Transition, Array, Array]:
    """The transition from level t to s = t - 1/T, with the clipped log beta_tilde.

    Returns ``(tr, log_beta_tilde_clipped, is_decoder)``: at the first level
    (s = 0) beta_tilde is 0, so model variances use the next level's beta_tilde
    there, as Improved DDPM does.
    """
    dt = 1.0 / num_timesteps
    s = t - dt
    tr = diffusion.transition(schedule.logsnr(s), schedule.logsnr(t))
    tr_next = diffusion.transition(schedule.logsnr(t), schedule.logsnr(t + dt))
    is_decoder = s <= 0.5 * dt
    return tr, jnp.where(is_decoder, tr_next.log_beta_tilde, tr.log_beta_tilde), is_decoder


def model_log_variance(
    kind: str, tr: Transition, log_beta_tilde_clipped: Array, is_decoder: Array, var_frac: Array | None, like: Array
) -> Array:
    """log Sigma of p(z_s | z_t) for a :data:`pdist.diffusion.VARIANCES` kind, broadcast like ``like``.

    As Improved DDPM does, beta_tilde is the clipped one (the next level's at the
    decoder step, where it is 0), and ``large`` uses it at the decoder step too.
    """
    tr = tr._replace(log_beta_tilde=log_beta_tilde_clipped)
    if kind == "large":
        tr = tr._replace(log_beta=jnp.where(is_decoder, log_beta_tilde_clipped, tr.log_beta))
    return diffusion.bcast(diffusion.log_variance(kind, tr, var_frac), like) * jnp.ones_like(like)


def vlb_term_bpd(
    x: Array, z_t: Array, pred: Prediction, tr: Transition, log_var: Array, is_decoder: Array, cdf: str = "exact"
) -> Array:
    """One term of the bound for the step t -> s, per example, in bits/dim.

    KL(q(z_s | z_t, x) || N(mu(x-hat), Sigma)) for s > 0, and
    ``-log p(x | z_t)`` with the discretized decoder at s = 0 (mean x-hat; ``cdf``: :data:`CDFS`).
    """
    mean_model = diffusion.posterior_mean(tr, pred.x, z_t)
    mean_true = diffusion.posterior_mean(tr, x, z_t)
    logvar_true = diffusion.bcast(tr.log_beta_tilde, x)
    # At the decoder step logvar_true is -inf; keep it finite so the unused branch has no NaN.
    kl = normal_kl(mean_true, jnp.maximum(logvar_true, -60.0), mean_model, log_var)
    nll = -discretized_gaussian_log_likelihood(x, mean=mean_model, log_scale=0.5 * log_var, cdf=cdf)
    return jnp.where(is_decoder, bits_per_dim(nll), bits_per_dim(kl))
