"""Progressive distillation: students reproduce their teacher's 2N steps in N; rounds halve, are tagged,
resume bit-identically (also after SIGTERM); the teacher stays frozen; a teacher that does not fit is refused in one sentence."""

import json
import os
import shutil
import signal
import threading
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import config_file

import pdist
from pdist import build, diffusion, distill, losses, oracles, parallel, preemption, samplers, train, train_step
from pdist import schedules as sc
from pdist.config import validate
from pdist.errors import Preempted

# --- 2-D mixture with a small MLP teacher, through the same train step -------------------------------


class _MLP(nn.Module):
    @nn.compact
    def __call__(self, z, t):
        k = jnp.arange(1, 9, dtype=jnp.float32)
        h = jnp.concatenate([z, t[:, None], jnp.sin(jnp.pi * k * t[:, None]), jnp.cos(jnp.pi * k * t[:, None])], -1)
        for _ in range(3):
            h = nn.silu(nn.Dense(128)(h))
        return nn.Dense(2)(h)


def test_students_reproduce_their_teachers_two_steps_on_a_2d_mixture():
    net, schedule, data = _MLP(), sc.CosineLogSNR(), oracles.mixture_2d()
    apply_fn = lambda p, z, t, label, key: net.apply({"params": p}, z, t)  # noqa: E731

    def fit(loss_fn, params, steps, lr, batch, seed, *loss_args):
        tx = optax.adam(optax.linear_schedule(lr, 0.0, steps))
        step = train_step.make_train_step(loss_fn, tx, ema_decay=0.0)

        def body(state, i):
            x = data.sample(jax.random.fold_in(jax.random.key(seed), i), batch)
            return step(state, {"image": x}, jax.random.key(seed + 1), *loss_args)[0], None

        run = jax.jit(lambda s: jax.lax.scan(body, s, jnp.arange(steps))[0])
        return run(train_step.init_state(params, tx)).params

    def ddim(params, noise, n):
        def den(z, t):
            return diffusion.predict(apply_fn(params, z, t, None, None), z, schedule.logsnr(t), parameterization="v")

        return np.asarray(samplers.sample(den, schedule, noise, method="ddim", num_steps=n), np.float64)

    def rmse(a, b):
        return float(np.sqrt(np.mean((a - b) ** 2)))

    init = net.init(jax.random.key(0), jnp.zeros((1, 2)), jnp.zeros((1,)))["params"]
    teacher_loss = losses.make_diffusion_loss(apply_fn, schedule, parameterization="v", weighting="snr_plus_one")
    teacher = fit(teacher_loss, init, 1500, 2e-3, 1024, 0)
    noise = jax.random.normal(jax.random.key(9), (2000, 2))
    start = ddim(teacher, noise, 8)
    # The teacher learned the data: its 8-step samples sit near the exact 8-step probability-flow map.
    assert rmse(start, oracles.exact_sample(data, schedule, noise, 8)) < 0.15

    current, errors = teacher, {}
    for n in (4, 2, 1):
        loss = losses.make_distillation_loss(
            apply_fn, schedule, parameterization="v", weighting="snr_plus_one", num_student_steps=n
        )
        student = fit(loss, current, 400, 1e-3, 256, 100 + n, current)
        errors[n] = (
            rmse(ddim(student, noise, n), ddim(current, noise, 2 * n)),
            rmse(ddim(current, noise, n), ddim(current, noise, 2 * n)),
        )
        current = student
    student_4, teacher_4 = errors[4]
    assert 3 * student_4 < teacher_4, errors
    # After three rounds: the 1-step student against the original teacher's 8 steps.
    assert 5 * rmse(ddim(current, noise, 1), start) < rmse(ddim(teacher, noise, 1), start), errors


# --- the digits loop -----------------------------------------------------------------------------------


def _tiny(config, tfds_dir):
    config.data.data_dir = tfds_dir
    config.model.ch = 8
    config.model.head_dim = 16
    config.train.batch_size = 32
    return config


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tfds_dir):
    config = _tiny(config_file("digits"), tfds_dir)
    config.train.num_steps = 30
    config.train.sample_every = 0
    config.train.num_grid_samples = 4
    config.sample.num_steps = 4
    config.sample.num_samples = 8
    path = str(tmp_path_factory.mktemp("teacher"))
    train.train_and_evaluate(config, path)
    return path


def _distill_config(tfds_dir, teacher_dir):
    config = _tiny(config_file("digits_distill"), tfds_dir)
    config.distill.teacher = teacher_dir
    config.distill.start_steps = 8
    config.distill.updates_per_round = 4
    config.distill.updates_last_rounds = 6
    config.distill.fidelity_samples = 16
    config.distill.grid_samples = 4
    config.train.log_every = 2
    config.train.checkpoint_every = 2
    return config


@pytest.fixture(scope="module")
def whole(tmp_path_factory, tfds_dir, teacher_dir):
    path = str(tmp_path_factory.mktemp("distill_whole"))
    rows = distill.distill(_distill_config(tfds_dir, teacher_dir), path)
    return path, rows


def test_rounds_halve_and_each_student_is_tagged_and_samples_with_its_steps(whole):
    path, rows = whole
    assert [(w["round"], w["teacher_steps"], w["steps"], w["updates"]) for w in rows] == [
        (1, 8, 4, 4),
        (2, 4, 2, 6),
        (3, 2, 1, 6),
    ]
    assert sorted(n for n in os.listdir(path) if n.startswith("round_")) == [
        "round_01_4steps",
        "round_02_2steps",
        "round_03_1steps",
    ]
    for w in rows:
        student = pdist.load(os.path.join(path, distill.round_name(w["round"], w["steps"])))
        assert student.step == w["updates"]
        assert (student.metadata["round"], student.metadata["sampling_steps"]) == (w["round"], w["steps"])
        assert np.isfinite(w["final_loss"]) and w["rmse_student"] >= 0
    with open(os.path.join(path, "summary.json")) as f:
        assert json.load(f) == rows
    assert os.path.exists(os.path.join(path, "summary.md")) and os.path.exists(os.path.join(path, "rounds.png"))
    # The workdir stands for its newest student, which samples with its own step count by default.
    newest = pdist.load(path)
    assert newest.metadata["sampling_steps"] == 1
    round_1 = pdist.load(os.path.join(path, "round_01_4steps"))
    x = round_1.sample(8, seed=1)
    np.testing.assert_array_equal(x, round_1.sample(8, seed=1, method="ddim", num_steps=4))
    assert not np.array_equal(x, round_1.sample(8, seed=1, method="ddim", num_steps=8))
    # The round's fidelity samples are that student's 4-step DDIM samples of the fixed noise.
    fixed = np.load(os.path.join(path, "round_01_4steps", "samples.npz"))["samples"]
    np.testing.assert_allclose(round_1.sample(16, seed=0), fixed, atol=1e-6)


def test_a_run_interrupted_in_round_2_resumes_to_identical_parameters(whole, tmp_path, tfds_dir, teacher_dir):
    path, rows = whole
    cut = tmp_path / "cut"
    os.makedirs(cut / "round_02_2steps" / "checkpoints")
    shutil.copy(os.path.join(path, "teacher_8steps.npz"), cut)
    shutil.copytree(os.path.join(path, "round_01_4steps"), cut / "round_01_4steps")
    shutil.copytree(
        os.path.join(path, "round_02_2steps", "checkpoints", "2"), cut / "round_02_2steps" / "checkpoints" / "2"
    )
    events_before = sorted(os.listdir(cut / "round_01_4steps"))
    resumed = distill.distill(_distill_config(tfds_dir, teacher_dir), str(cut))
    assert sorted(os.listdir(cut / "round_01_4steps")) == events_before  # round 1 was not run again
    strip = lambda rs: [{k: v for k, v in w.items() if k != "seconds"} for w in rs]  # noqa: E731
    assert strip(resumed) == strip(rows)
    for name in ("round_02_2steps", "round_03_1steps"):
        a, b = pdist.load(os.path.join(path, name)), pdist.load(str(cut / name))
        assert a.step == b.step
        for u, v in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
            np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    # Rerunning a finished distillation trains nothing and changes nothing.
    again = distill.distill(_distill_config(tfds_dir, teacher_dir), str(cut))
    assert again == resumed


def test_sigterm_in_round_2_saves_and_the_rerun_is_bit_identical(whole, tmp_path, tfds_dir, teacher_dir):
    path, rows = whole
    cut = tmp_path / "cut"
    shutil.copytree(path, cut, ignore=lambda d, names: [n for n in names if n.startswith(("round_02", "round_03"))])
    mark, done = cut / "round_02_2steps" / "checkpoints" / "2", threading.Event()

    def terminate_when_round_2_has_saved():  # a real SIGTERM to this process, mid-run
        while not done.is_set():
            if mark.exists():
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.001)

    with preemption.guard():
        watcher = threading.Thread(target=terminate_when_round_2_has_saved)
        watcher.start()
        try:
            with pytest.raises(Preempted, match="Stopped by SIGTERM"):
                distill.distill(_distill_config(tfds_dir, teacher_dir), str(cut))
        finally:
            done.set()
            watcher.join()
    resumed = distill.distill(_distill_config(tfds_dir, teacher_dir), str(cut))
    strip = lambda rs: [{k: v for k, v in w.items() if k != "seconds"} for w in rs]  # noqa: E731
    assert strip(resumed) == strip(rows)
    for name in ("round_02_2steps", "round_03_1steps"):
        a, b = pdist.load(os.path.join(path, name)), pdist.load(str(cut / name))
        assert a.step == b.step
        for u, v in zip(jax.tree.leaves((a.params, a.ema_params)), jax.tree.leaves((b.params, b.ema_params)),
                        strict=True):  # fmt: skip
            np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def test_the_teacher_stays_frozen_and_a_round_traces_its_step_once(tfds_dir, teacher_dir, tmp_path, monkeypatch):
    config = _distill_config(tfds_dir, teacher_dir)
    mesh = parallel.data_mesh()
    teacher, _ = distill.load_teacher(config, mesh)
    before = [np.array(a) for a in jax.tree.leaves(teacher)]
    traces = []
    make = build.distillation_loss

    def counting(config, n):
        loss = make(config, n)

        def counted(*args):
            traces.append(n)
            return loss(*args)

        return counted

    monkeypatch.setattr(build, "distillation_loss", counting)
    state, last = distill.run_round(config, str(tmp_path / "round"), 1, 4, teacher, mesh)
    assert traces == [4]
    assert int(state.step) == 4 and last["sampling_steps"] == 4
    for a, b in zip(before, jax.tree.leaves(teacher), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))
    moved = [
        float(np.max(np.abs(a - np.asarray(b)))) for a, b in zip(before, jax.tree.leaves(state.params), strict=True)
    ]
    assert max(moved) > 0  # ... while the student, which started as its copy, did move


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("model.ch", 16, "another architecture"),
        ("diffusion.parameterization", "x", "has diffusion.parameterization='v' but this config has 'x'"),
    ],
)
def test_a_teacher_that_does_not_fit_is_refused_before_anything_is_written(
    tfds_dir, teacher_dir, tmp_path, key, value, message
):
    config = _distill_config(tfds_dir, teacher_dir)
    section, name = key.split(".")
    config[section][name] = value
    with pytest.raises(distill.TeacherMismatchError, match=message):
        distill.distill(config, str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w")


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"distill.teacher": None}, "config.distill.teacher is not set"),
        ({"distill.start_steps": 12}, "times a power of two"),
        ({"distill.start_steps": 1}, "times a power of two"),
        (
            {"diffusion.schedule": "linear", "diffusion.num_timesteps": 1000, "distill.start_steps": 256},
            "does not land on it",
        ),
    ],
)
def test_distill_settings_are_checked_in_one_sentence(tfds_dir, overrides, message):
    config = _distill_config(tfds_dir, "somewhere")
    for key, value in overrides.items():
        section, name = key.split(".")
        config[section][name] = value
    with pytest.raises(ValueError, match=message):
        validate(config)
    config.diffusion.schedule, config.diffusion.num_timesteps = "linear", 1024
    config.distill.start_steps, config.distill.teacher = 1024, "somewhere"
    validate(config)  # a discrete teacher whose grid the students land on is fine


@pytest.mark.parametrize(
    "name,start,batch,lr",
    [
        ("digits", 256, 128, 3e-4),
        ("cifar10", 8192, 128, 5e-5),
        ("imagenet64", 1024, 2048, 1e-4),
        ("lsun_bedroom128", 1024, 2048, 1e-4),
        ("lsun_church128", 1024, 2048, 1e-4),
    ],
)
def test_each_distill_config_fits_its_teacher_config_with_the_papers_settings(name, start, batch, lr):
    config, teacher = config_file(f"{name}_distill"), config_file(name)
    config.distill.teacher = "anywhere"
    validate(config)
    distill.check_teacher(config, teacher, "its config file")
    assert (config.data.name, config.mode, config.model.dropout, config.train.ema_decay) == (
        teacher.data.name,
        "distill",
        0.0,
        0.0,
    )
    assert (config.distill.start_steps, config.train.batch_size, config.optim.learning_rate) == (start, batch, lr)
    assert distill.student_steps(config.distill.start_steps, config.distill.final_steps)[-1] == 1
    assert (config.optim.schedule, config.optim.warmup_steps) == ("linear", 0)
    if name != "digits":
        assert (config.distill.updates_per_round, config.distill.updates_last_rounds) == (50_000, 100_000)
        fast = config_file(f"{name}_distill", "fast")
        assert (fast.distill.updates_per_round, fast.distill.updates_last_rounds) == (10_000, 10_000)


def test_labels_reach_teacher_and_student_of_a_class_conditional_model():
    config = config_file("digits_distill")
    config.model.ch, config.model.head_dim, config.model.class_conditional = 8, 16, True
    params = build.init_params(config, jax.random.key(0))
    # Non-zero output layers, so that the class embedding shows in every output.
    params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(1), p.shape), params)
    loss = jax.jit(build.distillation_loss(config, 4))
    x = jax.random.uniform(jax.random.key(2), (8, 8, 8, 1), minval=-1, maxval=1)
    key = jax.random.key(3)
    labels = jnp.arange(8) % 10
    same = float(loss(params, {"image": x, "label": labels}, key, params)[0])
    other = float(loss(params, {"image": x, "label": (labels + 1) % 10}, key, params)[0])
    # A student identical to its teacher still misses x-tilde (two steps are not one), and by a
    # different amount when the class changes what both networks see.
    assert same > 0 and abs(same - other) > 1e-6 * same, (same, other)
