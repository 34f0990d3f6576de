"""Guided distillation (Meng et al. 2023): the class-conditional oracle is Bayes-consistent and its guided
denoiser is the analytic blend; a stage-1 student matches the guided teacher at weights it was never trained on;
a fresh student is its teacher at every weight; unguided sampling never evaluates the null class; bad weights are
one sentence before compiling; the command line runs every round, each loads and samples at any w in its range,
and an interrupted stage 1 resumes to identical students."""

import json
import os
import shutil

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from helpers import (
    OPTIMIZED,
    SMALL_MODEL,
    assert_same_tree,
    conditional_model,
    config_file,
    nonzero_params,
    perturb,
    run_in_process,
)

import pdist
from pdist import build, diffusion, guidance, optim, oracles
from pdist import schedules as sc
from pdist.config import base_config
from pdist.distillation import guided
from pdist.errors import ConfigError
from pdist.jobs import distill, validate
from pdist.runtime import step as step_lib
from pdist.sampling import ImageSampler, Sampling
from pdist.spec import ModelSpec

# --- the class-conditional 2-D oracle --------------------------------------------------------------------


def _log_normal(z, mean, var):
    """log N(z; mean, var I) in float64, with its constant (the oracle's own posterior drops it)."""
    return -0.5 * np.sum((z - mean) ** 2 / var + np.log(2 * np.pi * var), axis=-1)


def test_the_class_oracle_is_bayes_consistent_and_its_guided_denoiser_is_the_analytic_blend():
    data, schedule = oracles.class_mixture_2d(), sc.CosineLogSNR()
    den, n, K = oracles.ClassDenoiser(data, schedule), 64, data.num_classes
    z = 0.8 * np.asarray(jax.random.normal(jax.random.key(0), (n, 2)), np.float64)
    t = np.linspace(0.1, 0.9, n)
    alpha, sigma = (np.asarray(a, np.float64) for a in schedule.alpha_sigma(jnp.asarray(t)))
    # p(c | z) by Bayes, from every component's marginal N(alpha mu, alpha^2 s^2 + sigma^2) at z.
    log_joint = np.stack(
        [
            np.log(p_c)
            + np.logaddexp.reduce(
                [
                    np.log(w) + _log_normal(z, alpha[:, None] * np.asarray(m), alpha[:, None] ** 2 * np.square(s)[None]
                                            + sigma[:, None] ** 2)
                    for w, m, s in zip(cls.weights, cls.means, cls.stds, strict=True)
                ],
                axis=0,
            )
            for p_c, cls in zip(data.class_weights, data.classes, strict=True)
        ]
    )  # fmt: skip
    p_class = np.exp(log_joint - np.logaddexp.reduce(log_joint, axis=0))  # [K, n]
    x_of = jax.jit(lambda label: den(jnp.asarray(z), jnp.asarray(t), label).x)  # one program (eagerly: one per op)
    x_class = np.stack([np.asarray(x_of(jnp.full((n,), c))) for c in range(K)])
    x_null = np.asarray(x_of(jnp.full((n,), K)))
    # The null class's posterior mean is the class posteriors' average under p(c | z).
    np.testing.assert_allclose(x_null, np.sum(p_class[..., None] * x_class, axis=0), atol=2e-5)
    assert np.max(np.abs(x_class - x_null)) > 0.1  # the classes differ: guidance has something to do
    label, w = np.arange(n) % K, np.linspace(0.0, 4.0, n)
    blended = jax.jit(guidance.guided, static_argnums=(0, 5))(den, z, t, label, w, K)
    expected = (1 + w[:, None]) * x_class[label, np.arange(n)] - w[:, None] * x_null
    np.testing.assert_allclose(blended.x, expected, atol=5e-5)
    np.testing.assert_allclose(alpha[:, None] * blended.x + sigma[:, None] * blended.eps, z, atol=5e-5)


class _StudentMLP(nn.Module):
    """(z, t, label, w) -> v; w enters as itself and two slow Fourier features (the weights' only inputs)."""

    @nn.compact
    def __call__(self, z, t, label, w):
        k = jnp.arange(1, 9, dtype=jnp.float32)
        u = w[:, None] / 4.0
        features = [z, t[:, None], jnp.sin(jnp.pi * k * t[:, None]), jnp.cos(jnp.pi * k * t[:, None])]
        features += [jax.nn.one_hot(label, 4), u, jnp.sin(jnp.pi * k[:2] * u), jnp.cos(jnp.pi * k[:2] * u)]
        h = jnp.concatenate(features, -1)
        for _ in range(3):
            h = nn.silu(nn.Dense(128)(h))
        return nn.Dense(2)(h)


def test_the_weight_prior_is_the_papers_uniform_draw_with_the_requested_mass_at_the_low_end():
    """``at_low = 0``: the uniform draw key for key (earlier runs reproduce); ``at_low = p``: a share p of the
    weights exactly at ``low`` (binomial, within 4 standard deviations over 20,000 draws), the rest uniform on
    [low, high] (mean within 4 standard errors)."""
    key, n = jax.random.key(3), 20_000
    uniform = jax.random.uniform(key, (n,), minval=0.5, maxval=4.0)
    np.testing.assert_array_equal(guidance.WeightPrior(0.5, 4.0).draw(key, n), uniform)
    p = 0.2
    w = np.asarray(guidance.WeightPrior(0.5, 4.0, at_low=p).draw(key, n))
    at_low = w == 0.5
    assert abs(at_low.mean() - p) < 4 * np.sqrt(p * (1 - p) / n)
    rest = w[~at_low]
    assert rest.min() > 0.5 and rest.max() <= 4.0
    assert abs(rest.mean() - 2.25) < 4 * (3.5 / np.sqrt(12)) / np.sqrt(rest.size)
    # Both draws are U[0.5, 4] in distribution, not only in their mean (Kolmogorov-Smirnov at the 0.1% level);
    # a draw squeezed towards the middle or one end fails here.
    for sample in (np.asarray(uniform), rest):
        assert scipy.stats.kstest(sample, scipy.stats.uniform(0.5, 3.5).cdf).pvalue > 1e-3
    squeezed = 0.5 + 3.5 * np.sqrt(np.asarray(jax.random.uniform(key, (n,))))
    assert scipy.stats.kstest(squeezed, scipy.stats.uniform(0.5, 3.5).cdf).pvalue < 1e-3  # the check can fail


@pytest.mark.heavy
def test_a_stage_one_student_matches_the_guided_teacher_at_weights_it_never_saw():
    """The stage-1 loss with the exact oracle as teacher, weights drawn from [0, 1.5] and [2.5, 4] only.

    Tolerance: the guided target is linear in w (x_w = x_c + w (x_c - x_null)), so a student that had not learned
    how w acts would be off in the gap by about its distance to the nearest trained weight's target (0.12 RMSE
    at w = 2). It must instead be about as close as at the weights it trained on (within 1.5 times the worst of
    those, its fit's own error of about 0.04) and, at w = 2, within 0.4 of that distance (0.048; measured 0.039).
    """
    net, schedule, data = _StudentMLP(), sc.CosineLogSNR(), oracles.class_mixture_2d()
    oracle, K = oracles.ClassDenoiser(data, schedule), data.num_classes
    apply_fn = lambda p, z, t, label, key, w: net.apply({"params": p}, z, t, label, w)  # noqa: E731
    loss = guided.make_stage_one_loss(
        apply_fn, schedule, parameterization="v", weighting="snr_plus_one", num_timesteps=None, num_classes=K,
        guidance_prior=guidance.WeightPrior(0.0, 4.0), teacher=lambda params, z, t, label: oracle(z, t, label),
    )  # fmt: skip
    steps, batch_size = 1500, 512
    settings = base_config().optim
    settings.learning_rate, settings.warmup_steps, settings.schedule, settings.grad_clip = 2e-3, 0, "linear", 0.0
    optimizer = optim.optimizer(settings, steps)
    step = step_lib.make_train_step(loss, optimizer, ema_decay=0.0)

    def body(state, i):
        key = jax.random.fold_in(jax.random.key(0), i)
        x, label = data.sample(key, batch_size)
        u = jax.random.uniform(jax.random.fold_in(key, 1), (batch_size,), maxval=3.0)
        batch = {"image": x, "label": label, "guidance": jnp.where(u < 1.5, u, u + 1.0)}  # never in (1.5, 2.5)
        return step(state, batch, jax.random.key(1), optimizer.args, None)[0], None

    init = net.init(jax.random.key(0), jnp.zeros((1, 2)), jnp.zeros((1,)), jnp.zeros((1,), jnp.int32), jnp.ones(1))
    fit = jax.jit(lambda s: jax.lax.scan(body, s, jnp.arange(steps))[0], compiler_options=OPTIMIZED)  # runs long
    params = fit(step_lib.init_state(init["params"], optimizer.tx)).params

    n = 4000  # z from the forward process of fresh data, t spread over [0.05, 0.95]
    x, label = data.sample(jax.random.key(7), n)
    t = jnp.linspace(0.05, 0.95, n)
    alpha, sigma = schedule.alpha_sigma(t)
    z = alpha[:, None] * x + sigma[:, None] * jax.random.normal(jax.random.key(8), x.shape)

    @jax.jit  # one program each (run eagerly, every operation compiles on its own)
    def teacher(w):
        return guidance.guided(oracle, z, t, label, jnp.full((n,), w), K).x

    @jax.jit
    def student(w):
        out = apply_fn(params, z, t, label, None, jnp.full((n,), w))
        return diffusion.predict(out, z, schedule.logsnr(t), parameterization="v").x

    def rmse(a, b):
        return float(jnp.sqrt(jnp.mean((a - b) ** 2)))

    trained = max(rmse(student(w), teacher(w)) for w in (0.0, 0.75, 1.5, 2.5, 3.25, 4.0))
    unseen = {w: rmse(student(w), teacher(w)) for w in (1.75, 2.0, 2.25)}
    nearest = rmse(teacher(2.0), teacher(1.5))
    assert max(unseen.values()) < 1.5 * trained and unseen[2.0] < 0.4 * nearest, (unseen, trained, nearest)
    assert trained < 0.08  # and the fit itself is close (the targets move by 0.96 RMSE from w = 0 to 4)


# --- the UNet student -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher():
    config = conditional_model()
    return config, nonzero_params(config)


def test_a_fresh_student_is_its_teacher_at_every_weight_and_its_trained_w_layers_act(teacher):
    config, params = teacher
    network = guided.student(config)
    start = build.student_params(ModelSpec.of(network), params, jax.random.key(5))
    flat, given = flax.traverse_util.flatten_dict(start), flax.traverse_util.flatten_dict(params)
    assert {"/".join(p) for p in set(flat) - set(given)} == {
        f"guidance_dense_{i}/{k}" for i in (0, 1) for k in ("kernel", "bias")
    }
    assert all(flat[p] is given[p] for p in given)  # the teacher's own arrays
    z = jax.random.normal(jax.random.key(2), (4, 8, 8, 1))
    t, label = jnp.array([0.9, 0.6, 0.3, 0.1]), jnp.array([1, 3, 5, 7])
    cond = jax.jit(lambda p: ModelSpec.of(config).bind(p, label)(z, t))(params)
    at = jax.jit(lambda p, w: ModelSpec.of(network).bind(p, label, w)(z, t))
    for w in (0.0, 1.3, jnp.array([0.0, 1.0, 2.5, 4.0])):
        np.testing.assert_array_equal(at(start, w).x, cond.x)  # exactly: the w layers' output starts at zero
    moved = perturb(start, jax.random.key(6), 0.05)  # once trained, w changes the prediction
    assert float(jnp.max(jnp.abs(at(moved, 0.0).x - at(moved, 3.0).x))) > 1e-3


def test_a_stage_two_round_trains_against_the_teacher_run_at_each_examples_weight(teacher):
    """Guided distillation's stage 2 (Meng et al. 2023, Alg. 2 at weight w): the target x-tilde comes from two
    DDIM steps of the teacher (the previous student, w its input) at each example's own w, and the loss weighs
    |x-tilde - x_student(z_t, w)|^2; computed here in float64 from the networks' predictions, with the DDIM
    steps, x-tilde and the weighting written out. The same loss with the teacher at w = 0 is shown to differ."""
    config, params = teacher
    config = guided.student(config)
    config.distill.method, config.diffusion.weighting = "guided", "snr_plus_one"
    spec = ModelSpec.of(config)
    student_params = build.student_params(spec, params, jax.random.key(5))
    teacher_params = perturb(student_params, jax.random.key(6), 0.2)  # a trained teacher: its w layers act
    student_params = perturb(student_params, jax.random.key(7), 0.05)
    n_steps, b = 2, 6
    rnd = guided.rounds(config.distill)[-1]
    rnd = type(rnd)(index=2, student_steps=n_steps, teacher_steps=2 * n_steps, updates=1)
    loss = jax.jit(build.distillation_loss(spec, config, rnd).fn)
    x = jax.random.uniform(jax.random.key(8), (b, 8, 8, 1), minval=-1, maxval=1)
    label, w = jnp.arange(b) % 10, jnp.array([0.0, 0.5, 1.0, 2.0, 3.0, 4.0])
    t = jnp.array([0.5, 1.0, 0.5, 1.0, 0.5, 1.0])  # the student's grid i / N
    noise = jax.random.normal(jax.random.key(9), x.shape)
    batch = {"image": x, "label": label, "t": t, "noise": noise, "guidance": w}
    got = float(loss(student_params, batch, jax.random.key(10), teacher_params, n_steps)[0])

    def alpha_sigma(tt):
        logsnr = np.asarray(spec.schedule.logsnr(jnp.asarray(tt, jnp.float32)), np.float64)
        return (
            np.sqrt(1 / (1 + np.exp(-logsnr)))[:, None, None, None],
            np.sqrt(1 / (1 + np.exp(logsnr)))[:, None, None, None],
            logsnr,
        )

    predict = jax.jit(lambda p, z, tt, weights: spec.bind(p, label, weights)(z, tt).x)  # one program, not per op

    def x_hat(p, z, tt, weights):
        return np.asarray(predict(p, jnp.asarray(z, jnp.float32), jnp.asarray(tt), jnp.asarray(weights)), np.float64)

    def expected(teacher_w):
        t64 = np.asarray(t, np.float64)
        mid, nxt = t64 - 0.5 / n_steps, t64 - 1.0 / n_steps
        (a_t, s_t, logsnr), (a_m, s_m, _), (a_n, s_n, _) = (alpha_sigma(v) for v in (t64, mid, nxt))
        z = a_t * np.asarray(x, np.float64) + s_t * np.asarray(noise, np.float64)
        x0 = x_hat(teacher_params, z, t, teacher_w)
        z_mid = a_m * x0 + s_m * (z - a_t * x0) / s_t  # DDIM: x-hat and its eps-hat
        x1 = x_hat(teacher_params, z_mid, jnp.asarray(mid, jnp.float32), teacher_w)
        z_next = a_n * x1 + s_n * (z_mid - a_m * x1) / s_m
        ratio = s_n / s_t
        last = (nxt <= 0.25 / n_steps)[:, None, None, None]
        target = np.where(last, x1, (z_next - ratio * z) / np.where(last, 1.0, a_n - ratio * a_t))
        err = np.mean((target - x_hat(student_params, z, t, w)) ** 2, axis=(1, 2, 3))
        return float(np.mean((1.0 + np.exp(logsnr)) * err))

    assert got == pytest.approx(expected(w), rel=2e-4)
    at_zero = expected(jnp.zeros(b))
    assert abs(at_zero - got) > 20 * 2e-4 * got, (at_zero, got)  # the teacher's w matters: the test can fail


def test_an_unguided_sample_never_evaluates_the_null_class(teacher):
    config, params = teacher
    poisoned = jax.tree.map(lambda a: a, params)
    table = poisoned["Embed_0"]["embedding"]
    poisoned["Embed_0"]["embedding"] = table.at[guidance.null_label(10)].set(jnp.nan)  # the null class: NaN
    sampler = ImageSampler(ModelSpec.of(config))
    assert np.isfinite(sampler(poisoned, 4, Sampling(num_steps=2))).all()
    assert np.isnan(
        sampler(poisoned, 4, Sampling(num_steps=2, guidance=1.0))
    ).all()  # guided: it does (the test can fail)
    network = guided.student(config)
    start = build.student_params(ModelSpec.of(network), poisoned, jax.random.key(5))
    assert np.isfinite(
        ImageSampler(ModelSpec.of(network))(start, 4, Sampling(num_steps=2, guidance=3.0))
    ).all()  # one call, class only


def test_bad_guidance_is_one_sentence_before_compiling(teacher):
    config, params = teacher
    sampler = ImageSampler(ModelSpec.of(config))
    with pytest.raises(ConfigError, match=r"The guidance weight w=-1 is negative; use w >= 0"):
        sampler(params, 4, Sampling(num_steps=2, guidance=-1.0))
    student = ImageSampler(ModelSpec.of(guided.student(config)))
    start = build.student_params(ModelSpec.of(guided.student(config)), params, jax.random.key(5))
    with pytest.raises(ConfigError, match=r"distilled for guidance weights in \[0, 4\] and w=4.5 is outside"):
        student(start, 4, Sampling(num_steps=2, guidance=np.array([0.0, 1.0, 2.0, 4.5])))
    with pytest.raises(ConfigError, match=r"give one weight, or one per sample \(4,\)"):
        student(start, 4, Sampling(num_steps=2, guidance=np.ones(3)))
    assert not sampler._compiled and not student._compiled  # nothing was compiled
    distill_config = config_file("digits_cond_guided")
    distill_config.distill.teacher = "anywhere"
    for change, message in [
        ({"train.label_dropout": 0.0}, "Guided distillation needs a teacher trained for classifier-free guidance"),
        ({"distill.guidance_min": 4.0}, "must satisfy 0 <= min < max"),
        ({"distill.guidance_at_min": 1.0}, "guidance_at_min=1.0 is a probability below 1"),
        ({"model.guidance_input": True}, "is set by guided distillation in its students' configs"),
    ]:
        bad = config_file("digits_cond_guided")
        bad.distill.teacher = "anywhere"
        for key, value in change.items():
            section, name = key.split(".")
            bad[section][name] = value
        with pytest.raises(ConfigError, match=message):
            validate(bad)
    validate(distill_config)
    status, message, _ = run_in_process("--config.sample.guidance=-2", "--workdir=/nonexistent/never_written")
    assert status == 2 and "is negative" in message  # the command line: exit status 2, nothing written
    assert not os.path.exists("/nonexistent/never_written")


# --- the command line ---------------------------------------------------------------------------------------


def _args(teacher_dir, tfds_dir):
    return [
        f"--config.distill.teacher={teacher_dir}",
        f"--config.data.data_dir={tfds_dir}",
        *(f"--config.model.{k}={v}" for k, v in SMALL_MODEL.items()),  # the teacher's
        "--config.distill.start_steps=2",  # stage 1 at 2 steps, then 2 -> 1
        "--config.distill.stage1_updates=4",
        "--config.distill.updates_per_round=4",
        "--config.distill.updates_last_rounds=4",
        "--config.distill.fidelity_samples=8",
        "--config.distill.grid_samples=4",
        "--config.train.batch_size=32",
        "--config.train.log_every=2",
        "--config.train.checkpoint_every=2",
    ]


@pytest.mark.heavy
def test_guided_distillation_from_the_command_line_samples_every_round_at_any_weight_and_resumes(
    cond_teacher, tfds_dir, tmp_path
):
    path = tmp_path / "guided"
    args = [f"--workdir={path}", *_args(cond_teacher, tfds_dir)]
    status, message, _ = run_in_process(*args, config="configs/digits_cond_guided.py")
    assert status == 0, message
    with open(path / "summary.json") as f:
        rows = json.load(f)
    assert [(r["round"], r["teacher_steps"], r["steps"], r["updates"]) for r in rows] == [(1, 2, 2, 4), (2, 2, 1, 4)]
    weights = np.linspace(0.0, 4.0, 8)  # the reports' fixed noise, at weights spread over the range
    # Stage 1's target: the guided teacher's own 2-step DDIM samples of the fixed noise, at those weights.
    guided_teacher = pdist.load(str(cond_teacher))
    seed = guided_teacher.config.sample.seed
    target = guided_teacher.sample(8, method="ddim", num_steps=2, grid="uniform", guidance=weights, seed=seed)
    np.testing.assert_allclose(np.load(path / "teacher_2steps.npz")["samples"], target, atol=1e-6)
    rmse = lambda a, b: float(np.sqrt(np.mean((np.float64(a) - np.float64(b)) ** 2)))  # noqa: E731
    first = np.load(path / "round_01_2steps" / "samples.npz")["samples"]
    assert rows[0]["rmse_student"] == pytest.approx(rmse(first, target), rel=1e-6)
    for row in rows:
        student = pdist.load(str(path / f"round_{row['round']:02d}_{row['steps']}steps"))
        assert student.config.model.guidance_input and student.metadata["sampling_steps"] == row["steps"]
        fixed = np.load(path / f"round_{row['round']:02d}_{row['steps']}steps" / "samples.npz")["samples"]
        np.testing.assert_allclose(student.sample(8, guidance=weights, seed=student.config.sample.seed), fixed,
                                   atol=1e-6)  # fmt: skip
        # Each row's weight reaches that row: at one weight for all, rows 0 and 7 are the fixed rows at w = 0, 4.
        low, high = (student.sample(8, guidance=np.full(8, w), seed=student.config.sample.seed) for w in (0.0, 4.0))
        np.testing.assert_allclose(low[0], fixed[0], atol=1e-6)
        np.testing.assert_allclose(high[7], fixed[7], atol=1e-6)
        assert not np.array_equal(low[7], high[7])  # and the weight reaches the network
        with pytest.raises(ConfigError, match="outside"):
            student.sample(4, guidance=4.5)
    listing = sorted(os.listdir(path / "round_01_2steps"))
    status, message, _ = run_in_process(*args, config="configs/digits_cond_guided.py")  # a rerun trains nothing
    assert status == 0, message
    assert sorted(os.listdir(path / "round_01_2steps")) == listing

    # Stopped in stage 1 after its update 2: the rerun restores the student and rebuilds its teacher (the
    # teacher's parameters with the fresh w layers) and ends with bit-identical students in both stages.
    cut = tmp_path / "cut"
    os.makedirs(cut / "round_01_2steps" / "checkpoints")
    shutil.copy(path / "teacher_2steps.npz", cut)
    shutil.copytree(path / "round_01_2steps" / "checkpoints" / "2", cut / "round_01_2steps" / "checkpoints" / "2")
    status, message, _ = run_in_process(f"--workdir={cut}", *args[1:], config="configs/digits_cond_guided.py")
    assert status == 0, message
    for name in ("round_01_2steps", "round_02_1steps"):
        a, b = pdist.load(str(path / name)), pdist.load(str(cut / name))
        assert a.step == b.step
        assert_same_tree(a.params, b.params)


def test_the_imagenet64_config_is_the_papers_setting_and_fits_its_teacher():
    config, teacher = config_file("imagenet64_guided"), config_file("imagenet64_guided", "teacher")
    config.distill.teacher = "anywhere"
    validate(config)
    validate(teacher)
    distill.check_teacher(config, teacher, "its config file")
    assert (teacher.data.name, teacher.model.class_conditional, teacher.train.label_dropout) == (
        "imagenet_resized/64x64",
        True,
        0.1,
    )
    settings = config.distill
    assert (settings.method, settings.guidance_min, settings.guidance_max) == ("guided", 0.0, 4.0)
    assert (settings.start_steps, config.train.batch_size, config.optim.learning_rate) == (1024, 2048, 1e-4)
    rounds = guided.rounds(settings)
    assert [r.student_steps for r in rounds] == [1024, 512, 256, 128, 64, 32, 16, 8, 4, 2, 1]
    assert [r.updates for r in rounds[:2]] + [rounds[-1].updates] == [50_000, 50_000, 100_000]
    assert config_file("imagenet64_guided", "fast").distill.stage1_updates == 10_000
