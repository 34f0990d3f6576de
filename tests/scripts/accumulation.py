"""Gradient accumulation equals the undivided batch: teacher MSE, L_vlb with importance sampling, distillation."""

import json
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from helpers import tiny_config  # noqa: E402

from pdist import build, optim  # noqa: E402
from pdist.distillation import Round  # noqa: E402
from pdist.distillation.recipes import for_distillation  # noqa: E402
from pdist.runtime import mesh as mesh_lib  # noqa: E402
from pdist.runtime import step as step_lib  # noqa: E402
from pdist.spec import ModelSpec  # noqa: E402


def run(config, loss, devices, accum, loss_args=(), lr=0.5):
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


def compare(x, y):
    (sx, mx), (sy, my) = x, y
    # Largest difference per leaf, relative to the leaf's scale (the importance history holds terms ~1e4).
    return {
        "state": max(float(np.abs(a - b).max() / max(1.0, np.abs(a).max())) for a, b in zip(sx, sy, strict=True)),
        "loss": abs(float(mx["loss"]) / float(my["loss"]) - 1),
        "grad_norm": float(mx["grad_norm"]),
    }


out = {}
config = tiny_config()  # v-MSE, continuous time
loss = build.loss(config, ModelSpec.of(config))
out["mse"] = {"accum2_4dev": compare(run(config, loss, 1, 1), run(config, loss, 4, 2))}

vlb = tiny_config()  # learned variances, L_vlb with importance-sampled levels (per-example terms reassembled)
vlb.diffusion.schedule, vlb.diffusion.num_timesteps = "cosine", 50
vlb.diffusion.parameterization, vlb.diffusion.weighting = "eps", "snr"
vlb.diffusion.learned_variance, vlb.diffusion.loss, vlb.diffusion.importance_sampling = True, "vlb", True
loss = build.loss(vlb, ModelSpec.of(vlb))
out["vlb"] = {"accum4_4dev": compare(run(vlb, loss, 1, 1, lr=1e-6), run(vlb, loss, 4, 4, lr=1e-6))}

student = for_distillation(tiny_config(), start_steps=8, batch_size=16, learning_rate=1e-4)
params = ModelSpec.of(student).init_params(jax.random.key(0))
teacher = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(1), p.shape), params)
loss = build.distillation_loss(
    ModelSpec.of(student), student, Round(index=1, student_steps=4, teacher_steps=8, updates=1)
)
out["distill"] = {"accum8": compare(run(student, loss, 1, 1, (teacher,)), run(student, loss, 1, 8, (teacher,)))}
print(json.dumps(out))
