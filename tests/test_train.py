"""Teacher training: the loss goes down, EMA moves, resume is exact, 4 devices equal 1."""

import os
import shutil
import textwrap

import jax
import numpy as np
from conftest import config_file, run_on_cpu_devices

from pdist import build, parallel, train, train_step
from pdist.data import train_batches


def small_config(tfds_dir, **train_overrides):
    config = config_file("digits")
    config.data.data_dir = tfds_dir
    config.model.ch = 8
    config.model.head_dim = 16
    config.train.batch_size = 64
    config.train.sample_every = 0
    config.train.num_grid_samples = 4
    config.sample.num_steps = 4
    config.sample.num_samples = 8
    for k, v in train_overrides.items():
        config.train[k] = v
    return config


def test_loss_decreases_and_ema_moves(tfds_dir):
    config = small_config(tfds_dir, num_steps=300)
    mesh = parallel.data_mesh()
    init_fn, tx = build.state_init(config)
    state = train_step.create_state(init_fn, mesh)
    step = train_step.compile_step(train_step.make_train_step(build.loss_fn(config), tx, ema_decay=0.99), mesh)
    batches = train_batches(config, local_batch_size=64)
    key = jax.random.key(0)
    losses = []
    for _ in range(300):
        state, metrics = step(state, parallel.global_batch(next(batches), mesh), key)
        losses.append(metrics["loss"])
    losses = np.asarray(jax.device_get(losses))
    first, last = losses[:20].mean(), losses[-20:].mean()
    assert last < 0.6 * first, (first, last)
    assert int(state.step) == 300
    diff = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), state.params, state.ema_params)
    assert max(jax.tree.leaves(diff)) > 1e-4


def test_resume_continues_and_matches_the_uninterrupted_run(tfds_dir, tmp_path):
    config = small_config(tfds_dir, num_steps=12, checkpoint_every=6, log_every=3)
    whole = train.train_and_evaluate(config, str(tmp_path / "whole"))
    # A run stopped after step 6: its workdir holds only that checkpoint.
    cut = tmp_path / "cut" / "checkpoints"
    os.makedirs(cut)
    shutil.copytree(tmp_path / "whole" / "checkpoints" / "6", cut / "6")
    resumed = train.train_and_evaluate(config, str(tmp_path / "cut"))
    assert int(resumed.step) == int(whole.step) == 12
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert sorted(os.listdir(cut)) == ["12", "6"]
    assert os.path.exists(tmp_path / "cut" / "samples.npz")


FOUR_DEVICES = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, "tests")
    from conftest import config_file
    from pdist import build, parallel, train_step

    config = config_file("digits")
    config.model.ch = 8
    config.model.head_dim = 16
    config.model.dropout = 0.0
    rng = np.random.default_rng(0)
    batch = {"image": rng.uniform(-1, 1, (16, 8, 8, 1)).astype(np.float32),
             "label": rng.integers(0, 10, 16).astype(np.int32)}
    results, traces = {}, {}
    for n in (1, 4):
        mesh = parallel.data_mesh(jax.devices()[:n])
        init_fn, tx = build.state_init(config)
        state = train_step.create_state(init_fn, mesh)
        count = [0]
        loss = build.loss_fn(config)
        def counted(*args):
            count[0] += 1
            return loss(*args)
        step = train_step.compile_step(train_step.make_train_step(counted, tx, ema_decay=0.9), mesh)
        for _ in range(3):
            state, _ = step(state, parallel.global_batch(batch, mesh), jax.random.key(1))
        results[n] = [np.asarray(a) for a in jax.tree.leaves(state.params)]
        traces[n] = count[0]
        assert len(state.params["Conv_0"]["kernel"].sharding.device_set) == n
    err = max(float(np.max(np.abs(a - b))) for a, b in zip(results[1], results[4]))
    print(json.dumps({"devices": jax.device_count(), "max_err": err, "traces": traces[4]}))
    """
)


def test_four_devices_match_one_and_trace_once():
    result = run_on_cpu_devices(FOUR_DEVICES)
    assert result["devices"] == 4
    assert result["traces"] == 1
    assert result["max_err"] < 1e-5
