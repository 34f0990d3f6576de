import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy.stats import norm

from pdist import diffusion, vlb
from pdist import schedules as sc
from pdist.diffusion import Prediction
from pdist.importance import LossAwareSampler


def test_discretized_decoder_bins_sum_to_one_and_match_scipy():
    centres = -1.0 + 2.0 * jnp.arange(256) / 255.0
    for mean, log_scale in [(0.0, -3.0), (0.93, -6.0), (-1.4, 0.5), (0.2, -9.0)]:
        logp = vlb.discretized_gaussian_log_likelihood(centres, mean=mean, log_scale=log_scale)
        np.testing.assert_allclose(float(jnp.sum(jnp.exp(logp))), 1.0, atol=1e-5)
        # A middle bin against SciPy's CDF, in float64.
        k = 128
        lo, hi = (
            (float(centres[k]) - 1 / 255 - mean) / math.exp(log_scale),
            (float(centres[k]) + 1 / 255 - mean) / math.exp(log_scale),
        )
        expected = norm.cdf(hi) - norm.cdf(lo)
        if expected > 1e-30:
            np.testing.assert_allclose(float(jnp.exp(logp[k])), expected, rtol=1e-3)


def test_kl_terms_vanish_when_model_matches_posterior():
    schedule = sc.CosineBetas(1000)

    @jax.jit  # one program (run eagerly, every operation compiles on its own)
    def terms():
        x = jax.random.uniform(jax.random.key(0), (8, 4, 4, 3), minval=-1, maxval=1)
        t = jnp.arange(2, 10).astype(jnp.float32) * 100 / 1000
        z = diffusion.diffuse(x, jax.random.normal(jax.random.key(1), x.shape), schedule.logsnr(t))
        tr, lbt, is_decoder = vlb.step_transition(schedule, t, 1000)
        exact = diffusion.from_x(x, z, schedule.logsnr(t))
        log_var = vlb.model_log_variance("small", tr, lbt, is_decoder, None, x)
        wrong = Prediction(x + 0.1, exact.eps)
        return is_decoder, tuple(vlb.vlb_term_bpd(x, z, p, tr, log_var, is_decoder) for p in (exact, wrong))

    is_decoder, (exact, wrong) = terms()
    assert not bool(jnp.any(is_decoder))
    np.testing.assert_allclose(exact, 0.0, atol=1e-5)
    assert float(jnp.min(wrong)) > 0


def test_decoder_term_and_prior():
    schedule = sc.LinearBetas(1000)
    x = (jnp.round((jax.random.uniform(jax.random.key(2), (4, 8)) + 1) * 127.5) / 127.5 - 1).clip(-1, 1)
    t = jnp.full((4,), 1 / 1000)
    z = diffusion.diffuse(x, jnp.zeros_like(x), schedule.logsnr(t))
    tr, lbt, is_decoder = vlb.step_transition(schedule, t, 1000)
    assert bool(jnp.all(is_decoder))
    # The clipped beta_tilde at level 1 is level 2's, as in Improved DDPM.
    b = schedule.betas
    np.testing.assert_allclose(np.exp(np.asarray(lbt)), b[1] * b[0] / (1 - (1 - b[0]) * (1 - b[1])), rtol=1e-3)
    log_var = vlb.model_log_variance("small", tr, lbt, is_decoder, None, x)
    nll = vlb.vlb_term_bpd(x, z, Prediction(x, jnp.zeros_like(x)), tr, log_var, is_decoder)
    # Mean on the bin centre: P = Phi(h / sd) - Phi(-h / sd), the edge bins open-ended.
    sd, h, xs = np.exp(0.5 * np.asarray(lbt)[:, None]), 1 / 255, np.asarray(x)
    p = np.where(np.abs(xs) > 1 - h, norm.cdf(h / sd), norm.cdf(h / sd) - norm.cdf(-h / sd))
    np.testing.assert_allclose(nll, np.mean(-np.log2(p), axis=1), rtol=1e-4)
    # Prior KL in closed form: 0.5 (alpha^2 x^2 + sigma^2 - 1 - log sigma^2) nats per dim.
    lam = jnp.full((4,), -10.0)
    a2, s2 = 1 / (1 + np.exp(10.0)), 1 / (1 + np.exp(-10.0))
    expected = np.mean(0.5 * (a2 * np.asarray(x) ** 2 + s2 - 1 - np.log(s2)), axis=1) / np.log(2)
    np.testing.assert_allclose(vlb.prior_bpd(x, lam), expected, atol=1e-7)  # float32 cancellation


def test_importance_sampler_is_uniform_until_full_then_proportional():
    sampler = LossAwareSampler(num_timesteps=5, history=3, uniform_prob=0.0)
    state = sampler.init()
    np.testing.assert_allclose(sampler.probabilities(state), 0.2)
    levels = jnp.array([1, 2, 3, 4, 5] * 3 + [5])
    losses = jnp.array([1.0, 2.0, 3.0, 4.0, 5.0] * 3 + [50.0])
    state = jax.jit(sampler.update)(state, levels, losses)
    np.testing.assert_array_equal(state.counts, 3)
    np.testing.assert_allclose(state.history[4], [5.0, 5.0, 50.0])  # oldest value dropped
    w = np.sqrt(np.mean(np.asarray(state.history) ** 2, axis=1))
    np.testing.assert_allclose(sampler.probabilities(state), w / w.sum(), rtol=1e-6)


def test_importance_weighted_estimator_is_unbiased():
    T = 50
    sampler = LossAwareSampler(num_timesteps=T, history=10)
    table = jnp.exp(jnp.linspace(-3, 3, T)) * (1 + 0.5 * jnp.sin(jnp.arange(T)))  # fixed per-t losses
    state = sampler.init()
    levels = jnp.repeat(jnp.arange(1, T + 1), 10)
    state = sampler.update(state, levels, table[levels - 1] * (1 + 0.1 * jnp.cos(levels)))
    p = sampler.probabilities(state)
    assert float(jnp.max(p) / jnp.min(p)) > 10  # really non-uniform
    exact = jnp.sum(p * table / (T * p))
    np.testing.assert_allclose(float(exact), float(jnp.mean(table)), rtol=1e-5)
    draws, weights = jax.jit(sampler.sample, static_argnums=2)(state, jax.random.key(3), 200_000)
    vals = np.asarray(weights * table[draws - 1])
    assert abs(vals.mean() - float(jnp.mean(table))) < 4 * vals.std() / np.sqrt(len(vals))
