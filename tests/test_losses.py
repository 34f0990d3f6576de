import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pdist import diffusion, losses, oracles
from pdist import schedules as sc
from pdist.diffusion import Prediction
from pdist.distillation import progressive


def _exact_teacher(data, schedule):
    den = oracles.Denoiser(data, schedule)

    def teacher(z, t):
        alpha, sigma = schedule.alpha_sigma(t)
        x_hat, eps_hat = data.posterior(z, alpha, sigma)
        return Prediction(x_hat, eps_hat)

    return den, teacher


@pytest.mark.parametrize("schedule", [sc.CosineLogSNR(), sc.LinearBetas(1024)], ids=["cosine", "linear"])
@pytest.mark.parametrize("num_steps", [1, 2, 8])
def test_one_student_step_on_x_tilde_lands_on_two_teacher_steps(schedule, num_steps):
    data = oracles.mixture_2d()
    _, teacher = _exact_teacher(data, schedule)
    n = 64
    i = jnp.arange(n) % num_steps + 1
    t = i.astype(jnp.float32) / num_steps
    x = data.sample(jax.random.key(0), n)
    z = diffusion.diffuse(x, jax.random.normal(jax.random.key(1), x.shape), schedule.logsnr(t))
    x_tilde = progressive.distillation_target(teacher, schedule, z, t, num_steps)
    # Two teacher DDIM steps, written out independently.
    t_mid, t_next = t - 0.5 / num_steps, t - 1.0 / num_steps
    a_m, s_m = schedule.alpha_sigma(t_mid)
    a_n, s_n = schedule.alpha_sigma(t_next)
    p1 = teacher(z, t)
    z_mid = a_m[:, None] * p1.x + s_m[:, None] * p1.eps
    p2 = teacher(z_mid, t_mid)
    z_next = a_n[:, None] * p2.x + s_n[:, None] * p2.eps
    # One student DDIM step with x-hat = x_tilde (eps from z_t).
    student = diffusion.from_x(x_tilde, z, schedule.logsnr(t))
    z_student = a_n[:, None] * student.x + s_n[:, None] * student.eps
    last = np.asarray(i == 1)
    np.testing.assert_allclose(z_student[~last], z_next[~last], atol=2e-4)
    np.testing.assert_allclose(x_tilde[last], p2.x[last], atol=1e-6)  # t'' = 0: the teacher's x-hat


def _raw_output(x, z, logsnr, parameterization):
    """The network output that ``diffusion.predict`` turns into this x-hat."""
    pred = diffusion.from_x(x, z, logsnr)
    return {
        "x": pred.x,
        "eps": pred.eps,
        "v": diffusion.to_v(pred, logsnr),
        "both": jnp.concatenate([pred.x, pred.eps], axis=-1),
    }[parameterization]


@pytest.mark.parametrize("parameterization", ["x", "eps", "v", "both"])
def test_distillation_loss_is_zero_for_a_student_that_outputs_the_target(parameterization):
    schedule = sc.CosineLogSNR()
    data = oracles.mixture_2d()
    _, teacher = _exact_teacher(data, schedule)
    N = 4

    def apply_fn(params, z, t, label, key):
        # The teacher is the exact denoiser, the student outputs x_tilde: both in ``parameterization``.
        x = teacher(z, t).x if params == "teacher" else progressive.distillation_target(teacher, schedule, z, t, N)
        return params_scale(params) * _raw_output(x, z, schedule.logsnr(t), parameterization)

    params_scale = lambda p: 0.9 if p == "wrong" else 1.0  # noqa: E731
    loss_fn = progressive.make_loss(apply_fn, schedule, parameterization=parameterization, weighting="snr_plus_one")
    batch = {"image": data.sample(jax.random.key(2), 256)}
    run = jax.jit(loss_fn, static_argnums=(0, 3))
    exact = float(run("student", batch, jax.random.key(3), "teacher", N)[0])
    wrong = float(run("wrong", batch, jax.random.key(3), "teacher", N)[0])
    assert exact < 1e-6 * wrong and wrong > 1e-4, (exact, wrong)


def test_teacher_loss_of_the_exact_denoiser_is_the_bayes_error():
    """With x ~ N(mu, s^2) and fixed t, E|x - E[x|z]|^2 = s^2 sigma^2 / (alpha^2 s^2 + sigma^2)."""
    schedule = sc.CosineLogSNR()
    mean, std = np.array([0.2, -0.3, 0.0]), np.array([0.5, 0.3, 0.8])
    data = oracles.gaussian(mean, std)
    den = oracles.Denoiser(data, schedule)
    loss_fn = losses.make_diffusion_loss(
        lambda p, z, t, label, key: den(z, t), schedule, parameterization="x", weighting="constant"
    )
    n, t = 200_000, 0.4
    x = mean + std * np.asarray(jax.random.normal(jax.random.key(4), (n, 3)))
    loss, _ = jax.jit(loss_fn)(None, {"image": jnp.asarray(x, jnp.float32), "t": jnp.full((n,), t)}, jax.random.key(5))
    alpha, sigma = (float(v) for v in schedule.alpha_sigma(t))
    bayes = np.mean(std**2 * sigma**2 / (alpha**2 * std**2 + sigma**2))
    np.testing.assert_allclose(float(loss), bayes, rtol=0.01)


def _toy(learned_variance=True):
    def apply_fn(params, z, t, label, key):
        head = params["m"] * z
        return jnp.concatenate([head, jnp.broadcast_to(params["v"], z.shape)], -1) if learned_variance else head

    return apply_fn, {"m": jnp.array(0.5), "v": jnp.array(0.1)}


def test_hybrid_stops_the_vlb_gradient_on_the_mean():
    schedule = sc.CosineBetas(100)
    apply_fn, params = _toy()
    batch = {"image": jax.random.uniform(jax.random.key(6), (32, 2, 2, 3), minval=-1, maxval=1)}
    kw = dict(parameterization="eps", weighting="snr", learned_variance=True, num_timesteps=100)
    # each loss and its gradient compiled as one program (run eagerly, every operation compiles on its own)
    hybrid, mse, full = (
        jax.jit(losses.make_diffusion_loss(apply_fn, schedule, loss_type=loss_type, **kw))
        for loss_type in ("hybrid", "mse", "vlb")
    )
    key = jax.random.key(7)
    g_h, g_m, g_v = (jax.jit(jax.grad(lambda p, f=f: f(p, batch, key)[0]))(params) for f in (hybrid, mse, full))
    np.testing.assert_allclose(g_h["m"], g_m["m"], rtol=1e-6)  # the mean learns from L_simple only
    assert abs(float(g_h["v"])) > 0 and float(g_m["v"]) == 0.0
    assert abs(float(g_v["m"])) > 0  # L_vlb alone trains the mean too
    _, aux = hybrid(params, batch, key)
    assert aux.vlb_terms.shape == (32,) and float(aux.metrics["vlb"]) > 0
    np.testing.assert_allclose(float(aux.metrics["vlb"]), float(aux.vlb_terms.mean()), rtol=1e-6)
    assert mse(params, batch, key)[1].vlb_terms is None  # L_simple alone has no bound terms for the sampler


def test_teacher_loss_decreases_under_training():
    schedule = sc.CosineLogSNR()
    data = oracles.mixture_2d()

    def apply_fn(params, z, t, label, key):  # a small MLP on (z, logsnr)
        h = jnp.concatenate([z, schedule.logsnr(t)[:, None] / 10], -1)
        for w, b in params[:-1]:
            h = jax.nn.gelu(h @ w + b)
        w, b = params[-1]
        return h @ w + b

    sizes = [3, 64, 64, 2]
    keys = jax.random.split(jax.random.key(8), len(sizes) - 1)
    params = [
        (jax.random.normal(k, (i, o)) / np.sqrt(i), jnp.zeros(o))
        for k, i, o in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]
    loss_fn = losses.make_diffusion_loss(apply_fn, schedule, parameterization="v", weighting="snr_plus_one")

    opt = optax.adam(3e-3)

    @jax.jit
    def step(params, opt_state, key):
        k1, k2 = jax.random.split(key)
        batch = {"image": data.sample(k1, 256)}
        loss, grads = jax.value_and_grad(lambda p: loss_fn(p, batch, k2)[0])(params)
        updates, opt_state = opt.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    history, opt_state = [], opt.init(params)
    for i in range(300):
        params, opt_state, loss = step(params, opt_state, jax.random.key(100 + i))
        history.append(float(loss))
    # The excess over the Bayes loss (the exact denoiser's, same loss function) at least halves.
    den = oracles.Denoiser(data, schedule)
    exact = lambda p, z, t, label, key: diffusion.to_v(
        diffusion.from_x(den(z, t), z, schedule.logsnr(t)), schedule.logsnr(t)
    )
    bayes_fn = losses.make_diffusion_loss(exact, schedule, parameterization="v", weighting="snr_plus_one")
    bayes = float(jax.jit(bayes_fn)(None, {"image": data.sample(jax.random.key(9), 100_000)}, jax.random.key(10))[0])
    start, end = np.mean(history[:30]), np.mean(history[-30:])
    assert end - bayes < 0.5 * (start - bayes), (start, end, bayes)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(parameterization="x", loss_type="hybrid"), "learned_variance=True"),
        (dict(parameterization="x", loss_type="vlb", learned_variance=True), "num_timesteps"),
        (dict(parameterization="x", loss_type="kl"), "Unknown loss"),
        (dict(parameterization="score"), "Unknown parameterization"),
        (dict(parameterization="x", weighting="p2"), "Unknown loss weighting"),
    ],
)
def test_contradictory_loss_settings_fail_clearly(kwargs, match):
    with pytest.raises(ValueError, match=match):
        losses.make_diffusion_loss(lambda *a: None, sc.CosineLogSNR(), **kwargs)


@pytest.mark.parametrize("parameterization", diffusion.PARAMETERIZATIONS)
def test_continuous_linear_vp_gives_a_finite_loss_and_gradient_at_t_zero(parameterization):
    """On linear_vp, t = 0 is logSNR = +inf; training raises t to the schedule's t_min (Song et al.'s 1e-5)
    and draws t from [t_min, 1]."""
    schedule = sc.LinearVP()
    x = jax.random.uniform(jax.random.key(0), (4, 4, 4, 1), minval=-1, maxval=1)
    heads = 2 if parameterization == "both" else 1

    def apply_fn(params, z, t, label, key):
        return params["w"] * jnp.concatenate([z] * heads, axis=-1) + params["b"] * t[:, None, None, None]

    params = {"w": jnp.asarray(0.3), "b": jnp.asarray(0.1)}
    batch = {"image": x, "t": jnp.asarray([0.0, 0.0, 0.5, 1.0])}
    for weighting in diffusion.WEIGHTINGS:
        loss = losses.make_diffusion_loss(apply_fn, schedule, parameterization=parameterization, weighting=weighting)
        (value, _), grads = jax.value_and_grad(loss, has_aux=True)(params, batch, jax.random.key(1))
        assert np.isfinite(float(value)) and all(np.isfinite(np.asarray(g)) for g in jax.tree.leaves(grads)), weighting
    t = losses.uniform_times(jax.random.key(2), 100_000, None, schedule.t_min)
    assert float(t.min()) >= schedule.t_min and np.isfinite(np.asarray(schedule.logsnr(t))).all()
    assert np.isposinf(float(schedule.logsnr(0.0)))  # what the floor is for
