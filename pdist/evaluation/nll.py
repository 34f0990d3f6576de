"""Negative log-likelihood in bits/dim: the variational bound over a T-step grid, and its continuous-time limit.

**Discrete-time models** follow the Improved-DDPM protocol (Nichol & Dhariwal
2021, Sec. 3 and their ``calc_bpd_loop``): for each test image, every level
``i = 1..T`` of the model's own grid ``t_i = i / T`` contributes one term,
evaluated at its own noisy ``z_{t_i} ~ q(z_{t_i} | x)``:

* ``L_i = KL(q(z_{i-1} | z_i, x) || p(z_{i-1} | z_i))`` for ``i >= 2``;
* ``L_1 = -log p(x | z_1)``, the 256-bin discretized Gaussian decoder;
* ``L_prior = KL(q(z_1 | x) || N(0, I))`` at ``t = 1``.

**Continuous-time models** (Kingma, Salimans, Poole & Ho 2021, "Variational
Diffusion Models", Sec. 3-4): the decoder sits at a fixed level, the schedule's
lowest time ``t_0 = t_min`` (logSNR 20 on the clipped cosine), so a larger T
refines the grid over a fixed range and the bound tightens towards the
continuous-time limit instead of moving its lowest level:

* ``L_dec = -log p(x | z_{t_0})``, with ``p(x | z_0)`` the 256-bin
  discretization of ``N(z_0 / alpha_0, sigma_0^2 / alpha_0^2)`` (no network;
  at logSNR 20 it costs almost nothing);
* ``L_i = KL(q(z_{t_{i-1}} | z_{t_i}, x) || p(z_{t_{i-1}} | z_{t_i}))``,
  i = 1..T, on the grid uniform in logSNR from ``lambda(t_0)`` to
  ``lambda(1)``; with the ``small`` variance,
  ``(SNR(t_{i-1}) - SNR(t_i)) |x - x_hat|^2 / 2``. The limit does not depend
  on the grid (VDM, Eq. 15), but the grid decides how fast a finite T gets
  there: uniform in t, the clipped cosine's first step spans logSNR 8.8 to 20
  at T = 125, where a denoiser's error at the scale of the noise costs
  ``SNR(t_0) / SNR(t_1)`` per dimension (thousands of bits/dim);
* :func:`continuous_bound`: T -> infinity, ``L_inf = 1/2 int e^lambda
  |x - x_hat(z_lambda)|^2 dlambda`` over ``[lambda(1), lambda(t_0)]``,
  estimated by Monte Carlo with stratified logSNRs (uniform in logSNR, where
  the integrand is nearly flat; an unbiased estimate with a standard error).

``p``'s variance is the learned one when the model has it, else ``small``
(beta-tilde) or ``large`` (beta). ``clip_x`` clips x-hat to [-1, 1] first, as
Improved DDPM's ``image_nll`` does by default.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from pdist import diffusion, vlb
from pdist.diffusion import Prediction
from pdist.schedules import Schedule, times_at_logsnr

Array = jax.Array


def _predict(denoise_fn: Callable, z: Array, t: Array, logsnr: Array, clip_x: bool) -> Prediction:
    out = denoise_fn(z, t)
    pred = out if isinstance(out, Prediction) else diffusion.from_x(out, z, logsnr)
    return diffusion.clip_prediction(pred, z, logsnr) if clip_x else pred


def vlb_terms(
    denoise_fn: Callable,
    schedule: Schedule,
    x: Array,
    key: Array,
    *,
    num_timesteps: int,
    model_variance: str = "small",
    clip_x: bool = False,
    cdf: str = "exact",
) -> dict:
    """The T-step bound for a batch ``x`` [B, ...] in bits/dim.

    Returns ``prior`` [B], ``terms`` and ``total`` [B] = prior + the sum of the
    terms. ``terms`` has a row per term, the decoder first: [T, B] for a
    discrete model (row ``i - 1`` is level i, row 0 its decoder L_1), [T + 1, B]
    for a continuous one (row 0 the fixed-level decoder, row i the KL into
    grid time ``t_{i-1}``). ``denoise_fn(z, t)`` returns x-hat or a
    :class:`~pdist.diffusion.Prediction`; the noise of term i is drawn from
    ``fold_in(key, i)``; ``cdf`` is the decoder's (:data:`pdist.vlb.CDFS`). Traceable: jit it with the
    parameters as an argument.
    """
    T, batch = int(num_timesteps), x.shape[0]
    prior = vlb.prior_bpd(x, schedule.logsnr(jnp.ones((batch,), jnp.float32)))
    if schedule.num_timesteps is None:
        terms = _continuous_terms(denoise_fn, schedule, x, key, T, model_variance, clip_x, cdf)
        return {"prior": prior, "terms": terms, "total": prior + terms.sum(axis=0)}

    def level(_, i):
        eps = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
        return None, level_term(denoise_fn, schedule, x, eps, i, T, model_variance, clip_x, cdf)

    _, terms = jax.lax.scan(level, None, jnp.arange(1, T + 1))
    return {"prior": prior, "terms": terms, "total": prior + terms.sum(axis=0)}


def level_term(
    denoise_fn: Callable,
    schedule: Schedule,
    x: Array,
    eps: Array,
    i,
    T: int,
    model_variance: str,
    clip_x: bool,
    cdf: str = "exact",
) -> Array:
    """Term ``L_i`` [B] of a discrete model's T-step bound in bits/dim (the decoder ``L_1`` at i = 1), at
    ``z_{t_i}`` diffused from ``x`` with noise ``eps``: one row of :func:`vlb_terms`. ``i``: a level, or one
    per example [B]."""
    t = jnp.full((x.shape[0],), i, jnp.float32) / T
    logsnr = schedule.logsnr(t)
    z = diffusion.diffuse(x, eps, logsnr)
    pred = _predict(denoise_fn, z, t, logsnr, clip_x)
    tr, log_beta_tilde, is_decoder = vlb.step_transition(schedule, t, T)
    log_var = vlb.model_log_variance(model_variance, tr, log_beta_tilde, is_decoder, pred.var_frac, x)
    return vlb.vlb_term_bpd(x, z, pred, tr, log_var, is_decoder, cdf)


def decoder_bpd(schedule: Schedule, x: Array, key: Array, cdf: str = "exact") -> Array:
    """``-log p(x | z_{t_min})`` per example in bits/dim: the fixed-level decoder of a continuous-time model."""
    t0 = jnp.full((x.shape[0],), schedule.t_min, jnp.float32)
    logsnr = schedule.logsnr(t0)
    alpha, _ = diffusion.alpha_sigma_from_logsnr(logsnr)
    z = diffusion.diffuse(x, jax.random.normal(key, x.shape, x.dtype), logsnr)
    mean = z / diffusion.bcast(alpha, z)
    log_scale = diffusion.bcast(-0.5 * logsnr, z)  # log(sigma / alpha)
    return vlb.bits_per_dim(-vlb.discretized_gaussian_log_likelihood(x, mean=mean, log_scale=log_scale, cdf=cdf))


def _logsnr_range(schedule: Schedule) -> tuple[Array, Array]:
    """``(lambda(1), lambda(t_min))``: the logSNR range of a continuous model's bound."""
    return schedule.logsnr(jnp.float32(1.0)), schedule.logsnr(jnp.float32(schedule.t_min))


def _continuous_terms(denoise_fn, schedule, x, key, T, model_variance, clip_x, cdf) -> Array:
    batch = x.shape[0]
    lam_1, lam_0 = _logsnr_range(schedule)
    # The levels are their logSNRs; the network gets the time of each (the bisection's float32 time can
    # coincide for neighbouring levels where logSNR is steep in t, the logSNRs never do).
    lams = lam_0 + (lam_1 - lam_0) * jnp.arange(T + 1, dtype=jnp.float32) / T
    times = times_at_logsnr(schedule, lams)

    def level(_, i):
        t = jnp.full((batch,), times[i], jnp.float32)
        logsnr = jnp.full((batch,), lams[i], jnp.float32)
        eps = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
        z = diffusion.diffuse(x, eps, logsnr)
        pred = _predict(denoise_fn, z, t, logsnr, clip_x)
        tr = diffusion.transition(jnp.full((batch,), lams[i - 1], jnp.float32), logsnr)
        no_decoder = jnp.zeros((batch,), bool)
        log_var = vlb.model_log_variance(model_variance, tr, tr.log_beta_tilde, no_decoder, pred.var_frac, x)
        return None, vlb.vlb_term_bpd(x, z, pred, tr, log_var, no_decoder)

    _, kls = jax.lax.scan(level, None, jnp.arange(1, T + 1))
    return jnp.concatenate([decoder_bpd(schedule, x, jax.random.fold_in(key, 0), cdf)[None], kls])


def continuous_bound(
    denoise_fn: Callable,
    schedule: Schedule,
    x: Array,
    key: Array,
    *,
    num_draws: int,
    clip_x: bool = False,
    cdf: str = "exact",
) -> dict:
    """The continuous-time bound (T -> infinity) for a batch ``x`` [B, ...] in bits/dim, by Monte Carlo.

    Each example gets ``num_draws`` stratified logSNRs ``lambda_k = lambda(t_0) + (lambda(1) - lambda(t_0))
    ((u + k / K) mod 1)`` (one uniform u per example) with their own noise: ``diffusion`` [B] is the unbiased
    estimate of the diffusion loss, ``total`` [B] = prior + decoder + diffusion. Only for continuous-time
    schedules.
    """
    if schedule.num_timesteps is not None:
        raise ValueError("The continuous-time bound needs a continuous-time schedule; use vlb_terms for T levels.")
    batch, K = x.shape[0], int(num_draws)
    lam_1, lam_0 = _logsnr_range(schedule)
    k_u, k_dec, k_eps = jax.random.split(key, 3)
    u = jax.random.uniform(k_u, (batch,))

    def draw(_, k):
        logsnr = lam_0 + (lam_1 - lam_0) * jnp.mod(u + k / K, 1.0)
        t = times_at_logsnr(schedule, logsnr)  # what the network is told, to float32 precision
        z = diffusion.diffuse(x, jax.random.normal(jax.random.fold_in(k_eps, k), x.shape, x.dtype), logsnr)
        pred = _predict(denoise_fn, z, t, logsnr, clip_x)
        weight = 0.5 * (lam_0 - lam_1) * jnp.exp(logsnr)  # the density of lambda is 1 / (lam_0 - lam_1)
        return None, vlb.bits_per_dim(diffusion.bcast(weight, x) * (x - pred.x) ** 2)

    _, per_draw = jax.lax.scan(draw, None, jnp.arange(K))
    prior = vlb.prior_bpd(x, schedule.logsnr(jnp.ones((batch,), jnp.float32)))
    decoder = decoder_bpd(schedule, x, k_dec, cdf)
    diffusion_loss = per_draw.mean(axis=0)
    return {"prior": prior, "decoder": decoder, "diffusion": diffusion_loss, "total": prior + decoder + diffusion_loss}
