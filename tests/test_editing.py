"""Editing (pdist.editing) against exact answers: DDCM's A -> A edit is x0 for any model, a class that is a
translate of another moves x0 by the translation, two Gaussian classes give the closed form; samplers started
at any time, multistep consistency sampling's moments, DDIM inversion's convergence, the attention control."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import conditional_model, nonzero_params, one_sentence, run_in_process
from PIL import Image

import pdist
from pdist import editing, oracles, samplers
from pdist import schedules as sc
from pdist.errors import ConfigError
from pdist.models.unet import attention_from_rows
from pdist.spec import ModelSpec

COSINE = sc.CosineLogSNR()


def pair(data: oracles.ClassMixture, schedule, source, target):
    """The exact doubled-batch denoiser: the source class on the first half, the target on the second."""
    labels = jnp.concatenate([jnp.asarray(source), jnp.asarray(target)])
    denoiser = oracles.ClassDenoiser(data, schedule)
    return lambda z, t: denoiser(z, t, labels)


def two_classes(delta=(0.9, -0.6)):
    """Class 1 is class 0 (a two-component mixture) translated by ``delta``."""
    a = oracles.GaussianMixture((0.3, 0.7), ((-0.4, 0.1), (0.2, -0.3)), ((0.15, 0.15), (0.25, 0.25)))
    b = oracles.GaussianMixture(a.weights, tuple(tuple(np.add(m, delta)) for m in a.means), a.stds)
    return oracles.ClassMixture((a, b), (0.5, 0.5)), np.asarray(delta)


@pytest.mark.parametrize(
    "schedule,num_steps,noise_fraction,t_start",
    [(COSINE, 1, 1.0, 1.0), (COSINE, 12, 1.0, 0.6), (sc.CosineBetas(1000), 5, 0.5, 1.0)],
    ids=["cosine_logsnr-1", "cosine_logsnr-12-from-0.6", "discrete-5"],
)
def test_editing_a_class_into_itself_returns_the_image_exactly(schedule, num_steps, noise_fraction, t_start):
    data = oracles.class_mixture_2d()
    x0, labels = data.sample(jax.random.key(0), 64)
    x = editing.ddcm(
        pair(data, schedule, labels, labels),
        schedule,
        x0,
        jax.random.key(1),
        num_steps=num_steps,
        noise_fraction=noise_fraction,
        t_start=t_start,
    )
    np.testing.assert_array_equal(np.asarray(x), np.asarray(x0))


@pytest.mark.parametrize("num_steps,noise_fraction", [(4, 1.0), (12, 0.5)])
def test_an_edit_into_a_translated_class_is_the_translation(num_steps, noise_fraction):
    data, delta = two_classes()
    x0 = data.classes[0].sample(jax.random.key(2), 256)
    source, target = jnp.zeros(256, jnp.int32), jnp.ones(256, jnp.int32)
    for seed in (3, 4):
        x = editing.ddcm(
            pair(data, COSINE, source, target),
            COSINE,
            x0,
            jax.random.key(seed),
            num_steps=num_steps,
            noise_fraction=noise_fraction,
        )
        np.testing.assert_allclose(np.asarray(x), np.asarray(x0) + delta, atol=2e-5)


@pytest.mark.parametrize(
    "schedule,num_steps,t_start",
    [(COSINE, 3, 1.0), (COSINE, 8, 0.5), (sc.LinearBetas(1000), 12, 1.0)],
    ids=["cosine_logsnr-3", "cosine_logsnr-8-from-0.5", "discrete-12"],
)
def test_an_edit_between_equal_variance_gaussians_is_the_closed_form(schedule, num_steps, t_start):
    s, mu_a, mu_b = 0.3, np.array([-0.5, 0.2]), np.array([0.4, 0.6])
    data = oracles.ClassMixture(
        (oracles.gaussian(mu_a, (s, s)), oracles.gaussian(mu_b, (s, s))), (0.5, 0.5)
    )  # fmt: skip
    x0 = data.classes[0].sample(jax.random.key(5), 128)
    times = sc.time_grid(schedule, num_steps, "auto", t_start)[:-1]
    alpha, sigma = (np.asarray(v, np.float64) for v in schedule.alpha_sigma(jnp.asarray(times, jnp.float32)))
    shrink = np.prod(alpha**2 * s**2 / (alpha**2 * s**2 + sigma**2))
    expected = np.asarray(x0) + (1 - shrink) * (mu_b - mu_a)
    labels = (jnp.zeros(128, jnp.int32), jnp.ones(128, jnp.int32))
    for seed, fraction in ((6, 1.0), (7, 0.5)):  # the answer does not depend on the noise
        x = editing.ddcm(
            pair(data, schedule, *labels),
            schedule,
            x0,
            jax.random.key(seed),
            num_steps=num_steps,
            noise_fraction=fraction,
            t_start=t_start,
        )
        np.testing.assert_allclose(np.asarray(x), expected, atol=3e-5)
    assert 0.05 < 1 - shrink  # the edit moves the image


def test_editing_refuses_bad_settings_in_one_sentence():
    data = oracles.class_mixture_2d()
    fn, x0 = pair(data, COSINE, [0], [1]), jnp.zeros((1, 2))
    for kwargs, match in (
        ({"num_steps": 0}, "positive integer"),
        ({"num_steps": 4, "noise_fraction": 1.5}, r"in \[0, 1\]"),
        ({"num_steps": 4, "attention_steps": 5}, "attention_steps"),
        ({"num_steps": 4, "t_start": 0.0}, r"in \(0, 1\]"),
    ):
        with pytest.raises(ValueError, match=match):
            editing.ddcm(fn, COSINE, x0, jax.random.key(0), **kwargs)
    with pytest.raises(ValueError, match="one class per image"):
        editing.check_inputs(np.zeros((3, 8, 8, 1)), [0, 1], [1, 2, 3], 4)


# --- samplers from any time ------------------------------------------------


def test_time_grids_start_at_t_start():
    np.testing.assert_allclose(sc.time_grid(COSINE, 4, "uniform", 0.5), [0.5, 0.375, 0.25, 0.125, 0])
    disc = sc.LinearBetas(1000)
    assert sc.start_time(disc, 0.3004) == 0.3 and sc.start_time(disc, 1e-6) == 0.001
    g = sc.time_grid(disc, 4, "respaced", 0.3)
    np.testing.assert_array_equal(np.round(g * 1000).astype(int), [300, 200, 101, 1, 0])
    g = sc.time_grid(disc, 4, "ddim_stride", 0.3)
    np.testing.assert_array_equal(np.round(g * 1000).astype(int), [226, 151, 76, 1, 0])
    g = sc.time_grid(COSINE, 8, "logsnr", 0.5)
    lam = np.asarray(COSINE.logsnr(jnp.asarray(g, jnp.float32)))
    assert g[0] == 0.5 and np.allclose(np.diff(lam), np.diff(lam)[0], rtol=1e-3)
    np.testing.assert_array_equal(sc.time_grid(disc, 7), sc.time_grid(disc, 7, "auto", 1.0))
    with pytest.raises(ValueError, match="exceeds the 3 levels below t_start"):
        sc.time_grid(disc, 4, "respaced", 0.003)


@pytest.mark.parametrize("method", ["heun", "dpmpp_2m"])
def test_a_solver_from_t_start_converges_to_the_exact_flow_from_there(method):
    data = oracles.mixture_2d()
    t_start, noise = 0.55, jax.random.normal(jax.random.key(8), (256, 2))
    z = np.asarray(data.sample(jax.random.key(9), 256)) * float(COSINE.alpha(t_start)) + float(
        COSINE.sigma(t_start)
    ) * np.asarray(noise)
    exact = data.exact_solution(z, COSINE, t_start=t_start, t_end=0.0)
    errors = []
    for n in (16, 32):
        x = samplers.sample(
            oracles.Denoiser(data, COSINE), COSINE, jnp.asarray(z, jnp.float32), method=method, num_steps=n,
            t_start=t_start,
        )  # fmt: skip
        errors.append(float(np.sqrt(np.mean((np.asarray(x, np.float64) - exact) ** 2))))
    order = np.log2(errors[0] / errors[1])
    assert errors[1] < 5e-3 and order > 1.6, (errors, order)


def test_multistep_consistency_sampling_has_the_exact_moments_on_gaussian_data():
    mu, s, n = 0.7, 0.4, 200_000
    data = oracles.gaussian([mu], [s])
    noise = jax.random.normal(jax.random.key(10), (n, 1))
    times = sc.time_grid(COSINE, 6)
    x = samplers.sample(
        oracles.Denoiser(data, COSINE), COSINE, noise, method="consistency", num_steps=6, key=jax.random.key(11)
    )
    # x-hat = mu + g (z - alpha mu), g = alpha s^2 / (alpha^2 s^2 + sigma^2); z_s = alpha_s x-hat + sigma_s xi
    m_z, v_z = 0.0, 1.0
    for k, t in enumerate(times[:-1]):
        a, sig = float(COSINE.alpha(t)), float(COSINE.sigma(t))
        g = a * s**2 / (a**2 * s**2 + sig**2)
        m_x, v_x = mu + g * (m_z - a * mu), g**2 * v_z
        if k < len(times) - 2:
            a_next, s_next = float(COSINE.alpha(times[k + 1])), float(COSINE.sigma(times[k + 1]))
            m_z, v_z = a_next * m_x, a_next**2 * v_x + s_next**2
    x = np.asarray(x, np.float64)[:, 0]
    assert abs(x.mean() - m_x) < 4 * np.sqrt(v_x / n)
    assert abs(x.var() / v_x - 1) < 4 * np.sqrt(2 / n)
    assert abs(v_x - s**2) > 20 * np.sqrt(2 / n) * s**2  # not the data's variance: the test can tell
    one = samplers.sample(
        oracles.Denoiser(data, COSINE), COSINE, noise, method="consistency", num_steps=1, key=jax.random.key(0)
    )
    x_hat = oracles.Denoiser(data, COSINE)(noise, jnp.ones((n,)))
    np.testing.assert_allclose(np.asarray(one), np.asarray(x_hat), atol=1e-6)  # one step: x-hat of the noise


def test_ddim_inversion_then_regeneration_converges_to_the_image_at_first_order():
    data = oracles.gaussian([0.3, -0.2], [0.5, 0.5])
    x0 = data.sample(jax.random.key(12), 512)
    denoiser, errors = oracles.Denoiser(data, COSINE), []
    for n in (64, 256):
        z = editing.invert(denoiser, COSINE, x0, num_steps=n)
        x = samplers.sample(denoiser, COSINE, z, method="ddim", num_steps=n)
        errors.append(float(np.sqrt(np.mean((np.asarray(x) - np.asarray(x0)) ** 2))))
    order = np.log(errors[0] / errors[1]) / np.log(4)
    assert 0.8 < order < 1.2 and errors[1] < 0.01, (errors, order)


def test_sdedit_starts_from_the_noised_image():
    disc = sc.LinearBetas(1000)
    x0 = jax.random.uniform(jax.random.key(13), (4, 3), minval=-1)
    z = editing.noised(disc, x0, jax.random.key(14), 0.3004)
    alpha, sigma = disc.alpha_sigma(jnp.float32(0.3))
    np.testing.assert_allclose(z, alpha * x0 + sigma * jax.random.normal(jax.random.key(14), (4, 3)), atol=1e-6)


# --- the attention control -------------------------------------------------


def test_attention_from_rows_uses_the_other_rows_queries_and_keys_and_its_own_values():
    q, k, v = (jax.random.normal(jax.random.key(i), (3, 5, 2, 4)) for i in (15, 16, 17))
    rows = jnp.array([0, 0, 1])
    out = np.asarray(attention_from_rows(q, k, v, rows=rows))
    for i, r in enumerate(np.asarray(rows)):
        logits = np.einsum("qhd,khd->hqk", np.asarray(q[r]), np.asarray(k[r])) / 2.0
        weights = np.exp(logits - logits.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        np.testing.assert_allclose(out[i], np.einsum("hqk,khd->qhd", weights, np.asarray(v[i])), atol=1e-5)


@pytest.mark.parametrize("guidance", [1.5])  # the doubled batch of guidance; unguided: the command-line test
def test_a_network_edits_a_class_into_itself_exactly_with_and_without_attention_control(guidance):
    config = conditional_model()
    params = nonzero_params(config)
    schedule = ModelSpec.of(config).schedule
    x0 = jax.random.uniform(jax.random.key(18), (3, 8, 8, 1), minval=-1)
    labels = jnp.array([2, 5, 7])
    w = None if guidance is None else jnp.full((6,), guidance)
    fn = ModelSpec.of(config).bind(params, jnp.concatenate([labels, labels]), w)
    for attention_steps in (0, 2):
        x = editing.ddcm(fn, schedule, x0, jax.random.key(19), num_steps=4, attention_steps=attention_steps)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(x0))
    target = ModelSpec.of(config).bind(params, jnp.concatenate([labels, (labels + 1) % 10]), w)
    plain, controlled = (
        np.asarray(editing.ddcm(target, schedule, x0, jax.random.key(19), num_steps=4, attention_steps=a))
        for a in (0, 4)
    )
    assert np.abs(plain - controlled).max() > 1e-4  # the control reaches the output
    z = jax.random.normal(jax.random.key(20), (6, 8, 8, 1))
    t = jnp.full((6,), 0.5)
    both = jax.jit(lambda z, t: (fn(z, t).x, fn(z, t, attention_from=jnp.arange(6)).x))  # one program, not per op
    np.testing.assert_allclose(*both(z, t), atol=1e-6)


def test_at_the_default_weights_an_edit_into_its_own_class_moves_by_the_guidance_difference():
    """At the CLI's and Pretrained.edit's defaults (target w = 1, source w = 0) A -> A is not the identity: one
    step from pure noise gives x0 + w (x_c - x_u) at t = 1, computed here from the network's own predictions."""
    config = conditional_model()
    params = nonzero_params(config)
    schedule = ModelSpec.of(config).schedule
    x0 = jax.random.uniform(jax.random.key(21), (3, 8, 8, 1), minval=-1)
    labels = jnp.array([1, 4, 9])
    key = jax.random.key(22)
    w = jnp.concatenate([jnp.zeros(3), jnp.ones(3)])  # [source; target] weights
    pair_fn = ModelSpec.of(config).bind(params, jnp.concatenate([labels, labels]), w)
    x = np.asarray(editing.ddcm(pair_fn, schedule, x0, key, num_steps=1))
    xi = jax.random.normal(jax.random.split(key)[0], x0.shape)  # the start noise ddcm draws
    t = jnp.ones((3,))
    x_of = jax.jit(lambda c: ModelSpec.of(config).bind(params, c)(xi, t).x)  # one program (eagerly: one per op)
    x_c, x_u = x_of(labels), x_of(jnp.full((3,), config.data.num_classes))  # the class, the null class
    np.testing.assert_allclose(x, np.asarray(x0 + 1.0 * (x_c - x_u)), atol=1e-5)
    assert np.abs(x - np.asarray(x0)).max() > 1e-3  # not the source


# --- Pretrained.edit and the command line ------------------------------------


def test_the_edit_command_writes_the_grid_and_a_class_into_itself_is_the_source(cond_teacher, tfds_dir, tmp_path):
    args = [f"--workdir={tmp_path}", f"--config.edit.checkpoint={cond_teacher}", "--config.edit.num_images=4"]
    args += [f"--config.data.data_dir={tfds_dir}"]
    args += ["--config.edit.num_steps=3", "--config.edit.attention_steps=1"]
    args += ["--config.edit.guidance=2", "--config.edit.source_guidance=2"]  # A -> A at equal weights: exact
    status, message, _ = run_in_process("--config.mode=edit", *args, config="configs/digits_cond.py")
    assert status == 0, message
    name = os.path.join(tmp_path, "edits", "edits_ddcm_3_w2_step20")
    with np.load(name + ".npz") as f:
        source, labels, targets, edits = f["source"], f["source_labels"], f["targets"], f["edits"]
    assert edits.shape == (10, 4, 8, 8, 1) and list(targets) == list(range(10))
    for i, label in enumerate(labels):
        np.testing.assert_array_equal(edits[label, i], source[i])  # A -> A: the source, exactly
        assert all(np.abs(edits[b, i] - source[i]).max() > 1e-4 for b in range(10) if b != label)  # (20 steps)
    grid = np.asarray(Image.open(name + ".png"))
    assert grid.shape[:2] == (8 * (11 * 9 + 1), 8 * (4 * 9 + 1))  # the sources and 10 targets, 4 columns, x8


def test_editing_refuses_bad_input_in_one_sentence_before_compiling(cond_teacher, legacy_teacher, tfds_dir):
    data = f"--config.data.data_dir={tfds_dir}"
    for workdir, extra, match in (
        (legacy_teacher, [], "needs a class-conditional model"),
        (cond_teacher, ["--config.edit.num_steps=0"], "edit.num_steps"),
        (cond_teacher, ["--config.edit.targets=3,12"], "class 12"),
        (cond_teacher, ["--config.edit.method=sdedit"], "below 1"),
        (cond_teacher, ["--config.edit.noise_fraction=2"], r"in \[0, 1\]"),
    ):
        status, message, _ = run_in_process(
            "--config.mode=edit", f"--workdir={workdir}", data, *extra, config="configs/digits_cond.py"
        )
        assert status == 2 and re.search(match, message) and one_sentence(message), message
    model = pdist.load(cond_teacher)
    x = np.zeros((3, 8, 8, 1), np.float32)
    for args, match in (
        ((x, [0, 1], [1, 2, 3]), "one class per image"),
        ((x[..., 0], [0, 1, 2], [1, 2, 3]), "shape"),
        ((x, [0, 1, 2], [1, 2, 10]), r"in \[0, 10\)"),
    ):
        with pytest.raises(ConfigError, match=match):
            model.edit(*args)
    with pytest.raises(ConfigError, match="Unknown editing method"):
        model.edit(x, [0, 1, 2], [1, 2, 3], method="p2p")
    assert not os.path.exists(os.path.join(legacy_teacher, "edits"))
