import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pdist import diffusion


def _data(seed=0, shape=(16, 4, 4, 3)):
    kx, ke, kl = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.uniform(kx, shape, minval=-1, maxval=1)
    eps = jax.random.normal(ke, shape)
    logsnr = jax.random.uniform(kl, shape[:1], minval=-12.0, maxval=12.0)
    return x, eps, logsnr


def _true_output(param, x, eps, logsnr):
    alpha, sigma = diffusion.alpha_sigma_from_logsnr(logsnr)
    alpha, sigma = diffusion.bcast(alpha, x), diffusion.bcast(sigma, x)
    return {
        "eps": eps,
        "x": x,
        "v": alpha * eps - sigma * x,
        "both": jnp.concatenate([x, eps], axis=-1),
    }[param]


@pytest.mark.parametrize("param", diffusion.PARAMETERIZATIONS)
def test_conversions_round_trip(param):
    x, eps, logsnr = _data()
    z = diffusion.diffuse(x, eps, logsnr)
    pred = diffusion.predict(_true_output(param, x, eps, logsnr), z, logsnr, parameterization=param)
    np.testing.assert_allclose(pred.x, x, atol=2e-3 if param == "eps" else 2e-5)
    np.testing.assert_allclose(pred.eps, eps, atol=2e-3 if param == "x" else 2e-5)
    assert pred.var_frac is None


@pytest.mark.parametrize("param", diffusion.PARAMETERIZATIONS)
def test_any_output_gives_a_consistent_pair(param):
    x, eps, logsnr = _data(1)
    z = diffusion.diffuse(x, eps, logsnr)
    out = jax.random.normal(jax.random.key(7), z.shape[:-1] + (diffusion.output_channels(3, param, True),))
    pred = diffusion.predict(out, z, logsnr, parameterization=param, learned_variance=True)
    alpha, sigma = diffusion.alpha_sigma_from_logsnr(logsnr)
    recon = diffusion.bcast(alpha, z) * pred.x + diffusion.bcast(sigma, z) * pred.eps
    np.testing.assert_allclose(recon, z, atol=1e-4)
    np.testing.assert_allclose(pred.var_frac, (out[..., -3:] + 1) / 2, atol=1e-7)


def test_both_heads_follow_the_noise_level():
    x, eps, _ = _data(2)
    z_shape_logsnr = jnp.array([-20.0, 20.0])
    x2, eps2 = x[:2], eps[:2]
    z = diffusion.diffuse(x2, eps2, z_shape_logsnr)
    wrong = jnp.zeros_like(x2)
    # At high noise the x head decides x-hat; at low noise the eps head does.
    pred_xhead = diffusion.predict(jnp.concatenate([x2, wrong], -1), z, z_shape_logsnr, parameterization="both")
    pred_ehead = diffusion.predict(jnp.concatenate([wrong, eps2], -1), z, z_shape_logsnr, parameterization="both")
    # x-hat = sigma^2 x~ + alpha (z - sigma eps~): off by alpha |z| <= 4.5e-5 * 4 at the ends.
    np.testing.assert_allclose(pred_xhead.x[0], x2[0], atol=2e-4)
    np.testing.assert_allclose(pred_ehead.x[1], x2[1], atol=2e-4)


def test_clipping_recomputes_eps():
    x, eps, logsnr = _data(3)
    z = diffusion.diffuse(x, eps, logsnr)
    pred = diffusion.predict(3.0 * x, z, logsnr, parameterization="x", clip_x=True)
    assert float(jnp.max(jnp.abs(pred.x))) <= 1.0
    alpha, sigma = diffusion.alpha_sigma_from_logsnr(logsnr)
    recon = diffusion.bcast(alpha, z) * pred.x + diffusion.bcast(sigma, z) * pred.eps
    np.testing.assert_allclose(recon, z, atol=1e-4)


def test_snr_weight_is_eps_mse_and_snr_plus_one_is_v_mse():
    x, eps, logsnr = _data(4)
    z = diffusion.diffuse(x, eps, logsnr)
    x_hat = x + 0.1 * jax.random.normal(jax.random.key(9), x.shape)
    pred = diffusion.from_x(x_hat, z, logsnr)
    x_err = jnp.mean((x - x_hat) ** 2, axis=(1, 2, 3))
    eps_err = jnp.mean((eps - pred.eps) ** 2, axis=(1, 2, 3))
    v_true, v_hat = diffusion.to_v(diffusion.Prediction(x, eps), logsnr), diffusion.to_v(pred, logsnr)
    v_err = jnp.mean((v_true - v_hat) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(diffusion.loss_weight(logsnr, "snr") * x_err, eps_err, rtol=2e-3)
    np.testing.assert_allclose(diffusion.loss_weight(logsnr, "snr_plus_one") * x_err, v_err, rtol=2e-3)
    w = diffusion.loss_weight(logsnr, "truncated_snr")
    np.testing.assert_allclose(w, np.maximum(np.exp(logsnr), 1.0), rtol=1e-6)


def test_transition_matches_gaussian_conditioning():
    """q(z_s | z_t, x) from the joint Gaussian, computed independently in float64."""
    rng = np.random.default_rng(0)
    lam_s, lam_t = np.array([3.0, -1.0, 8.0]), np.array([1.0, -4.0, 7.5])
    x, z_t = rng.normal(size=3), rng.normal(size=3)
    a2 = lambda lam: 1 / (1 + np.exp(-lam))  # noqa: E731
    alpha_s, var_s = np.sqrt(a2(lam_s)), 1 - a2(lam_s)
    a_ts = np.sqrt(a2(lam_t) / a2(lam_s))
    beta = 1 - a_ts**2
    post_var = 1 / (1 / var_s + a_ts**2 / beta)
    post_mean = post_var * (alpha_s * x / var_s + a_ts * z_t / beta)
    tr = diffusion.transition(jnp.asarray(lam_s, jnp.float32), jnp.asarray(lam_t, jnp.float32))
    np.testing.assert_allclose(np.exp(tr.log_beta), beta, rtol=1e-4)
    np.testing.assert_allclose(np.exp(tr.log_beta_tilde), post_var, rtol=1e-4)
    mean = diffusion.posterior_mean(tr, jnp.asarray(x, jnp.float32), jnp.asarray(z_t, jnp.float32))
    np.testing.assert_allclose(mean, post_mean, rtol=1e-4, atol=1e-6)
    # Onto clean data (logsnr_s = inf): beta_tilde = 0 and the mean is x itself.
    tr0 = diffusion.transition(jnp.inf, 2.0)
    assert float(jnp.exp(tr0.log_beta_tilde)) == 0.0
    np.testing.assert_allclose([float(tr0.coef_x), float(tr0.coef_z)], [1.0, 0.0], atol=1e-6)


def test_unknown_names_fail_clearly():
    with pytest.raises(ValueError, match="Unknown parameterization"):
        diffusion.check_parameterization("score")
    with pytest.raises(ValueError, match="Unknown loss weighting"):
        diffusion.loss_weight(jnp.zeros(2), "min_snr")
