"""Distillation: progressive students reproduce their teacher's 2N steps in N; rounds halve, are tagged, resume
bit-identically (also after SIGTERM); the teacher stays frozen and every round runs one program, traced once; a
teacher that does not fit is refused in one sentence; every method of the table checks, schedules and trains."""

import json
import os
import shutil
import signal
import threading
import time

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import OPTIMIZED, assert_same_tree, config_file, nonzero_params, small_model
from PIL import Image

import pdist
from pdist import build, diffusion, losses, optim, oracles, samplers
from pdist import schedules as sc
from pdist.config import base_config
from pdist.distillation import DISTILLERS, Round, progressive
from pdist.errors import ConfigError, Preempted
from pdist.jobs import distill, validate
from pdist.pretrained import restore
from pdist.runtime import layout, preemption
from pdist.runtime import mesh as mesh_lib
from pdist.runtime import step as step_lib
from pdist.spec import ModelSpec

# --- 2-D mixture with a small MLP teacher, through the same train step -------------------------------


class _MLP(nn.Module):
    @nn.compact
    def __call__(self, z, t):
        k = jnp.arange(1, 9, dtype=jnp.float32)
        h = jnp.concatenate([z, t[:, None], jnp.sin(jnp.pi * k * t[:, None]), jnp.cos(jnp.pi * k * t[:, None])], -1)
        for _ in range(3):
            h = nn.silu(nn.Dense(128)(h))
        return nn.Dense(2)(h)


@pytest.mark.heavy
def test_students_reproduce_their_teachers_two_steps_on_a_2d_mixture():
    net, schedule, data = _MLP(), sc.CosineLogSNR(), oracles.mixture_2d()
    apply_fn = lambda p, z, t, label, key: net.apply({"params": p}, z, t)  # noqa: E731

    def fit(loss_fn, params, steps, lr, batch, seed, *loss_args):
        settings = base_config().optim  # Adam, linear decay from lr to 0 over the steps, no clipping
        settings.learning_rate, settings.warmup_steps, settings.schedule, settings.grad_clip = lr, 0, "linear", 0.0
        optimizer = optim.optimizer(settings, steps)
        step = step_lib.make_train_step(loss_fn, optimizer, ema_decay=0.0)

        def body(state, i):
            x = data.sample(jax.random.fold_in(jax.random.key(seed), i), batch)
            return step(state, {"image": x}, jax.random.key(seed + 1), optimizer.args, *loss_args)[0], None

        run = jax.jit(lambda s: jax.lax.scan(body, s, jnp.arange(steps))[0], compiler_options=OPTIMIZED)
        return run(step_lib.init_state(params, optimizer.tx)).params

    def denoise(params, z, t):
        return diffusion.predict(apply_fn(params, z, t, None, None), z, schedule.logsnr(t), parameterization="v")

    def ddim(params, noise, n):  # the parameters are an argument: one program per step count
        den = jax.tree_util.Partial(denoise, params)
        return np.asarray(samplers.sample(den, schedule, noise, method="ddim", num_steps=n), np.float64)

    def rmse(a, b):
        return float(np.sqrt(np.mean((a - b) ** 2)))

    init = net.init(jax.random.key(0), jnp.zeros((1, 2)), jnp.zeros((1,)))["params"]
    teacher_loss = losses.make_diffusion_loss(apply_fn, schedule, parameterization="v", weighting="snr_plus_one")
    teacher = fit(teacher_loss, init, 800, 2e-3, 1024, 0)
    noise = jax.random.normal(jax.random.key(9), (2000, 2))
    start = ddim(teacher, noise, 8)
    # The teacher learned the data: its 8-step samples sit near the exact 8-step probability-flow map.
    assert rmse(start, oracles.exact_sample(data, schedule, noise, 8)) < 0.15

    current, errors = teacher, {}
    for n in (4, 2, 1):
        loss = progressive.make_loss(apply_fn, schedule, parameterization="v", weighting="snr_plus_one")
        student = fit(loss, current, 200, 1e-3, 256, 100 + n, current, n)
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
    small_model(config)  # the architecture of the small_teacher fixture
    config.data.data_dir = tfds_dir
    config.train.batch_size = 32
    return config


def _distill_config(tfds_dir, teacher_dir):
    config = _tiny(config_file("digits_distill"), tfds_dir)
    config.distill.teacher = teacher_dir
    config.distill.start_steps = 4  # two rounds: 4 -> 2 (4 updates), 2 -> 1 (6 updates)
    config.distill.updates_per_round = 4
    config.distill.updates_last_rounds = 6
    config.distill.fidelity_samples = 16
    config.distill.grid_samples = 4
    config.train.log_every = 2
    config.train.checkpoint_every = 2
    return config


@pytest.fixture(scope="module")
def teacher_dir(small_teacher):
    return small_teacher


@pytest.fixture(scope="module")
def whole(tmp_path_factory, tfds_dir, teacher_dir):
    path = str(tmp_path_factory.mktemp("distill_whole"))
    rows = distill.run(_distill_config(tfds_dir, teacher_dir), path)
    return path, rows


@pytest.mark.heavy
def test_rounds_halve_and_each_student_is_tagged_and_samples_with_its_steps(whole):
    path, rows = whole
    assert [(w["round"], w["teacher_steps"], w["steps"], w["updates"]) for w in rows] == [(1, 4, 2, 6), (2, 2, 1, 6)]
    assert sorted(n for n in os.listdir(path) if n.startswith("round_")) == ["round_01_2steps", "round_02_1steps"]
    for w in rows:
        student = pdist.load(layout.round_dir(path, w["round"], w["steps"]))
        assert student.step == w["updates"]
        assert (student.metadata["round"], student.metadata["sampling_steps"]) == (w["round"], w["steps"])
        assert np.isfinite(w["final_loss"]) and w["rmse_student"] >= 0
    with open(os.path.join(path, "summary.json")) as f:
        assert json.load(f) == rows
    assert os.path.exists(os.path.join(path, "summary.md"))
    with Image.open(os.path.join(path, "rounds.png")) as png:  # teacher and 2 rounds, titled, at a legible size
        assert png.size[0] >= 3 * 150 and png.size[1] >= 200, png.size
    # The workdir stands for its newest student, which samples with its own step count by default.
    newest = pdist.load(path)
    assert newest.metadata["sampling_steps"] == 1 and repr(newest).startswith("<pdist student (1 step): unet on ")
    round_1 = pdist.load(os.path.join(path, "round_01_2steps"))
    assert repr(round_1).startswith("<pdist student (2 steps): unet on ")
    x = round_1.sample(8, seed=1)
    np.testing.assert_array_equal(x, round_1.sample(8, seed=1, method="ddim", num_steps=2, grid="uniform"))
    assert not np.array_equal(x, round_1.sample(8, seed=1, method="ddim", num_steps=4))
    assert round_1.grid() == "uniform"  # the grid it was trained on
    # The round's fidelity samples are that student's 2-step DDIM samples of the fixed noise.
    fixed = np.load(os.path.join(path, "round_01_2steps", "samples.npz"))["samples"]
    np.testing.assert_allclose(round_1.sample(16, seed=0), fixed, atol=1e-6)


def test_a_run_interrupted_in_round_2_resumes_to_identical_parameters(whole, tmp_path, tfds_dir, teacher_dir):
    path, rows = whole
    cut = tmp_path / "cut"
    os.makedirs(cut / "round_02_1steps" / "checkpoints")
    shutil.copy(os.path.join(path, "teacher_4steps.npz"), cut)
    shutil.copytree(os.path.join(path, "round_01_2steps"), cut / "round_01_2steps")
    shutil.copytree(
        os.path.join(path, "round_02_1steps", "checkpoints", "2"), cut / "round_02_1steps" / "checkpoints" / "2"
    )
    events_before = sorted(os.listdir(cut / "round_01_2steps"))
    resumed = distill.run(_distill_config(tfds_dir, teacher_dir), str(cut))
    assert sorted(os.listdir(cut / "round_01_2steps")) == events_before  # round 1 was not run again
    strip = lambda rs: [{k: v for k, v in w.items() if k != "seconds"} for w in rs]  # noqa: E731
    assert strip(resumed) == strip(rows)
    a, b = pdist.load(os.path.join(path, "round_02_1steps")), pdist.load(str(cut / "round_02_1steps"))
    assert a.step == b.step
    assert_same_tree(a.params, b.params)
    # Rerunning a finished distillation trains nothing and changes nothing.
    again = distill.run(_distill_config(tfds_dir, teacher_dir), str(cut))
    assert again == resumed


@pytest.mark.heavy
def test_sigterm_in_round_2_saves_and_the_rerun_is_bit_identical(whole, tmp_path, tfds_dir, teacher_dir):
    path, rows = whole
    cut = tmp_path / "cut"
    shutil.copytree(path, cut, ignore=lambda d, names: [n for n in names if n.startswith("round_02")])
    mark, done = cut / "round_02_1steps" / "checkpoints" / "2", threading.Event()

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
                distill.run(_distill_config(tfds_dir, teacher_dir), str(cut))
        finally:
            done.set()
            watcher.join()
    resumed = distill.run(_distill_config(tfds_dir, teacher_dir), str(cut))
    strip = lambda rs: [{k: v for k, v in w.items() if k != "seconds"} for w in rs]  # noqa: E731
    assert strip(resumed) == strip(rows)
    a, b = pdist.load(os.path.join(path, "round_02_1steps")), pdist.load(str(cut / "round_02_1steps"))
    assert a.step == b.step
    assert_same_tree((a.params, a.ema_params), (b.params, b.ema_params))


def test_the_teacher_stays_frozen_and_every_round_runs_one_program(tfds_dir, teacher_dir, tmp_path, monkeypatch):
    config = _distill_config(tfds_dir, teacher_dir)
    mesh = mesh_lib.data_mesh()
    teacher = restore(teacher_dir, mesh=mesh).state.ema_params
    before = [np.array(a) for a in jax.tree.leaves(teacher)]
    make = build.distillation_loss

    def traced_once(spec, config, rnd):
        loss = make(spec, config, rnd)
        return losses.Loss(chex.assert_max_traces(loss.fn, n=1), loss.draw)  # a second trace raises

    chex.clear_trace_counter()
    monkeypatch.setattr(build, "distillation_loss", traced_once)
    rnd = Round(index=1, student_steps=4, teacher_steps=8, updates=4)
    result = distill.run_round(config, ModelSpec.of(config), str(tmp_path / "round"), rnd, teacher, mesh)
    assert int(result.state.step) == 4 and result.metadata["sampling_steps"] == 4
    for a, b in zip(before, jax.tree.leaves(teacher), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))
    moved = [
        float(np.max(np.abs(a - np.asarray(b))))
        for a, b in zip(before, jax.tree.leaves(result.state.params), strict=True)
    ]
    assert max(moved) > 0  # ... while the student, which started as its copy, did move
    # The next round (another step count, the student as its teacher) runs the same program: no second trace.
    nxt = Round(index=2, student_steps=2, teacher_steps=4, updates=2)
    second = distill.run_round(config, ModelSpec.of(config), str(tmp_path / "round2"), nxt, result.state.params, mesh)
    assert int(second.state.step) == 2 and second.metadata["sampling_steps"] == 2


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
        distill.run(config, str(tmp_path / "w"))
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
        ({"model.class_conditional": True, "train.label_dropout": 0.1}, "progressive distillation does not distill"),
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
    config.train.label_dropout = 0.0
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
    assert progressive.rounds(config.distill)[-1].student_steps == 1
    assert (config.optim.schedule, config.optim.warmup_steps) == ("linear", 0)
    if name != "digits":
        assert (config.distill.updates_per_round, config.distill.updates_last_rounds) == (50_000, 100_000)
        fast = config_file(f"{name}_distill", "fast")
        assert (fast.distill.updates_per_round, fast.distill.updates_last_rounds) == (10_000, 10_000)


def test_labels_reach_teacher_and_student_of_a_class_conditional_model():
    config = small_model(config_file("digits_distill"))
    config.model.class_conditional = True
    # Non-zero output layers, so that the class embedding shows in every output.
    params = nonzero_params(config)
    rnd = Round(index=1, student_steps=4, teacher_steps=8, updates=1)
    loss = jax.jit(build.distillation_loss(ModelSpec.of(config), config, rnd))
    x = jax.random.uniform(jax.random.key(2), (8, 8, 8, 1), minval=-1, maxval=1)
    key = jax.random.key(3)
    labels = jnp.arange(8) % 10
    same = float(loss(params, {"image": x, "label": labels}, key, params, 4)[0])
    other = float(loss(params, {"image": x, "label": (labels + 1) % 10}, key, params, 4)[0])
    # A student identical to its teacher still misses x-tilde (two steps are not one), and by a
    # different amount when the class changes what both networks see.
    assert same > 0 and abs(same - other) > 1e-6 * same, (same, other)


# Each method's digits config (a new method adds its row).
METHOD_CONFIGS = {"progressive": "digits_distill", "guided": "digits_cond_guided", "consistency": "digits_consistency"}


@pytest.mark.parametrize("name", sorted(DISTILLERS))
def test_every_distillation_method_checks_schedules_and_trains(name):
    assert set(METHOD_CONFIGS) == set(DISTILLERS)
    method = DISTILLERS[name]
    config = _tiny(config_file(METHOD_CONFIGS[name]), None)
    config.distill.method, config.distill.teacher = name, "anywhere"
    validate(config)
    rounds = method.rounds(config.distill)
    assert [r.index for r in rounds] == list(range(1, len(rounds) + 1))
    assert all(r.student_steps <= r.teacher_steps and r.updates > 0 for r in rounds)
    assert rounds[-1].student_steps == config.distill.final_steps
    steps = [r.student_steps for r in rounds]
    assert steps == sorted(set(steps), reverse=True)  # fewer steps every round
    # The round's loss takes the teacher's parameters as an argument, and a gradient step on it lowers it.
    teacher = nonzero_params(config)
    student = ModelSpec.of(method.student(config))  # the student's network
    teacher = build.student_params(student, teacher, jax.random.key(4))
    loss_fn = build.distillation_loss(student, config, rounds[-1])
    loss = jax.jit(loss_fn)
    batch = {"image": jax.random.uniform(jax.random.key(2), (16, 8, 8, 1), minval=-1, maxval=1)}
    if config.model.class_conditional:
        batch["label"] = jnp.arange(16) % 10
    key = jax.random.key(3)
    # a loss with a target network (consistency) takes it last: the student's start, the teacher
    args = (teacher, rounds[-1].student_steps) + (() if loss_fn.target_decay is None else (teacher,))
    value, grads = jax.jit(jax.value_and_grad(lambda p: loss(p, batch, key, *args)[0]))(teacher)
    lower = float(loss(jax.tree.map(lambda p, g: p - 1e-3 * g, teacher, grads), batch, key, *args)[0])
    assert 0 < lower < float(value)
    # Its report is a row of its summary.
    x = np.zeros((4, 8, 8, 1))
    row = method.report(rounds[0], student=x, teacher=x + 0.1, target=x, final_loss=0.5, seconds=60.0)
    assert row["round"] == 1 and str(rounds[0].student_steps) in method.summary([row])
    config.distill.method = "no_such_method"
    with pytest.raises(ConfigError, match="config.distill.method='no_such_method' is not valid"):
        validate(config)


def test_a_rounds_line_says_what_it_measured_in_words():
    row = {"round": 8, "steps": 1, "teacher_steps": 2, "updates": 800, "final_loss": 0.01129,
           "rmse_student": 0.1005, "rmse_teacher": 0.3001, "seconds": 95.2}  # fmt: skip
    assert distill._brief(row) == (
        "2 -> 1 steps, 800 updates, final loss 0.01129; RMSE to the teacher's 2-step samples 0.1005 "
        "(the teacher's own 1 step: 0.3001), 95 s"
    )
    row.update(steps=2, teacher_steps=4, rmse_teacher=None, seconds=None)
    assert (
        distill._brief(row)
        == "4 -> 2 steps, 800 updates, final loss 0.01129; RMSE to the teacher's 4-step samples 0.1005"
    )


@pytest.mark.parametrize(
    "name, variant",
    [("digits_distill", None), ("digits_distill", "digits_cond"), ("digits_consistency", None),
     ("digits_consistency", "digits_cond"), ("digits_cond_guided", None)],
)  # fmt: skip
def test_the_digits_distillation_configs_validate_for_both_teachers(name, variant):
    """Each file and ``file:digits_cond`` variant the docs give passes the checks a run makes first: a progressive
    student of the conditional teacher drops its label dropout (it distills w = 0), a guided one keeps it."""
    config = config_file(name, variant)
    validate(config)
    if config.distill.method == "guided":
        assert config.train.label_dropout > 0
    elif config.distill.method == "progressive":
        assert config.train.label_dropout == 0
