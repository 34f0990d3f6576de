"""Samplers against exact answers: the Gaussian's closed-form flow and a fine solve for a mixture."""

import dataclasses
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import OPTIMIZED, perturb, random_params

from pdist import oracles, samplers
from pdist import schedules as sc
from pdist.diffusion import Prediction
from pdist.spec import ModelSpec

GAUSS = oracles.gaussian([0.3, -0.2], [0.5, 0.2])
SETUPS = {
    "cosine": (sc.CosineLogSNR(), "uniform"),
    "cosine_logsnr": (sc.CosineLogSNR(), "logsnr"),
    "linear": (sc.LinearBetas(1000), "respaced"),
}


def _order(ns, errors):
    return -np.polyfit(np.log(ns), np.log(errors), 1)[0]


def _errors(data, setup, methods, ns, stat, batch):
    schedule, grid = SETUPS[setup]
    noise = jax.random.normal(jax.random.key(0), (batch, data.dim))
    den = oracles.Denoiser(data, schedule)
    out = {m: [] for m in methods}
    for n in ns:
        ref = oracles.exact_sample(data, schedule, noise, n, grid)
        for m in methods:
            err = np.linalg.norm(
                np.asarray(samplers.sample(den, schedule, noise, method=m, num_steps=n, grid=grid)) - ref, axis=1
            )
            out[m].append(stat(err))
    return out


def _rmse(err):
    return float(np.sqrt(np.mean(err**2)))


# DPM-Solver++ 2M's error lives in logSNR. On the clipped cosine the uniform
# grid's steps near t = 1 do not shrink in logSNR as N grows, which makes it
# first order there (docs/benchmarks.md); it is second order on the logSNR
# grid, the one it is meant for. Heun and the first-order methods are checked
# on every grid.
SECOND_ORDER = {"cosine": ["heun"], "cosine_logsnr": ["heun", "dpmpp_2m"], "linear": ["heun", "dpmpp_2m"]}


@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_orders_on_gaussian(setup):
    ns = [20, 40, 80, 160]
    errs = _errors(GAUSS, setup, ["ddim", "euler"] + SECOND_ORDER[setup], ns, _rmse, 256)
    for m in ("ddim", "euler"):
        assert 0.85 <= _order(ns, errs[m]) <= 1.15, (m, errs[m])
    for m in SECOND_ORDER[setup]:
        assert _order(ns, errs[m]) >= 1.7, (m, errs[m])


@pytest.mark.parametrize("setup", sorted(SETUPS))
def test_orders_on_mixture(setup):
    # Median over samples: a few trajectories near a boundary between sharp
    # components switch mode at coarse N, which would dominate an RMS.
    ns = [32, 64, 128, 256]
    errs = _errors(oracles.mixture_2d(), setup, ["ddim", "euler"] + SECOND_ORDER[setup], ns, np.median, 128)
    for m in ("ddim", "euler"):
        assert 0.85 <= _order(ns, errs[m]) <= 1.15, (m, errs[m])
    for m in SECOND_ORDER[setup]:
        assert _order(ns, errs[m]) >= 1.7, (m, errs[m])


@pytest.mark.parametrize("grid", ["uniform", "respaced"])
def test_pndm_beats_ddim_twentyfold_at_20_steps_on_linear(grid):
    # Pixel-scale data: each dimension N(mu, 0.5^2), as images in [-1, 1].
    data = oracles.gaussian([0.3, -0.2, 0.1, 0.0], [0.5] * 4)
    schedule = sc.LinearBetas(1000)
    noise = jax.random.normal(jax.random.key(1), (512, 4))
    ref = oracles.exact_sample(data, schedule, noise, 20, grid)
    den = oracles.Denoiser(data, schedule)
    err = {
        m: _rmse(
            np.linalg.norm(
                np.asarray(samplers.sample(den, schedule, noise, method=m, num_steps=20, grid=grid)) - ref, axis=1
            )
        )
        for m in ("ddim", "plms", "fpndm")
    }
    assert err["plms"] * 20 <= err["ddim"], err
    assert err["fpndm"] * 20 <= err["ddim"], err


@pytest.mark.parametrize("setup", ["cosine", "linear"])
@pytest.mark.heavy
def test_every_method_stays_bounded_and_evaluates_the_denoiser_as_often_as_it_reports(setup):
    """Every method and option, at any step count: samples stay in the data's box, and the denoiser runs exactly
    ``samplers.nfe`` times (one program per case serves both checks)."""
    schedule, _ = SETUPS[setup]
    den = oracles.Denoiser(oracles.mixture_2d(), schedule)
    count = []

    def counting(z, t):
        jax.debug.callback(lambda: count.append(1))
        return den(z, t)

    noise = jax.random.normal(jax.random.key(2), (16, 2))
    variants = [(method, {}) for method in samplers.SAMPLERS]
    variants += [("plms", {"warmup": "improved_euler"}), ("dpmpp_2m", {"lower_order_final": "below_15"})]
    variants += [("dpmpp_2m", {"lower_order_final": "final"})]  # plms's blend="eps" is unbounded by design (pndm.py)
    for method, options in variants:
        for n in (1, 3, 5, 1000):
            count.clear()
            out = samplers.sample(
                counting, schedule, noise, method=method, num_steps=n, key=jax.random.key(3), **options
            )
            out = np.asarray(out)
            jax.effects_barrier()
            # The data lie in [-1, 1]; an amplified step would leave that box by orders of magnitude.
            assert np.all(np.isfinite(out)) and np.abs(out).max() < 3.0, (method, options, n, np.abs(out).max())
            assert len(count) == samplers.nfe(method, n, schedule, **options), (method, options, n)


@pytest.mark.parametrize("variance", ["small", "large"])
def test_ancestral_ddpm_reproduces_data_moments(variance):
    mean, std = np.array([0.3, -0.5]), np.array([0.5, 0.2])
    data = oracles.gaussian(mean, std)
    schedule = sc.LinearBetas(1000)
    n = 20000
    noise = jax.random.normal(jax.random.key(4), (n, 2))
    run = jax.jit(  # compiled as one program with LLVM's optimizations: 1,000 steps over 20,000 points
        lambda noise, key: samplers.sample(
            oracles.Denoiser(data, schedule), schedule, noise, method="ddpm", num_steps=1000, key=key,
            variance=variance,
        ),
        compiler_options=OPTIMIZED,
    )  # fmt: skip
    out = np.asarray(run(noise, jax.random.key(5)))
    se_mean, se_var = std / np.sqrt(n), std**2 * np.sqrt(2.0 / n)
    assert np.all(np.abs(out.mean(0) - mean) < 4 * se_mean), out.mean(0)
    assert np.all(np.abs(out.var(0) - std**2) < 4 * se_var + 1e-3 * std**2), out.var(0)


@pytest.mark.parametrize("name", sorted(sc.SCHEDULES))
def test_ddpm_returns_x_hat_on_its_last_step_with_either_variance(name):
    """x-hat = 0 gives exactly 0: no noise is added on the last step, also where the schedule stops short of data
    (cosine_logsnr's large variance added noise of std 1.2e-2 at 128 steps before)."""
    schedule = sc.get_schedule(name, **({"num_timesteps": 1000} if sc.is_discrete(name) else {}))
    noise = jax.random.normal(jax.random.key(10), (64, 3))
    for variance in ("small", "large"):
        for n in (1, 7, 128):
            out = samplers.sample(
                lambda z, t: jnp.zeros_like(z), schedule, noise, method="ddpm", num_steps=n, key=jax.random.key(11),
                variance=variance,
            )  # fmt: skip
            assert np.array_equal(np.asarray(out), np.zeros_like(noise)), (variance, n, np.abs(out).max())


def test_learned_variance_interpolates_between_small_and_large():
    schedule = sc.CosineBetas(1000)
    den = oracles.Denoiser(GAUSS, schedule)
    noise = jax.random.normal(jax.random.key(6), (64, 2))
    key = jax.random.key(7)

    def learned(frac):
        def fn(z, t):
            x = den(z, t)
            alpha, sigma = schedule.alpha_sigma(t)
            eps = (z - alpha[:, None] * x) / sigma[:, None]
            return Prediction(x, eps, jnp.full_like(z, frac))

        return fn

    for frac, fixed in ((0.0, "small"), (1.0, "large")):
        a = samplers.sample(
            learned(frac), schedule, noise, method="ddpm", num_steps=50, grid="respaced", key=key, variance="learned"
        )
        b = samplers.sample(den, schedule, noise, method="ddpm", num_steps=50, grid="respaced", key=key, variance=fixed)
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_ddim_eta_one_matches_ddpm_small_step_by_step():
    schedule = sc.LinearBetas(1000)
    den = oracles.Denoiser(GAUSS, schedule)
    noise = jax.random.normal(jax.random.key(8), (32, 2))
    key = jax.random.key(9)
    a = samplers.sample(den, schedule, noise, method="ddim", num_steps=25, grid="respaced", key=key, eta=1.0)
    b = samplers.sample(den, schedule, noise, method="ddpm", num_steps=25, grid="respaced", key=key, variance="small")
    np.testing.assert_allclose(a, b, atol=2e-5)


def test_traces_once_per_shape_and_program_size_is_independent_of_steps(monkeypatch):
    schedule = sc.CosineLogSNR()
    key = jax.random.key(0)
    den = oracles.Denoiser(GAUSS, schedule)
    for method, row in samplers.SAMPLERS.items():
        chex.clear_trace_counter()
        # The method's function runs once per trace of its program; a second trace raises.
        monkeypatch.setitem(
            samplers.SAMPLERS, method, dataclasses.replace(row, run=chex.assert_max_traces(row.run, n=1))
        )
        samplers.sample(den, schedule, jnp.ones((8, 2)), method=method, num_steps=12, key=key)
        samplers.sample(den, schedule, -jnp.ones((8, 2)), method=method, num_steps=12, key=key)
        monkeypatch.setitem(samplers.SAMPLERS, method, row)  # other step counts are other shapes: other traces

        def size(n):
            times = jnp.asarray(sc.time_grid(schedule, n), jnp.float32)
            options = tuple(samplers.SAMPLERS[method].options)
            text = samplers._run.lower(
                samplers.as_pytree(oracles.Denoiser(GAUSS, schedule)), schedule, method, (False, False), options, times,
                jnp.ones((8, 2)), key,
            ).as_text()  # fmt: skip
            return re.sub(r"\d+", "0", text)  # the scan length appears in shapes

        assert size(1000) == size(10), method


def _largest_constant(text: str) -> int:
    """The element count of the largest constant in a lowered program's text."""
    sizes = [1]
    for shape in re.findall(r"stablehlo\.constant dense<.*?> : tensor<([0-9x]*)x?f32>", text):
        sizes.append(int(np.prod([int(d) for d in shape.split("x") if d])) if shape else 1)
    return max(sizes)


def test_a_network_denoiser_carries_its_parameters_as_arguments_not_constants():
    """Two parameter sets of one network: one trace, and the weights never enter the program as constants."""
    from pdist.config import base_config

    config = base_config()
    config.model.ch, config.model.num_res_blocks = 8, 1
    params = random_params(config, jax.random.key(0))
    other = perturb(params, jax.random.key(2))
    first, second = ModelSpec.of(config).bind(params), ModelSpec.of(config).bind(other)
    assert first.func == second.func and hash(first.func) == hash(second.func)  # one cache entry
    schedule = ModelSpec.of(config).schedule
    noise = jax.random.normal(jax.random.key(1), (4, 8, 8, 1))
    chex.clear_trace_counter()
    traced = chex.assert_max_traces(first.func.__call__, n=1)  # the static half of the denoiser; a retrace raises
    outputs = [
        samplers.sample(jax.tree_util.Partial(traced, *den.args), schedule, noise, method="ddim", num_steps=3)
        for den in (first, second)
    ]
    assert float(jnp.abs(outputs[0] - outputs[1]).max()) > 1e-3  # the parameters did reach the program
    # The public denoiser, lowered: its weights are arguments; no constant is anywhere near a weight's size.
    times = jnp.asarray(sc.time_grid(schedule, 3), jnp.float32)
    text = samplers._run.lower(
        first, schedule, "ddim", (False, False), (("eta", 0.0),), times, noise, jax.random.key(0)
    )
    text = text.as_text()
    largest_weight = max(p.size for p in jax.tree.leaves(params))
    assert largest_weight >= 1000 and _largest_constant(text) < largest_weight / 10
    # A closure over the same weights (what a denoiser must not be) does put them in the program.
    closure = lambda z, t: first(z, t)  # noqa: E731
    baked = samplers._run.lower(
        samplers.as_pytree(closure), schedule, "ddim", (False, False), (("eta", 0.0),), times, noise, jax.random.key(0)
    ).as_text()
    assert _largest_constant(baked) >= largest_weight


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(method="rk45", num_steps=4), "Unknown sampler"),
        (dict(method="ddim", num_steps=4, variance="small"), "Unknown option"),
        (dict(method="ddpm", num_steps=4), "pass key"),
        (dict(method="ddim", num_steps=4, eta=0.5), "pass key"),
        (dict(method="ddim", num_steps=0), "positive integer"),
    ],
)
def test_bad_arguments_fail_before_compiling(kwargs, match):
    schedule = sc.CosineLogSNR()
    with pytest.raises(ValueError, match=match):
        samplers.sample(oracles.Denoiser(GAUSS, schedule), schedule, jnp.zeros((2, 2)), **kwargs)


def test_learned_variance_without_var_frac_is_explained():
    schedule = sc.LinearBetas(100)
    with pytest.raises(ValueError, match="var_frac"):
        samplers.sample(
            oracles.Denoiser(GAUSS, schedule),
            schedule,
            jnp.zeros((2, 2)),
            method="ddpm",
            num_steps=4,
            key=jax.random.key(0),
            variance="learned",
        )
