"""Parameterizations and one-step transitions of the Gaussian diffusion.

Conventions (docs/architecture.md): ``z_t = alpha_t x + sigma_t eps`` with
``alpha^2 + sigma^2 = 1``; ``v = alpha eps - sigma x``, so ``x = alpha z - sigma v``
and ``eps = sigma z + alpha v``. Every conversion returns x-hat and eps-hat
together (a :class:`Prediction`), so no caller divides by a vanishing alpha or
sigma. Per-example scalars (alpha, sigma, logsnr: shape [B]) broadcast from the
left against NHWC (or any [B, ...]) arrays.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array

PARAMETERIZATIONS = ("eps", "x", "v", "both")
WEIGHTINGS = ("constant", "snr", "truncated_snr", "snr_plus_one")
VARIANCES = ("small", "large", "learned")  # of the reverse step p(z_s | z_t): beta_tilde, beta, Improved DDPM's


class Prediction(NamedTuple):
    """What a denoiser predicts at (z_t, t).

    x: x-hat, eps: eps-hat (consistent: ``z = alpha x + sigma eps``),
    var_frac: Improved-DDPM learned-variance fraction in [0, 1] (or None).
    """

    x: Array
    eps: Array
    var_frac: Array | None = None


def bcast(a: Array, like: Array) -> Array:
    """Reshapes a per-example [B] (or scalar) array to broadcast against ``like``."""
    a = jnp.asarray(a)
    return a.reshape(a.shape + (1,) * (like.ndim - a.ndim))


def alpha_sigma_from_logsnr(logsnr: Array) -> tuple[Array, Array]:
    return jnp.sqrt(jax.nn.sigmoid(logsnr)), jnp.sqrt(jax.nn.sigmoid(-logsnr))


def diffuse(x: Array, eps: Array, logsnr: Array) -> Array:
    """Forward process sample ``z_t = alpha x + sigma eps``."""
    alpha, sigma = alpha_sigma_from_logsnr(logsnr)
    return bcast(alpha, x) * x + bcast(sigma, x) * eps


def output_channels(channels: int, parameterization: str, learned_variance: bool) -> int:
    """Number of network output channels for data with ``channels`` channels."""
    check_parameterization(parameterization)
    heads = 2 if parameterization == "both" else 1
    return channels * (heads + int(learned_variance))


def check_parameterization(parameterization: str) -> None:
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"Unknown parameterization {parameterization!r}; choose one of {list(PARAMETERIZATIONS)}.")


def predict(
    output: Array,
    z: Array,
    logsnr: Array,
    *,
    parameterization: str,
    learned_variance: bool = False,
    clip_x: bool = False,
) -> Prediction:
    """Turns a raw network output [B, ..., k*C] into a :class:`Prediction`.

    Channel layout (last axis): the mean head(s) first (``both``: x then eps),
    then, with ``learned_variance``, one ``v_var`` channel per data channel,
    mapped to ``var_frac = (v_var + 1) / 2`` (Improved DDPM, Eq. 15).

    ``both`` blends the heads with ``w = sigmoid(-logsnr) = sigma^2``
    (Salimans & Ho 2022, Sec. 4): ``x = w x~ + (1 - w)(z - sigma eps~)/alpha``,
    written division-free as ``sigma^2 x~ + alpha (z - sigma eps~)``.
    With ``clip_x``, x-hat is clipped to [-1, 1] and eps recomputed from it.
    """
    check_parameterization(parameterization)
    channels = z.shape[-1]
    var_frac = None
    if learned_variance:
        output, v_var = output[..., :-channels], output[..., -channels:]
        var_frac = (v_var + 1.0) / 2.0
    alpha, sigma = alpha_sigma_from_logsnr(logsnr)
    alpha, sigma = bcast(alpha, z), bcast(sigma, z)
    if parameterization == "eps":
        eps = output
        x = (z - sigma * eps) / alpha
    elif parameterization == "x":
        x = output
        eps = (z - alpha * x) / sigma
    elif parameterization == "v":
        x = alpha * z - sigma * output
        eps = sigma * z + alpha * output
    else:
        x_head, eps_head = output[..., :channels], output[..., channels:]
        x = sigma**2 * x_head + alpha * (z - sigma * eps_head)
        eps = sigma * (z - alpha * x_head) + alpha**2 * eps_head
    pred = Prediction(x, eps, var_frac)
    return clip_prediction(pred, z, logsnr) if clip_x else pred


def consistency_output(
    pred: Prediction, z: Array, t: Array, logsnr: Array, *, t_min: float, logsnr_min: Array, sigma_data: float
) -> Prediction:
    """The consistency function of Song et al. (2023, Sec. 3) built on a network's prediction ``pred``.

    In the variance-exploding coordinates of the probability-flow ODE, ``x_s = z / alpha`` at
    ``s = sigma / alpha = exp(-logsnr / 2)``, the function is
    ``f(z, t) = c_skip(t) z / alpha + (1 - c_skip(t)) x-hat(z, t)`` with the paper's
    ``c_skip = sigma_data^2 / ((s - s_min)^2 + sigma_data^2)``, ``s_min = exp(-logsnr_min / 2)``, the
    schedule's at ``t_min``. The paper's ``c_out F``
    is ``(1 - c_skip) x-hat`` here: the network's x-hat, whatever its parameterization (v, x, eps, both), is
    already in data units. At ``t <= t_min`` (the clean end of the consistency discretization) ``c_skip`` is 1
    and ``f = z / alpha`` bit for bit: the identity on the ODE's state (``f(x_eps, eps) = x_eps``). eps-hat is
    recomputed from f, so that every sampler reads one consistent pair.
    """
    alpha, sigma = alpha_sigma_from_logsnr(logsnr)
    s = jnp.exp(-0.5 * logsnr)
    s_min = jnp.exp(-0.5 * jnp.asarray(logsnr_min, jnp.float32))
    c_skip = sigma_data**2 / ((s - s_min) ** 2 + sigma_data**2)
    at_end = jnp.asarray(t) <= t_min
    c_skip = jnp.where(at_end, 1.0, c_skip)
    x_ve = z / bcast(alpha, z)
    x = bcast(c_skip, z) * x_ve + bcast(jnp.where(at_end, 0.0, 1.0 - c_skip), z) * pred.x
    return Prediction(x, (z - bcast(alpha, z) * x) / bcast(sigma, z), pred.var_frac)


def clip_prediction(pred: Prediction, z: Array, logsnr: Array, keep_eps: bool = False) -> Prediction:
    """Clips x-hat to [-1, 1] and recomputes eps-hat = (z - alpha x) / sigma (OpenAI's and pdist's clipping);
    ``keep_eps``: eps-hat stays the unclipped prediction's (diffusers' schedulers' ``clip_sample``, whose DDIM
    step then leaves the pair inconsistent: ``alpha_s clip(x-hat) + sigma_s eps-hat``)."""
    alpha, sigma = alpha_sigma_from_logsnr(logsnr)
    x = jnp.clip(pred.x, -1.0, 1.0)
    eps = pred.eps if keep_eps else (z - bcast(alpha, z) * x) / bcast(sigma, z)
    return Prediction(x, eps, pred.var_frac)


def from_x(x: Array, z: Array, logsnr: Array, var_frac: Array | None = None) -> Prediction:
    """Completes an x-hat into a Prediction: ``eps = (z - alpha x) / sigma``."""
    alpha, sigma = alpha_sigma_from_logsnr(logsnr)
    return Prediction(x, (z - bcast(alpha, z) * x) / bcast(sigma, z), var_frac)


def to_v(pred: Prediction, logsnr: Array) -> Array:
    """``v = alpha eps - sigma x`` (Salimans & Ho 2022, Sec. 4)."""
    alpha, sigma = alpha_sigma_from_logsnr(logsnr)
    return bcast(alpha, pred.x) * pred.eps - bcast(sigma, pred.x) * pred.x


def check_weighting(weighting: str) -> None:
    if weighting not in WEIGHTINGS:
        raise ValueError(f"Unknown loss weighting {weighting!r}; choose one of {list(WEIGHTINGS)}.")


def loss_weight(logsnr: Array, weighting: str) -> Array:
    """Weight on the x-space squared error (Salimans & Ho 2022, Sec. 4).

    ``constant``: x-MSE; ``snr``: eps-MSE; ``truncated_snr``: max(SNR, 1);
    ``snr_plus_one``: v-MSE.
    """
    check_weighting(weighting)
    if weighting == "constant":
        return jnp.ones_like(logsnr)
    if weighting == "snr":
        return jnp.exp(logsnr)
    if weighting == "truncated_snr":
        return jnp.maximum(jnp.exp(logsnr), 1.0)
    return jnp.exp(logsnr) + 1.0  # snr_plus_one


class Transition(NamedTuple):
    """The Gaussian transition between times s < t, per example.

    ``beta = beta_{t|s} = 1 - alpha_t^2 / alpha_s^2``;
    ``beta_tilde = beta * sigma_s^2 / sigma_t^2`` is the variance of
    ``q(z_s | z_t, x)``, whose mean is ``coef_x * x + coef_z * z_t``.
    Logs are kept so that beta_tilde = 0 (s = clean data) is exact (-inf).
    """

    alpha_s: Array
    sigma_s: Array
    alpha_t: Array
    sigma_t: Array
    log_beta: Array
    log_beta_tilde: Array
    coef_x: Array
    coef_z: Array


def transition(logsnr_s: Array, logsnr_t: Array) -> Transition:
    """Coefficients of the s < t transition, computed stably from log-sigmoids."""
    log_a2_s, log_a2_t = jax.nn.log_sigmoid(logsnr_s), jax.nn.log_sigmoid(logsnr_t)
    log_s2_s, log_s2_t = jax.nn.log_sigmoid(-logsnr_s), jax.nn.log_sigmoid(-logsnr_t)
    log_beta = jnp.log(-jnp.expm1(log_a2_t - log_a2_s))
    log_beta_tilde = log_beta + log_s2_s - log_s2_t
    alpha_s, alpha_t = jnp.exp(0.5 * log_a2_s), jnp.exp(0.5 * log_a2_t)
    coef_x = alpha_s * jnp.exp(log_beta - log_s2_t)
    coef_z = jnp.exp(0.5 * (log_a2_t - log_a2_s) + log_s2_s - log_s2_t)
    return Transition(
        alpha_s=alpha_s,
        sigma_s=jnp.exp(0.5 * log_s2_s),
        alpha_t=alpha_t,
        sigma_t=jnp.exp(0.5 * log_s2_t),
        log_beta=log_beta,
        log_beta_tilde=log_beta_tilde,
        coef_x=coef_x,
        coef_z=coef_z,
    )


def posterior_mean(tr: Transition, x: Array, z_t: Array) -> Array:
    """Mean of ``q(z_s | z_t, x)``: ``coef_x x + coef_z z_t`` (Ho et al. 2020, Eq. 7)."""
    return bcast(tr.coef_x, x) * x + bcast(tr.coef_z, x) * z_t


def log_variance(kind: str, tr: Transition, var_frac: Array | None = None) -> Array:
    """log Sigma of the reverse step p(z_s | z_t) for a variance ``kind`` in :data:`VARIANCES`.

    ``small``: beta_tilde (the posterior's); ``large``: beta_{t|s}; ``learned``:
    Improved DDPM Eq. 15, ``frac log beta + (1 - frac) log beta_tilde`` with the
    denoiser's ``var_frac`` (shaped like the data; the others are per example).
    """
    if kind not in VARIANCES:
        raise ValueError(f"Unknown variance {kind!r}; choose one of {list(VARIANCES)}.")
    if kind == "small":
        return tr.log_beta_tilde
    if kind == "large":
        return tr.log_beta
    if var_frac is None:
        raise ValueError(
            "variance 'learned' needs a denoiser that returns a Prediction with var_frac; "
            "use a learned-variance model or variance 'small'."
        )
    return var_frac * bcast(tr.log_beta, var_frac) + (1.0 - var_frac) * bcast(tr.log_beta_tilde, var_frac)


def ddim_step(pred: Prediction, alpha_s: Array, sigma_s: Array) -> Array:
    """Deterministic DDIM transfer to time s: ``z_s = alpha_s x + sigma_s eps`` (Song et al. 2021a, Eq. 12)."""
    return bcast(alpha_s, pred.x) * pred.x + bcast(sigma_s, pred.x) * pred.eps
