"""Consistency distillation (pdist.distillation.consistency) against closed forms on Gaussian data.

For data x ~ N(mu, c^2) per pixel the probability-flow ODE is affine and known: in ``x_s = z / alpha`` at
``s = sigma / alpha``, ``x_s - mu`` scales as ``sqrt(c^2 + s^2)``, so the exact consistency function (the map to
the ODE's state at ``s_min``) is ``f*(z, t) = mu + (z / alpha - mu) sqrt(c^2 + s_min^2) / sqrt(c^2 + s^2)`` and
the exact denoiser is ``x-hat = mu + alpha c^2 / (alpha^2 c^2 + sigma^2) (z - alpha mu)``. Networks here are
these formulas with (mu, c) as parameters, inside real ModelSpecs.
"""

from __future__ import annotations

import dataclasses
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from helpers import config_file, small_model

from pdist import diffusion, optim
from pdist.distillation import DISTILLERS, consistency
from pdist.errors import ConfigError
from pdist.runtime.step import init_state, make_train_step
from pdist.schedules import boundary_time, get_schedule, times_at_sigma
from pdist.spec import ModelSpec

MU, C = 0.3, 0.5
SHAPE = (2, 2, 1)
SIGMA_MIN, SIGMA_DATA = 0.002, 0.5
SCHEDULE = get_schedule("cosine_logsnr")


def _exact_x(z, logsnr, mu, c):
    alpha, sigma = diffusion.alpha_sigma_from_logsnr(logsnr)
    alpha, sigma = diffusion.bcast(alpha, z), diffusion.bcast(sigma, z)
    return mu + alpha * c**2 / (alpha**2 * c**2 + sigma**2) * (z - alpha * mu)


def _exact_f(z, logsnr, mu, c, s_min):
    alpha = diffusion.bcast(diffusion.alpha_sigma_from_logsnr(logsnr)[0], z)
    s = diffusion.bcast(jnp.exp(-0.5 * logsnr), z)
    return mu + (z / alpha - mu) * jnp.sqrt(c**2 + s_min**2) / jnp.sqrt(c**2 + s**2)


class Denoiser(nn.Module):
    """The exact Gaussian denoiser (x-parameterized) with mu and c as parameters."""

    @nn.compact
    def __call__(self, z, logsnr, label=None, w=None, train=False):
        mu = self.param("mu", nn.initializers.constant(MU), ())
        c = self.param("c", nn.initializers.constant(C), ())
        return _exact_x(z, logsnr, mu, c)


class ConsistencyNet(nn.Module):
    """The network whose consistency output (c_skip z / alpha + (1 - c_skip) x-hat) is the exact f* of its
    parameters: x-hat = (f* - c_skip z / alpha) / (1 - c_skip)."""

    s_min: float

    @nn.compact
    def __call__(self, z, logsnr, label=None, w=None, train=False):
        mu = self.param("mu", nn.initializers.constant(MU), ())
        c = self.param("c", nn.initializers.constant(C), ())
        alpha = diffusion.bcast(diffusion.alpha_sigma_from_logsnr(logsnr)[0], z)
        s = diffusion.bcast(jnp.exp(-0.5 * logsnr), z)
        c_skip = SIGMA_DATA**2 / ((s - self.s_min) ** 2 + SIGMA_DATA**2)
        out = (_exact_f(z, logsnr, mu, c, self.s_min) - c_skip * z / alpha) / jnp.maximum(1.0 - c_skip, 1e-30)
        return jnp.where(1.0 - c_skip > 0, out, 0.0)


def _specs():
    t_min = boundary_time(SCHEDULE, SIGMA_MIN)
    s_min = float(np.exp(-0.5 * np.float64(SCHEDULE.logsnr(np.float32(t_min)))))
    common = dict(schedule=SCHEDULE, parameterization="x", learned_variance=False, image_shape=SHAPE)
    student = ModelSpec(network=ConsistencyNet(s_min), consistency=(t_min, SIGMA_DATA), **common)
    teacher = ModelSpec(network=Denoiser(), **common)
    return student, teacher, s_min


def _params(mu=MU, c=C):
    return {"mu": jnp.float32(mu), "c": jnp.float32(c)}


def _karras_times(n: int, sigma_max: float = 80.0) -> np.ndarray:
    sigmas = consistency.karras_sigmas(SIGMA_MIN, sigma_max, n, 7.0)
    return np.concatenate([[boundary_time(SCHEDULE, SIGMA_MIN)], times_at_sigma(SCHEDULE, sigmas[1:])])


def _batch(n: int = 4096, seed: int = 0) -> dict:
    return {"image": MU + C * jax.random.normal(jax.random.key(seed), (n, *SHAPE))}


def _loss_at_exact(solver: str, n: int) -> float:
    student, teacher, _ = _specs()
    loss = consistency.make_loss(student, teacher, _karras_times(n), solver=solver, distance="l2", target_ema=0.9)
    value, _ = jax.jit(loss.fn)(_params(), _batch(), jax.random.key(1), _params(), 1, _params())
    return float(value)


def test_the_student_network_is_the_exact_consistency_function():
    """The test's own construction: with the consistency output, the student network is f* everywhere (so the
    losses below are the method's at the exact solution)."""
    student, _, s_min = _specs()
    z = jax.random.normal(jax.random.key(0), (8, *SHAPE))
    t = jnp.linspace(0.01, 1.0, 8)
    got = student(_params(), None, None, z, t).x
    np.testing.assert_allclose(got, _exact_f(z, SCHEDULE.logsnr(t), MU, C, s_min), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("solver, order", [("ddim", 1), ("heun", 2)])
def test_exact_consistency_function_is_a_fixed_point_at_the_solvers_order(solver, order):
    """The loss at f* (student and target) with the exact teacher vanishes as the discretization refines, at
    the rate of the teacher step's local error squared: N^-(2 order + 2) (ordered-pair noise shared)."""
    ns = (16, 32, 64)
    values = [_loss_at_exact(solver, n) for n in ns]
    slopes = np.diff(np.log(values)) / np.diff(np.log(ns))
    expected = -(2 * order + 2)
    assert values[-1] < values[0]
    np.testing.assert_allclose(slopes, expected, atol=0.6, err_msg=f"losses {values}")


def test_boundary_condition_holds_bit_for_bit_with_a_real_network():
    """At t_min a consistency student returns z / alpha whatever its parameters: two different parameter sets
    give the same bits, and those are z / alpha of the same program."""
    config = small_model(config_file("digits"))
    config.diffusion.consistency_sigma_min = SIGMA_MIN
    spec = ModelSpec.of(config)
    t_min, _ = spec.consistency
    assert t_min == boundary_time(spec.schedule, SIGMA_MIN) > 0
    params = jax.jit(spec.init_params)(jax.random.key(0))
    other = jax.jit(lambda t: jax.tree.map(lambda p: p + 0.1, t))(params)  # one program, not one per leaf shape
    z = jax.random.normal(jax.random.key(1), (4, *spec.image_shape))

    @jax.jit
    def at_boundary(p, q, z):
        t = jnp.full((z.shape[0],), t_min, jnp.float32)
        return spec(p, None, None, z, t).x, spec(q, None, None, z, t).x, z / spec.schedule.alpha(t_min)

    a, b, expected = at_boundary(params, other, z)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_max_ulp(np.asarray(a), np.asarray(expected), maxulp=1)
    # and away from it the network counts (compiled: run eagerly, every operation compiles on its own)
    x_of = jax.jit(lambda p: spec(p, None, None, z, jnp.full((4,), 0.5, jnp.float32)).x)
    assert not np.allclose(x_of(params), x_of(other))


def _train_step(target_ema: float, lr: float):
    student, teacher, _ = _specs()
    loss = consistency.make_loss(
        student, teacher, _karras_times(18), solver="heun", distance="l2", target_ema=target_ema
    )
    opt = optim.optimizer(ml_collections.ConfigDict({**_optim_settings(), "learning_rate": lr}), 10)
    return jax.jit(make_train_step(loss, opt, ema_decay=0.0)), opt


def _optim_settings() -> dict:
    return config_file("digits").optim.to_dict() | {"warmup_steps": 0, "schedule": "constant", "grad_clip": 0.0}


def test_one_adam_step_from_a_perturbed_student_moves_it_toward_the_exact_function():
    step, opt = _train_step(target_ema=0.95, lr=1e-3)
    start = _params(MU + 0.05, C - 0.05)
    state = init_state(start, opt.tx, target=True)
    state = state.replace(target=_params())  # the target network at f*
    new, _ = step(state, _batch(), jax.random.key(2), opt.args, _params(), np.int32(1))
    for name, exact in (("mu", MU), ("c", C)):
        before, after = float(start[name]), float(new.params[name])
        assert abs(after - exact) < abs(before - exact), (name, before, after)


def test_target_network_is_the_configured_ema_of_the_student():
    mu = 0.9
    step, opt = _train_step(target_ema=mu, lr=1e-2)
    state = init_state(_params(MU + 0.1, C + 0.1), opt.tx, target=True)
    target = jax.tree.map(np.asarray, state.params)
    for i in range(3):
        state, _ = step(state, _batch(seed=i), jax.random.key(i), opt.args, _params(), np.int32(1))
        target = jax.tree.map(lambda a, p: mu * a + (1 - mu) * np.asarray(p), target, state.params)
        for name in ("mu", "c"):
            np.testing.assert_allclose(state.target[name], target[name], rtol=1e-6)
            assert float(state.target[name]) != float(state.params[name])


def test_time_grid_spans_the_teachers_range():
    c = config_file("digits").distill.consistency
    times = consistency.time_grid(SCHEDULE, c)
    assert len(times) == c.num_scales + 1  # t = 1 above sigma_max = 80 on the clipped cosine (sigma(1) = e^10)
    assert times[0] == np.float32(boundary_time(SCHEDULE, c.sigma_min)) and times[-1] == 1.0
    sigma = np.exp(-0.5 * np.asarray(SCHEDULE.logsnr(times[1:-1]), np.float64))
    np.testing.assert_allclose(sigma, consistency.karras_sigmas(c.sigma_min, c.sigma_max, c.num_scales, c.rho)[1:],
                               rtol=1e-3)  # fmt: skip
    discrete = consistency.time_grid(get_schedule("linear", num_timesteps=1000), c)
    assert discrete[0] == 1 / 1000 and np.all(np.diff(discrete) > 0)
    few = ml_collections.ConfigDict({**c.to_dict(), "num_scales": 40})
    with pytest.raises(ConfigError, match="num_scales=40"):
        consistency.time_grid(get_schedule("linear", num_timesteps=20), few)


def test_method_row():
    row = DISTILLERS["consistency"]
    config = config_file("digits_distill")
    config.distill.method = "consistency"
    row.validate(config)
    student = row.student(config)
    assert ModelSpec.of(student).consistency == (boundary_time(SCHEDULE, 0.002), 0.5)
    assert dataclasses.replace(ModelSpec.of(student), consistency=None) == ModelSpec.of(config)
    assert row.sampler == "consistency"
    for key, value, words in (("num_scales", 1, "at least 2"), ("solver", "rk4", "solver"),
                              ("target_ema", 1.0, "target_ema")):  # fmt: skip
        bad = config_file("digits_distill")
        bad.distill.consistency[key] = value
        with pytest.raises(ConfigError, match=words):
            row.validate(bad)


def test_consistency_distillation_from_the_command_line_resumes_bit_identically_and_samples(
    cli_workdir, tfds_dir, tmp_path
):
    """configs/digits_consistency.py on the shared CLI teacher: a round of 6 updates with checkpoints at 3 and 6;
    rerun from step 3 it ends on the same bits (student, sampling EMA and target network); the student loads and
    samples with the consistency sampler at any step count, and its stored config says so."""
    import shutil

    from helpers import SMALL_MODEL, run_in_process

    import pdist
    from pdist.pretrained import restore
    from pdist.runtime import layout

    args = [
        f"--workdir={tmp_path / 'cd'}",
        f"--config.distill.teacher={cli_workdir}",
        f"--config.data.data_dir={tfds_dir}",
        *(f"--config.model.{k}={v}" for k, v in SMALL_MODEL.items()),  # the teacher's
        "--config.distill.consistency.updates=6",
        "--config.distill.consistency.num_scales=6",
        "--config.distill.start_steps=4",
        "--config.distill.fidelity_samples=8",
        "--config.train.batch_size=32",
        "--config.train.log_every=3",
        "--config.train.checkpoint_every=3",
    ]
    status, message, _ = run_in_process(*args, config="configs/digits_consistency.py")
    assert status == 0, message
    round_dir = tmp_path / "cd" / "round_01_1steps"
    assert sorted(os.listdir(round_dir / "checkpoints")) == ["3", "6"]
    with open(tmp_path / "cd" / "summary.md") as f:
        assert "| 4 -> 1 | 6 |" in f.read()
    shutil.copytree(tmp_path / "cd", tmp_path / "again")
    shutil.rmtree(tmp_path / "again" / "round_01_1steps" / "checkpoints" / "6")
    (tmp_path / "again" / "summary.md").unlink()
    (tmp_path / "again" / "round_01_1steps" / layout.ROUND_REPORT).unlink()
    status, message, _ = run_in_process(
        *[a.replace("/cd", "/again") for a in args], config="configs/digits_consistency.py"
    )
    assert status == 0, message
    a, b = (restore(str(tmp_path / name / "round_01_1steps"), 6).state for name in ("cd", "again"))
    for key in ("params", "ema_params", "target"):
        for u, v in zip(jax.tree.leaves(getattr(a, key)), jax.tree.leaves(getattr(b, key)), strict=True):
            np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    moved = [
        not np.array_equal(u, v) for u, v in zip(jax.tree.leaves(a.target), jax.tree.leaves(a.params), strict=True)
    ]
    assert any(moved)  # the target lags the student

    student = pdist.load(str(round_dir))
    assert student.config.sample.method == "consistency" and student.spec.consistency is not None
    for steps in (1, 2):
        x = np.asarray(student.sample(4, num_steps=steps, seed=0))
        assert x.shape == (4, 8, 8, 1) and np.all(np.isfinite(x))
    # A consistency student is no diffusion teacher: training it on, or distilling it progressively, is refused in
    # one sentence (its network's raw output is not what its x-hat is)
    status, message, _ = run_in_process(
        f"--workdir={round_dir}", f"--config.data.data_dir={tfds_dir}", config=f"configs/workdir.py:{round_dir}"
    )
    assert status == 2 and "consistency_sigma_min" in message and "\n" not in message, message
    pd = [a.replace("/cd", "/pd") for a in args if not a.startswith("--config.distill.consistency")]
    status, message, _ = run_in_process(
        *pd, f"--config.distill.teacher={round_dir}", config="configs/digits_distill.py"
    )
    assert status == 2 and "consistency_sigma_min" in message and "\n" not in message, message


def test_a_guided_teachers_step_follows_its_classifier_free_guided_ode():
    """With ``guidance`` w the loss is d(f(z_t), f-(DDIM step of (1 + w) x-hat(c) - w x-hat(null))), the teacher's
    two predictions computed here one by one; at w = 0 it is another number. A teacher without a null class
    is refused."""
    config = small_model(config_file("digits_cond"))
    config.model.dropout = 0.0
    teacher = ModelSpec.of(config)
    student = dataclasses.replace(teacher, consistency=(float(boundary_time(teacher.schedule, SIGMA_MIN)), 0.5))
    times = consistency.time_grid(teacher.schedule, config.distill.consistency)
    init = jax.jit(teacher.init_params)(jax.random.key(0))  # its output layer is zero: perturb it all

    @jax.jit  # one program, not operations compiled one by one for each leaf's shape
    def three(init):
        params = jax.tree.map(lambda p: p + 0.05 * jnp.cos(jnp.arange(p.size).reshape(p.shape)), init)
        moved = jax.tree.map(lambda p: p + 0.01 * jnp.sin(jnp.arange(p.size).reshape(p.shape)), params)
        return params, moved, jax.tree.map(lambda p: p - 0.01, params)

    params, moved, target = three(init)
    x = jax.random.uniform(jax.random.key(1), (6, *teacher.image_shape), minval=-1, maxval=1)
    batch = {"image": x, "label": jnp.arange(6) % 10, "n": jnp.array([0, 3, 7, 10, 14, 16]),
             "noise": jax.random.normal(jax.random.key(2), x.shape)}  # fmt: skip
    w = 2.0

    def loss_at(guidance):
        loss = consistency.make_loss(student, teacher, times, solver="ddim", distance="l2", target_ema=0.9,
                                     guidance=guidance)  # fmt: skip
        return float(jax.jit(loss.fn)(moved, batch, jax.random.key(3), params, 1, target)[0])

    @jax.jit  # one program (run eagerly, every operation compiles on its own)
    def reference():
        t, s = jnp.asarray(times)[batch["n"] + 1], jnp.asarray(times)[batch["n"]]
        z = diffusion.diffuse(x, batch["noise"], teacher.schedule.logsnr(t))
        null = jnp.full((6,), 10)
        cond = teacher.predict(teacher.apply(params, z, t, batch["label"], None), z, t)
        uncond = teacher.predict(teacher.apply(params, z, t, null, None), z, t)
        blend = diffusion.Prediction((1 + w) * cond.x - w * uncond.x, (1 + w) * cond.eps - w * uncond.eps, None)
        a_s, s_s = teacher.schedule.alpha_sigma(s)
        z_s = diffusion.ddim_step(blend, a_s, s_s)
        want = student.predict(student.apply(target, z_s, s, batch["label"], None), z_s, s).x
        got = student.predict(student.apply(moved, z, t, batch["label"], None), z, t).x
        return jnp.mean((got - want) ** 2)

    expected = float(reference())
    assert loss_at(w) == pytest.approx(expected, rel=1e-5)
    assert abs(loss_at(0.0) - expected) > 1e-3 * expected

    bad = config_file("digits_consistency")  # the unconditional teacher
    bad.distill.consistency.guidance = 2.0
    with pytest.raises(ConfigError, match="null class"):
        DISTILLERS["consistency"].validate(bad)
