"""The DPM-OT expressway (pdist.ot) against exact answers: 1-D cells at the normal quantiles, a 2-D product
grid's map is the product of the 1-D maps, equal cell masses, the solved map's least cost among maps onto the uniform targets, the reference's Adam, the
chunked assignment, and sampling from t' that reproduces the oracle's exact flow."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import one_sentence, run_in_process
from jax.scipy.special import ndtri
from scipy.stats import norm

from pdist import expressway, oracles, ot
from pdist import schedules as sc
from pdist.errors import ConfigError


def quantile_grid(m: int, dim: int):
    """The prior as a deterministic source: the product grid of the normal's quantiles (i + 1/2) / m, m**dim
    points. The solver's gradient is then exact up to the grid's resolution, with no Monte-Carlo noise, so the
    test measures the dual solution's geometry rather than sampling error."""
    q = ndtri((jnp.arange(m) + 0.5) / m)
    grid = jnp.stack(jnp.meshgrid(*[q] * dim, indexing="ij"), -1).reshape(-1, dim)
    return lambda key, n, d: grid


def test_the_chunked_assignment_is_the_argmax_over_all_targets():
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    x, y, h = jax.random.normal(k1, (300, 6)), jax.random.normal(k2, (50, 6)), jax.random.normal(k3, (50,))
    expected = np.argmax(np.asarray(x) @ np.asarray(y).T + np.asarray(h), axis=1)
    for chunk in (7, 50, 64):
        np.testing.assert_array_equal(np.asarray(ot.assign(x, y, h, chunk=chunk)), expected)


def test_targets_split_over_four_devices_give_the_one_device_assignment_and_solve(four_devices):
    """103 targets over 4 devices (padded to 104 with rows that never win): every assignment equals one device's,
    a tie between rows on two devices goes to the lower index as one argmax would, and five solver steps give
    bit-identical potentials (the cell counts are integers, so nothing depends on the reduction order)."""
    result = four_devices["ot"]
    assert result["devices"] == 4 and result["rows_per_device"] == [26] * 4
    assert result["assign_mismatch"] == 0 and result["assign_rows"] == 102
    assert result["ties_to_51"] > 0 and result["ties_to_52"] == 0
    assert result["solve_max_diff"] == 0.0 and result["solve_history_equal"]


def test_the_solved_map_costs_least_among_maps_onto_the_uniform_targets():
    """With the solver's potentials every cell holds mass 1/N, so the map and every relabelling of its cells
    (cell i sent to target pi(i)) push the prior onto the uniform measure on the targets; the OT map must
    cost least of them, and it is the optimum an exact assignment of 1,024 prior points to the targets (each taken
    equally often) estimates, within 5% (measured 2.4% apart)."""
    from scipy.optimize import linear_sum_assignment

    n = 16
    y = np.asarray(jax.random.normal(jax.random.key(1), (n, 2)), np.float32)
    sol = ot.solve(y, jax.random.key(2), lr=0.05, samples=160_000, batch=160_000, tol=1e-3, max_steps=1000,
                   source=quantile_grid(400, 2))  # fmt: skip
    assert sol.converged, (sol.steps, sol.grad_norm)
    x = np.asarray(jax.random.normal(jax.random.key(3), (200_000, 2)))
    index = np.asarray(ot.assign(jnp.asarray(x), jnp.asarray(y), jnp.asarray(sol.potentials)))
    np.testing.assert_allclose(np.bincount(index, minlength=n) / len(x), 1 / n, rtol=0.03)
    cost = lambda cells: float(np.mean(np.sum((x - y[cells]) ** 2, axis=1)))  # noqa: E731
    best = cost(index)
    relabelled = [cost(np.random.default_rng(s).permutation(n)[index]) for s in range(50)]
    swaps = [cost(np.where(index == i, j, np.where(index == j, i, index))) for i in range(n) for j in range(i)]
    assert best < min(relabelled) and best < min(swaps), (best, min(relabelled), min(swaps))
    points = x[:1024]  # the empirical problem: 1,024 points, each target 64 times
    rows, cols = linear_sum_assignment(np.sum((points[:, None] - np.repeat(y, 64, axis=0)[None]) ** 2, axis=2))
    empirical = float(np.mean(np.sum((points[rows] - np.repeat(y, 64, axis=0)[cols]) ** 2, axis=1)))
    assert best == pytest.approx(empirical, rel=0.05), (empirical, best)


def test_the_solver_steps_are_the_references_adam_without_bias_correction():
    """Five steps on a deterministic source (the masses depend on h only) against the reference's update
    written out: m <- 0.9 m + 0.1 g, v <- 0.999 v + 0.001 g^2 from zero, h <- h - lr m / (sqrt(v) + 1e-8),
    h at mean zero (cognaclee/DPM-OT, ot_utils/optimal_transport.py). optax's bias-corrected Adam is shown
    to differ, so the comparison can fail."""
    y = np.linspace(-1.4, 1.4, 8)[:, None].astype(np.float32) + np.float32(0.1) * np.arange(8)[:, None] ** 0.5
    source, lr, steps = quantile_grid(4_000, 1), 0.1, 5
    sol = ot.solve(y, jax.random.key(0), lr=lr, samples=4_000, batch=4_000, tol=0.0, max_steps=steps, source=source)

    def reference(debias: bool):
        h, m, v, norms = np.zeros(8, np.float64), np.zeros(8), np.zeros(8), []
        for k in range(1, steps + 1):
            masses = np.asarray(ot.cell_masses(jax.random.key(k), jnp.asarray(y), jnp.asarray(h, jnp.float32),
                                               source=source, batch=4_000, num_batches=1), np.float64)  # fmt: skip
            g = masses - 1 / 8
            m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
            mh, vh = (m / (1 - 0.9**k), v / (1 - 0.999**k)) if debias else (m, v)
            h = h - lr * mh / (np.sqrt(vh) + 1e-8)
            h, norms = h - h.mean(), norms + [float(np.linalg.norm(g))]
        return h, norms

    h, norms = reference(debias=False)
    np.testing.assert_allclose(sol.potentials, h, atol=1e-5)
    np.testing.assert_allclose(sol.history, norms, rtol=1e-5)
    corrected, _ = reference(debias=True)
    assert np.abs(corrected - h).max() > 0.05, np.abs(corrected - h).max()


def test_targets_on_a_discrete_schedule_are_noised_at_the_level_sampling_starts_from():
    """On T = 10 levels, t' = 0.43 starts the sampler at level 4 (t = 0.4): the targets are noised there, the
    same noise scaled by that level's alpha and sigma (computed here from its logSNR)."""
    schedule, t = sc.get_schedule("cosine", num_timesteps=10), 0.43
    x, key = np.full((2, 3), 0.5, np.float32), jax.random.key(4)
    y = ot.targets_from(schedule, x, key, t)
    eps = np.asarray(jax.random.normal(key, (2, 3), jnp.float32))
    logsnr = float(schedule.logsnr(jnp.float32(0.4)))
    alpha, sigma = np.sqrt(1 / (1 + np.exp(-logsnr))), np.sqrt(1 / (1 + np.exp(logsnr)))
    np.testing.assert_allclose(y, alpha * x + sigma * eps, rtol=1e-5)
    assert sc.start_time(schedule, t) == pytest.approx(0.4)
    continuous = ot.targets_from(sc.CosineLogSNR(), x, key, t)  # continuous: at t' itself
    logsnr = float(sc.CosineLogSNR().logsnr(jnp.float32(t)))
    alpha, sigma = np.sqrt(1 / (1 + np.exp(-logsnr))), np.sqrt(1 / (1 + np.exp(logsnr)))
    np.testing.assert_allclose(continuous, alpha * x + sigma * eps, rtol=1e-5)


def test_one_dimensional_cells_end_at_the_normal_quantiles():
    n = 8
    y = np.linspace(-1.4, 1.4, n)[:, None] + np.array([[0.0], [0.1], [0.0], [-0.05], [0.0], [0.2], [0.0], [0.0]])
    sol = ot.solve(y, jax.random.key(2), lr=0.05, samples=20_000, batch=20_000, tol=2e-4, max_steps=1000,
                   source=quantile_grid(20_000, 1))  # fmt: skip
    assert sol.converged and sol.empty_cells == 0, (sol.steps, sol.grad_norm)
    h, yy = sol.potentials, y[:, 0]
    bounds = (h[:-1] - h[1:]) / (yy[1:] - yy[:-1])  # <x, y_i> + h_i = <x, y_i+1> + h_i+1
    np.testing.assert_allclose(bounds, norm.ppf(np.arange(1, n) / n), atol=1e-3)


def test_the_gradient_norm_at_the_exact_potentials_is_the_monte_carlo_noise_floor():
    """Potentials that put the 1-D cell boundaries exactly at the normal quantiles (every mass exactly 1/N): the
    solver's gradient norm is then pure Monte-Carlo noise, and its root mean square over 200 independent steps
    is ``noise_floor(N, M)`` within 6% (the mean square of 200 draws of about N - 1 = 7 degrees of freedom has
    a relative standard deviation of about 4%, its root 2%: 6% is 3 standard deviations)."""
    n, m = 8, 5_000
    y = np.linspace(-1.4, 1.4, n) + np.array([0.0, 0.1, 0.0, -0.05, 0.0, 0.2, 0.0, 0.0])
    bounds = norm.ppf(np.arange(1, n) / n)
    h = np.concatenate([[0.0], -np.cumsum(bounds * np.diff(y))])  # h_i - h_i+1 = b_i (y_i+1 - y_i)
    keys = jax.random.split(jax.random.key(9), 200)
    masses = jax.vmap(
        lambda k: ot.cell_masses(
            k,
            jnp.asarray(y[:, None], jnp.float32),
            jnp.asarray(h, jnp.float32),
            source=ot.normal_source,
            batch=m,
            num_batches=1,
        )  # fmt: skip
    )(keys)
    rms = float(jnp.sqrt(jnp.mean(jnp.sum((masses - 1 / n) ** 2, axis=1))))
    assert rms == pytest.approx(ot.noise_floor(n, m), rel=0.06)


def test_a_product_grid_is_mapped_by_the_product_of_the_one_dimensional_maps():
    g = np.linspace(-1.0, 1.0, 4)
    y = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)  # target (a, b) is row 4 a + b
    sol = ot.solve(y, jax.random.key(3), lr=0.05, samples=160_000, batch=160_000, tol=1e-3, max_steps=1000,
                   source=quantile_grid(400, 2))  # fmt: skip
    assert sol.converged, (sol.steps, sol.grad_norm)
    x = jax.random.normal(jax.random.key(4), (1_000_000, 2))
    index = np.asarray(ot.assign(x, jnp.asarray(y, jnp.float32), jnp.asarray(sol.potentials)))
    quantile = np.searchsorted(norm.ppf(np.arange(1, 4) / 4), np.asarray(x))  # each axis's 1-D map
    agree = np.mean(index == 4 * quantile[:, 0] + quantile[:, 1])
    masses = np.bincount(index, minlength=16) / len(index)
    assert agree > 0.995, agree
    np.testing.assert_allclose(masses, 1 / 16, rtol=0.02)


def test_sampling_from_the_expressway_is_the_exact_flow_from_the_targets():
    schedule, data, t = sc.CosineLogSNR(), oracles.mixture_2d(), 0.4
    y = ot.targets_from(schedule, data.sample(jax.random.key(5), 64), jax.random.key(6), t)
    potentials = np.asarray(jax.random.normal(jax.random.key(7), (64,)))  # any potentials: the claim is the flow
    way = expressway.Expressway(y, potentials, t, (2,), "mixture_2d")
    noise = jax.random.normal(jax.random.key(8), (256, 2))
    x = ot.sample(oracles.Denoiser(data, schedule), schedule, way, noise, method="heun", num_steps=64)
    start = np.asarray(ot.on_expressway(noise, way.targets, way.potentials))
    assert {tuple(r) for r in start} <= {tuple(r) for r in np.asarray(y)}  # every start is a stored target
    exact = data.exact_solution(start, schedule, t_start=t, t_end=0.0)
    np.testing.assert_allclose(np.asarray(x), exact, atol=1e-3)


def test_bad_expressway_input_is_one_sentence(tmp_path):
    with pytest.raises(ValueError, match=r"must be in \(0, 1\)"):
        ot.targets_from(sc.CosineLogSNR(), np.zeros((3, 2)), jax.random.key(0), 1.0)
    way = expressway.Expressway(np.zeros((3, 4), np.float32), np.zeros(3, np.float32), 0.3, (2, 2, 1), "m")
    way.save(str(tmp_path / "way.npz"))
    again = expressway.load(str(tmp_path / "way.npz"))
    assert again.shape == (2, 2, 1) and again.t == pytest.approx(0.3) and again.model == "m"
    with pytest.raises(ValueError, match="maps images of shape"):
        ot.sample(lambda z, t: z, sc.CosineLogSNR(), way, jnp.zeros((2, 3, 3, 1)), method="ddim", num_steps=2)
    with pytest.raises(FileNotFoundError, match="No expressway"):
        expressway.load(str(tmp_path / "missing.npz"))


def test_the_sample_command_samples_from_an_expressway_and_refuses_one_of_another_model(
    legacy_teacher, tfds_dir, tmp_path
):
    import pdist
    from pdist.data import pipeline

    model = pdist.load(legacy_teacher)
    train = pipeline.load_split("digits", "train", tfds_dir, 8, 1)["image"][:64]
    way = model.expressway(train, 0.4, seed=0, samples=640, max_steps=20)
    assert way.targets.shape == (64, 64) and way.model == "digits:8x8x1:cosine_logsnr"
    way.save(str(tmp_path / "way.npz"))
    args = [f"--workdir={legacy_teacher}", f"--config.data.data_dir={tfds_dir}", "--config.mode=sample"]
    args += ["--config.sample.num_samples=8", "--config.sample.num_steps=2", f"--config.sample.ot={tmp_path}/way.npz"]
    status, message, _ = run_in_process(*args)
    assert status == 0, message
    with np.load(os.path.join(legacy_teacher, "samples", "samples_ddim_2_uniform_ot_step4.npz")) as f:
        assert f["samples"].shape == (8, 8, 8, 1)
    other = expressway.Expressway(way.targets, way.potentials, 0.4, (8, 8, 1), "cifar10:32x32x3:cosine_logsnr")
    other.save(str(tmp_path / "other.npz"))
    for mode, key in (("sample", "sample.ot"), ("eval", "eval.ot")):
        status, message, _ = run_in_process(
            f"--workdir={legacy_teacher}", f"--config.mode={mode}", f"--config.{key}={tmp_path}/other.npz"
        )
        assert status == 2 and "was built for cifar10" in message and one_sentence(message), message
    with pytest.raises(ConfigError, match="must be in"):
        model.expressway(train, 1.0)
