"""Teacher training: the loss goes down, EMA moves (the debiased average of the iterates), resume is exact, 4 devices equal 1, every learning-rate
schedule gives the rates its formula says (its numbers are data: runs of other lengths and rates share the
compiled step, and SGD applies the rate to the gradient), a workdir written before the run-layer refactor still serves,
and a checkpoint written by another release series of the stack loads with one warning line."""

import json
import os
import shutil

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import apply_fn, assert_same_tree, config_file, small_config, small_model, train_steps

import pdist
from pdist import losses, optim
from pdist.jobs import distill, train
from pdist.runtime import checkpoint
from pdist.runtime import step as step_lib


@pytest.mark.heavy
def test_loss_decreases_ema_moves_and_bfloat16_tracks_float32_with_float32_state(tfds_dir):
    config = small_config(tfds_dir, num_steps=120, batch_size=32)
    config.optim.learning_rate, config.optim.warmup_steps = 2e-3, 10  # measured: the last 20 at 0.57 of the first
    state, losses = train_steps(config, 120)
    first, last = losses[:20].mean(), losses[-20:].mean()
    assert last < 0.7 * first, (first, last)
    assert int(state.step) == 120
    diff = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), state.params, state.ema_params)
    assert max(jax.tree.leaves(diff)) > 1e-4

    # bfloat16 compute on the same batches, noise and dropout moves the loss by rounding only. Tolerance: 1e-3 of
    # the loss on 20-step means, a quarter of bfloat16's unit roundoff (2^-8 = 3.9e-3): independent rounding errors
    # average out over a loss of 2,048 pixels, so only a systematic one comes near it; and a quarter of the least
    # that drawing other noise does to the float32 run's means (0.4% to 2.3%, measured). Measured: at most 2.2e-4.
    bf16 = small_config(tfds_dir, num_steps=120, batch_size=32)
    bf16.optim.learning_rate, bf16.optim.warmup_steps = 2e-3, 10
    bf16.model.dtype = "bfloat16"
    state16, losses16 = train_steps(bf16, 120)
    means, means16 = losses.reshape(6, 20).mean(1), losses16.reshape(6, 20).mean(1)
    assert np.all(np.abs(means16 - means) < 1e-3 * means), (means16, means)
    assert {a.dtype for a in jax.tree.leaves((state16.params, state16.ema_params, state16.opt_state))} <= {
        jnp.dtype(jnp.float32),
        jnp.dtype(jnp.int32),
    }
    # The compute really is bfloat16: the same parameters in float32 give close but different outputs.
    z, t = jax.random.normal(jax.random.key(1), (8, 8, 8, 1)), jnp.linspace(0.1, 0.9, 8)
    out16 = apply_fn(bf16)(state16.params, z, t, None, None)
    out32 = apply_fn(config)(state16.params, z, t, None, None)
    rel = float(jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32))
    assert out16.dtype == jnp.float32 and 1e-4 < rel < 5e-2, rel


def test_resume_continues_and_matches_the_uninterrupted_run(tfds_dir, tmp_path):
    config = small_config(tfds_dir, num_steps=12, checkpoint_every=6, log_every=3)
    whole = train.run(config, str(tmp_path / "whole"))
    # A run stopped after step 6: its workdir holds only that checkpoint.
    cut = tmp_path / "cut" / "checkpoints"
    os.makedirs(cut)
    shutil.copytree(tmp_path / "whole" / "checkpoints" / "6", cut / "6")
    resumed = train.run(config, str(tmp_path / "cut"))
    assert int(resumed.step) == int(whole.step) == 12
    assert_same_tree(whole, resumed)
    assert sorted(os.listdir(cut)) == ["12", "6"]
    assert os.path.exists(tmp_path / "cut" / "samples.npz")
    # Both checkpoints at 12 logged the same windows: the same final loss in their metadata.
    assert pdist.load(str(tmp_path / "cut")).metadata["loss"] == pdist.load(str(tmp_path / "whole")).metadata["loss"]


def test_four_devices_match_one_and_trace_once(four_devices):
    result = four_devices["train"]  # chex.assert_max_traces(n=1) inside
    assert result["devices"] == 4
    assert result["max_err"] < 1e-5


@pytest.mark.parametrize("schedule", [s for s in optim.SCHEDULES if s != "refined"])  # refined: tests/test_refine.py
def test_every_learning_rate_schedule_follows_its_formula(schedule):
    config = config_file("digits").optim
    config.learning_rate, config.warmup_steps, config.schedule = 0.1, 10, schedule
    total = 110
    rate = optim.optimizer(config, total).learning_rate
    steps = np.arange(0, total + 1)
    got = np.asarray([float(rate(s)) for s in steps])
    z = np.clip((steps - 10) / 100, 0, 1)  # the fraction of the decay done after warm-up
    after = {
        "constant": np.full_like(z, 0.1),
        "linear": 0.1 * (1 - z),
        "cosine": 0.1 * 0.5 * (1 + np.cos(np.pi * z)),
        "rex": 0.1 * (1 - z) / (1 - z / 2),
    }[schedule]
    expected = np.where(steps < 10, 0.1 * steps / 10, after)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-8)
    assert got[0] == 0.0 and got[10] == pytest.approx(0.1)
    if schedule != "constant":
        assert got[-1] == pytest.approx(0.0, abs=1e-9)
    # The optimizer applies that rate: Adam's first update of a parameter with gradient g is -rate * sign(g).
    config.grad_clip = 0.0
    tx = optim.optimizer(config, total).tx
    params = np.zeros(3, np.float32)
    state = tx.init(params)
    for _ in range(12):
        updates, state = tx.update(np.array([1.0, -2.0, 0.5], np.float32), state, params)
    # After 12 steps of a constant gradient Adam's normalized direction is ~sign(g) (bias-corrected): rate(11).
    np.testing.assert_allclose(np.asarray(updates), -got[11] * np.sign([1.0, -2.0, 0.5]), rtol=1e-4)


def test_schedule_numbers_are_arguments_so_runs_of_any_length_and_rate_share_the_step():
    # A quadratic loss: the gradient of 0.5 |p - target|^2 is p - target, so plain SGD's update is exact.
    def fn(params, batch, key):
        loss = 0.5 * jnp.sum((params - batch["image"]) ** 2)
        return loss, losses.LossAux({"loss": loss})

    counted = chex.assert_max_traces(fn, n=1)  # raises on a second trace
    settings = config_file("digits").optim
    settings.optimizer, settings.schedule, settings.grad_clip = "sgd", "cosine", 0.0
    settings.learning_rate, settings.warmup_steps = 0.1, 3
    first = optim.optimizer(settings, 20)
    settings.learning_rate, settings.warmup_steps = 0.02, 0  # another run: other rate, no warm-up, 7 steps
    second = optim.optimizer(settings, 7)
    step = jax.jit(step_lib.make_train_step(losses.Loss(counted, lambda b, k, *_: b), first, ema_decay=0.0))
    target = np.array([1.0, -2.0, 0.5], np.float32)
    for optimizer, total in ((first, 20), (second, 7)):
        state = step_lib.init_state(jnp.zeros(3), optimizer.tx)
        for s in range(total):
            params = np.asarray(state.params)
            state, metrics = step(state, {"image": target}, jax.random.key(0), optimizer.args)
            rate = float(optimizer.learning_rate(s))
            assert float(metrics.scalars["learning_rate"]) == rate
            np.testing.assert_allclose(np.asarray(state.params), params - rate * (params - target), rtol=1e-6)
    assert float(first.learning_rate(1)) == pytest.approx(0.1 / 3, rel=1e-6)  # warm-up, step 1 of 3
    assert float(second.learning_rate(0)) == np.float32(0.02)  # no warm-up: the peak at once


@pytest.mark.parametrize("decay", [0.9, 0.999])
def test_the_ema_is_the_debiased_average_of_the_iterates_with_no_weight_on_the_initialization(decay):
    # SGD on a quadratic: every iterate differs; the EMA after T steps must be sum_t (1-b) b^(T-t) p_t / (1-b^T).
    def fn(params, batch, key):
        loss = 0.5 * jnp.sum((params - batch["image"]) ** 2)
        return loss, losses.LossAux({"loss": loss})

    settings = config_file("digits").optim
    settings.optimizer, settings.schedule, settings.grad_clip, settings.warmup_steps = "sgd", "constant", 0.0, 0
    settings.learning_rate = 0.05
    optimizer = optim.optimizer(settings, 30)
    step = jax.jit(step_lib.make_train_step(losses.Loss(fn, lambda b, k, *_: b), optimizer, ema_decay=decay))
    state = step_lib.init_state(jnp.full(3, 100.0), optimizer.tx)  # a far-away start the average must forget
    target = np.array([1.0, -2.0, 0.5], np.float32)
    iterates = []
    for t in range(1, 31):
        state, _ = step(state, {"image": target}, jax.random.key(0), optimizer.args)
        iterates.append(np.asarray(state.params, np.float64))
        w = (1 - decay) * decay ** np.arange(t - 1, -1, -1)
        want = (w[:, None] * np.array(iterates)).sum(0) / (1 - decay**t)
        np.testing.assert_allclose(np.asarray(state.ema_params), want, rtol=2e-5, atol=2e-5)
    assert np.allclose(iterates[0], [95.05, 94.9, 95.025])  # the first iterate, which the first EMA equals


@pytest.mark.heavy
def test_a_workdir_written_before_the_refactor_loads_resumes_and_teaches(legacy_teacher, tfds_dir, tmp_path):
    model = pdist.load(legacy_teacher)
    assert model.step == 4 and model.config.model.name == "unet"  # a key it was written without
    x = model.sample(4, method="ddim", num_steps=2, seed=0)
    assert x.shape == (4, 8, 8, 1) and np.isfinite(x).all()
    # It resumes: steps 5 and 6 train from its checkpoint.
    config = small_config(tfds_dir, num_steps=6, checkpoint_every=2, log_every=2, batch_size=16)
    config.model.num_res_blocks = 1  # the layout it was written with: width 8, one level with attention, one block
    config.model.attn_resolutions = (8,)
    config.sample.num_steps, config.sample.num_samples = 2, 4
    config.train.num_grid_samples = 4  # one program draws the grid, the samples and the 4 above
    state = train.run(config, legacy_teacher)
    assert int(state.step) == 6
    versions = pdist.load(legacy_teacher).metadata["versions"]  # the new checkpoints record their stack
    assert versions["jax"] == jax.__version__ and versions["pdist"] == pdist.__version__
    assert set(versions) == {*checkpoint.STACK, "pdist"} and "not installed" not in versions.values()
    moved = [float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in
             zip(jax.tree.leaves(state.params), jax.tree.leaves(model.params), strict=True)]  # fmt: skip
    assert max(moved) > 0
    # ... and it teaches: one distillation round from its step-4 checkpoint.
    student = small_model(config_file("digits_distill"))
    student.data.data_dir, student.model.num_res_blocks, student.train.batch_size = tfds_dir, 1, 16
    student.model.attn_resolutions = (8,)
    student.distill.teacher = os.path.join(legacy_teacher, "checkpoints", "4")
    student.distill.start_steps, student.distill.final_steps = 4, 2
    student.distill.updates_per_round = student.distill.updates_last_rounds = 2
    student.distill.fidelity_samples, student.train.log_every, student.train.checkpoint_every = 4, 1, 2
    (row,) = distill.run(student, str(tmp_path / "distill"))
    assert (row["round"], row["steps"], row["updates"]) == (1, 2, 2) and np.isfinite(row["final_loss"])


def test_release_series_and_a_checkpoint_from_another_stack_loads_with_one_warning_line(legacy_teacher, caplog):
    assert [checkpoint.series(v) for v in ("0.10.2", "0.11.0", "2.21.0", "2.3", "0.0.12", "1.0.0rc1")] == [
        (0, 10), (0, 11), (2,), (2,), (0, 0, 12), (1,)]  # fmt: skip
    installed = {"jax": "0.10.2", "flax": "0.12.8", "optax": "0.2.8", "pdist": "0.1.0"}
    saved = {"jax": "0.10.0", "flax": "0.11.2", "optax": "0.2.1", "pdist": "0.1.0", "gone": "1.0"}
    assert checkpoint.version_mismatch(saved, installed) == "flax 0.11.2 -> 0.12.8"
    assert checkpoint.version_mismatch(None, installed) == ""
    with caplog.at_level("WARNING"):
        pdist.load(legacy_teacher)  # written before versions were recorded: nothing to compare
    assert not caplog.records
    path = os.path.join(legacy_teacher, "checkpoints", "4", "metadata", "metadata")
    with open(path) as f:
        metadata = json.load(f)
    metadata["versions"] = {**checkpoint.versions(), "jax": "0.4.30", "flax": "0.8.5"}
    with open(path, "w") as f:
        json.dump(metadata, f)
    with caplog.at_level("WARNING"):
        model = pdist.load(legacy_teacher)
    (record,) = caplog.records
    message = record.getMessage()
    assert "\n" not in message and f"jax 0.4.30 -> {jax.__version__}" in message and "flax 0.8.5 -> " in message
    assert model.step == 4
