import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pdist import schedules as sc

ALL = [
    sc.CosineLogSNR(),
    sc.CosineLogSNR(-15.0, 12.0),
    sc.LinearVP(),
    sc.LinearBetas(1000),
    sc.LinearBetas(250),
    sc.CosineBetas(4000),
    sc.CosineBetas(1000),
]


@pytest.mark.parametrize("schedule", ALL, ids=repr)
def test_alpha_sigma_unit_circle_and_monotone(schedule):
    t = np.linspace(0.0, 1.0, 1001)
    alpha, sigma = (np.asarray(a, np.float64) for a in schedule.alpha_sigma(t))
    np.testing.assert_allclose(alpha**2 + sigma**2, 1.0, atol=2e-6)
    logsnr = np.asarray(schedule.logsnr(t))
    assert np.all(np.diff(logsnr) < 0)


@pytest.mark.parametrize("lo,hi", [(-20.0, 20.0), (-15.0, 12.0), (-5.0, 3.0)])
def test_cosine_logsnr_ends_hit_clip_values(lo, hi):
    s = sc.CosineLogSNR(lo, hi)
    np.testing.assert_allclose(float(s.logsnr(0.0)), hi, atol=2e-4)
    np.testing.assert_allclose(float(s.logsnr(1.0)), lo, atol=2e-4)
    # Between the ends it is the unclipped cosine: alpha = cos(a t + b).
    a, b = s._ab
    t = np.linspace(0, 1, 11)
    np.testing.assert_allclose(np.asarray(s.alpha(t)), np.cos(a * t + b), atol=1e-6)


@pytest.mark.parametrize("T", [1000, 4000])
def test_iddpm_cosine_first_beta_below_pixel_bin(T):
    betas = sc.CosineBetas(T).betas
    assert np.sqrt(betas[0]) < 1 / 127.5
    assert betas.max() <= 0.999 and np.all(betas > 0)


def test_discrete_tables_match_products_of_betas():
    for s in (sc.LinearBetas(1000), sc.CosineBetas(4000)):
        T = s.num_timesteps
        alphabar = np.cumprod(1.0 - s.betas)
        levels = np.array([1, 2, T // 3, T - 1, T])
        alpha = np.asarray(s.alpha(levels / T), np.float64)
        np.testing.assert_allclose(alpha**2, alphabar[levels - 1], rtol=2e-5, atol=1e-9)
        assert float(s.sigma(0.0)) == 0.0 and s.ends_at_data
    assert not sc.CosineLogSNR().ends_at_data and sc.LinearVP().ends_at_data
    np.testing.assert_allclose(sc.LinearBetas(1000).betas[[0, -1]], [1e-4, 0.02])


def test_time_grids():
    cont = sc.CosineLogSNR()
    np.testing.assert_allclose(sc.time_grid(cont, 4), [1, 0.75, 0.5, 0.25, 0])
    T = 4000
    disc = sc.CosineBetas(T)
    for K in (1, 2, 25, 50, 4000):
        g = sc.time_grid(disc, K, "respaced")
        assert len(g) == K + 1 and g[0] == 1.0 and g[-1] == 0.0 and np.all(np.diff(g) < 0)
        if K > 1:  # Improved DDPM: K evenly spaced over 1..T, rounded
            expected = (np.round(np.linspace(0, T - 1, K)) + 1)[::-1] / T
            np.testing.assert_allclose(g[:-1], expected)
    for schedule in (cont, sc.CosineLogSNR(-12.0, 8.0)):
        g = sc.time_grid(schedule, 8, "logsnr")
        lam = np.asarray(schedule.logsnr(g), np.float64)
        assert g[0] == 1.0 and g[-1] == 0.0
        np.testing.assert_allclose(np.diff(lam), (lam[-1] - lam[0]) / 8, rtol=1e-4)
    g = sc.time_grid(sc.LinearBetas(1000), 10, "ddim_stride")
    np.testing.assert_allclose(g * 1000, [901, 801, 701, 601, 501, 401, 301, 201, 101, 1, 0])


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: sc.time_grid(sc.CosineLogSNR(), 10, "respaced"), "discrete schedule"),
        (lambda: sc.time_grid(sc.LinearBetas(100), 10, "logsnr"), "respaced"),
        (lambda: sc.time_grid(sc.LinearVP(), 10, "logsnr"), "finite logSNR"),
        (lambda: sc.time_grid(sc.LinearBetas(100), 101, "respaced"), "exceeds"),
        (lambda: sc.time_grid(sc.LinearBetas(100), 0), "positive integer"),
        (lambda: sc.time_grid(sc.LinearBetas(100), 10, "log"), "Unknown time grid"),
        (lambda: sc.get_schedule("quadratic"), "Unknown schedule"),
        (lambda: sc.CosineLogSNR(5.0, -5.0), "logsnr_min < logsnr_max"),
        (lambda: sc.LinearBetas(0), "positive integer"),
        (lambda: sc.CosineBetas(1000.0), "positive integer"),
    ],
)
def test_bad_input_is_one_clear_sentence(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize("name,T", [("cosine", 50), ("linear", 1000), ("cosine", 4000)])
def test_discrete_levels_stay_on_their_level_when_xla_fuses_the_lookup(name, T):
    """t = i/T drawn inside a jitted program, s = t - 1/T: logsnr(s) - logsnr(t) is one level's step.

    XLA recomputes t*T per fusion, with and without fused multiply-adds; the
    lookup must not land on a neighbouring level for either rounding."""
    schedule = sc.get_schedule(name, num_timesteps=T)
    key = jax.random.key(7)

    def one_level_gap(key):  # the only output, so XLA fuses everything into it
        t = jax.random.randint(key, (4096,), 2, T + 1).astype(jnp.float32) / T
        return schedule.logsnr(t - 1.0 / T) - schedule.logsnr(t)

    i = np.asarray(jax.random.randint(key, (4096,), 2, T + 1))
    log_ab = schedule.log_alphabar_np[1:]  # levels 1..T
    logsnr = np.concatenate([[np.inf], log_ab - np.log(-np.expm1(log_ab))])  # float64, by level
    np.testing.assert_allclose(jax.jit(one_level_gap)(key), logsnr[i - 1] - logsnr[i], rtol=2e-3, atol=2e-3)
