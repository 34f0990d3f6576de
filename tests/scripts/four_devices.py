"""What needs 4 forced CPU devices, in one process (an interpreter costs seconds of CPU; tests/conftest.py's
``four_devices`` fixture runs this once per test run and each test reads its section):

- ``train``: three train steps of the default layout on 1 device and on 4: the same parameters, one trace a mesh;
- ``accumulation``: gradient accumulation equals the undivided batch (teacher MSE, L_vlb with importance sampling,
  distillation);
- ``sampling``: sampling split over 4 devices gives the images one device gives (batches padded to the device count);
- ``ot``: the DPM-OT assignment and solve with the targets split over 4 devices give the one-device answers.
"""

import json
import os
import sys

import chex
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from helpers import config_file, init_params, perturb, tiny_config  # noqa: E402

from pdist import build, losses, optim, ot  # noqa: E402
from pdist.config import base_config  # noqa: E402
from pdist.distillation import Round  # noqa: E402
from pdist.distillation.recipes import for_distillation  # noqa: E402
from pdist.main import fewer_collections  # noqa: E402
from pdist.runtime import mesh as mesh_lib  # noqa: E402
from pdist.runtime import step as step_lib  # noqa: E402
from pdist.sampling import ImageSampler, Sampling  # noqa: E402
from pdist.spec import ModelSpec  # noqa: E402

fewer_collections()


def train() -> dict:
    config = config_file("digits")
    config.model.ch = 8
    config.model.head_dim = 16
    config.model.dropout = 0.0
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.uniform(-1, 1, (16, 8, 8, 1)).astype(np.float32),
        "label": rng.integers(0, 10, 16).astype(np.int32),
    }
    results = {}
    for n in (1, 4):
        chex.clear_trace_counter()  # chex counts per function code; each mesh builds its own loss
        mesh = mesh_lib.data_mesh(jax.devices()[:n])
        init_fn, optimizer = build.state_init(config, ModelSpec.of(config))
        state = step_lib.create_state(init_fn, mesh)
        loss = build.loss(config, ModelSpec.of(config))
        traced = losses.Loss(chex.assert_max_traces(loss.fn, n=1), loss.draw)  # raises on a second trace
        step = step_lib.compile_step(step_lib.make_train_step(traced, optimizer, ema_decay=0.9), mesh)
        for _ in range(3):
            state, _ = step(state, mesh_lib.global_batch(batch, mesh), jax.random.key(1), optimizer.args)
        results[n] = [np.asarray(a) for a in jax.tree.leaves(state.params)]
        assert len(state.params["Conv_0"]["kernel"].sharding.device_set) == n
    err = max(float(np.max(np.abs(a - b))) for a, b in zip(results[1], results[4], strict=True))
    return {"devices": jax.device_count(), "max_err": err}


def _accumulated(config, loss, devices, accum, loss_args=(), lr=0.5):
    mesh = mesh_lib.data_mesh(jax.devices()[:devices])
    init_fn, _ = build.state_init(config, ModelSpec.of(config))
    # Plain SGD at a constant rate: the update is the scaled gradient, so parameters compare gradients.
    settings = config.optim
    settings.optimizer, settings.learning_rate, settings.warmup_steps = "sgd", lr, 0
    settings.schedule, settings.grad_clip = "constant", 0.0
    optimizer = optim.optimizer(settings, 2)
    importance = build.importance_sampler(config)
    state = step_lib.create_state(lambda: step_lib.init_state(init_fn().params, optimizer.tx, importance), mesh)
    step = step_lib.compile_step(
        step_lib.make_train_step(loss, optimizer, ema_decay=0.9, importance=importance, accum_steps=accum), mesh
    )
    rng = np.random.default_rng(0)
    for _ in range(2):
        batch = {
            "image": rng.uniform(-1, 1, (16, 8, 8, 1)).astype(np.float32),
            "label": rng.integers(0, 10, 16).astype(np.int32),
        }
        args = [mesh_lib.put_replicated(a, mesh) for a in loss_args]
        state, metrics = step(state, mesh_lib.global_batch(batch, mesh), jax.random.key(3), optimizer.args, *args)
    return [np.asarray(a) for a in jax.tree.leaves(state)], jax.device_get(metrics.scalars)


def _compare(x, y):
    (sx, mx), (sy, my) = x, y
    # Largest difference per leaf, relative to the leaf's scale (the importance history holds terms ~1e4).
    return {
        "state": max(float(np.abs(a - b).max() / max(1.0, np.abs(a).max())) for a, b in zip(sx, sy, strict=True)),
        "loss": abs(float(mx["loss"]) / float(my["loss"]) - 1),
        "grad_norm": float(mx["grad_norm"]),
    }


def accumulation() -> dict:
    out = {}
    config = tiny_config()  # v-MSE, continuous time
    loss = build.loss(config, ModelSpec.of(config))
    out["mse"] = {"accum2_4dev": _compare(_accumulated(config, loss, 1, 1), _accumulated(config, loss, 4, 2))}

    vlb = tiny_config()  # learned variances, L_vlb with importance-sampled levels (per-example terms reassembled)
    vlb.diffusion.schedule, vlb.diffusion.num_timesteps = "cosine", 50
    vlb.diffusion.parameterization, vlb.diffusion.weighting = "eps", "snr"
    vlb.diffusion.learned_variance, vlb.diffusion.loss, vlb.diffusion.importance_sampling = True, "vlb", True
    loss = build.loss(vlb, ModelSpec.of(vlb))
    out["vlb"] = {
        "accum4_4dev": _compare(_accumulated(vlb, loss, 1, 1, lr=1e-6), _accumulated(vlb, loss, 4, 4, lr=1e-6))
    }

    student = for_distillation(tiny_config(), start_steps=8, batch_size=16, learning_rate=1e-4)
    teacher = perturb(init_params(student, jax.random.key(0)), jax.random.key(1), 0.05)  # compiled, not op by op
    loss = build.distillation_loss(
        ModelSpec.of(student), student, Round(index=1, student_steps=4, teacher_steps=8, updates=1)
    )
    out["distill"] = {
        "accum8": _compare(
            _accumulated(student, loss, 1, 1, (teacher, np.int32(4))),
            _accumulated(student, loss, 1, 8, (teacher, np.int32(4))),
        )
    }
    return out


def sampling() -> dict:
    config = base_config()
    config.model.ch, config.model.num_res_blocks = 8, 1
    params = init_params(config, jax.random.key(0))
    sampler = ImageSampler(ModelSpec.of(config))
    how = Sampling(method="ddim", num_steps=4, seed=5, batch_size=6)
    split = sampler(params, 10, how)  # batches of 6 and 4, padded to 8, 4
    single = ImageSampler(ModelSpec.of(config), mesh=mesh_lib.data_mesh(jax.devices()[:1]))(params, 10, how)
    return {
        "devices": sampler.mesh.devices.size,
        "err": float(np.abs(split - single).max()),
        "shape": list(split.shape),
    }


def optimal_transport() -> dict:
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    x, y = jax.random.normal(k1, (500, 16)), np.asarray(jax.random.normal(k2, (103, 16)))  # 103: padded to 104
    h = np.asarray(jax.random.normal(k3, (103,)))
    mesh = ot.target_mesh()
    ys = ot.shard_targets(y, mesh)
    one = np.asarray(ot.assign(x, y, h, chunk=16))
    split = np.asarray(ot.assign(x, ys, h, chunk=16, mesh=mesh))
    h_tied = h.copy()
    h_tied[52] = h[51]
    tied = np.concatenate([y[:52], y[51:52], y[53:]])  # rows 51 and 52 equal, on devices 1 and 2: a tie
    ties = np.asarray(ot.assign(jax.random.normal(k1, (5000, 16)), ot.shard_targets(tied, mesh), h_tied, mesh=mesh))
    settings = dict(samples=2_000, batch=1_000, tol=0.0, max_steps=5)
    alone = ot.solve(y, jax.random.key(4), **settings)
    sharded = ot.solve(y, jax.random.key(4), mesh=mesh, **settings)
    return {
        "devices": mesh.size,
        "rows_per_device": [s.data.shape[0] for s in ys.addressable_shards],
        "assign_mismatch": int(np.sum(one != split)),
        "assign_rows": sorted(set(one.tolist()))[-1],
        "ties_to_51": int(np.sum(ties == 51)),
        "ties_to_52": int(np.sum(ties == 52)),
        "solve_max_diff": float(np.max(np.abs(alone.potentials - sharded.potentials))),
        "solve_history_equal": alone.history == sharded.history,
    }


print(json.dumps({"train": train(), "accumulation": accumulation(), "sampling": sampling(), "ot": optimal_transport()}))
