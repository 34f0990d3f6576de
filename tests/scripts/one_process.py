"""One process with 4 CPU devices: the 2-process run's steps on the same global batches (process 0's rows, then
1's), then its checkpoints restored and sampled here. ``one_process.py OUT TFDS_DIR``."""

import json
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from helpers import tiny_config  # noqa: E402

import pdist  # noqa: E402
from pdist import build, rng  # noqa: E402
from pdist.data import train_batches  # noqa: E402
from pdist.runtime import mesh as mesh_lib  # noqa: E402
from pdist.runtime import step as step_lib  # noqa: E402

out, tfds = sys.argv[1], sys.argv[2]
config = tiny_config(tfds)
mesh = mesh_lib.data_mesh()
init_fn, optimizer = build.state_init(config)
state = step_lib.create_state(init_fn, mesh)
initial = [np.array(a) for a in jax.tree.leaves(state.params)]  # a copy: the step donates the state
step = step_lib.compile_step(
    step_lib.make_train_step(build.loss(config), optimizer, ema_decay=config.train.ema_decay), mesh
)
shards = [train_batches(config, local_batch_size=8, process_index=i, process_count=2) for i in range(2)]
for _ in range(config.train.num_steps):
    local = [next(s) for s in shards]
    batch = {k: np.concatenate([b[k] for b in local]) for k in local[0]}
    state, _ = step(state, mesh_lib.global_batch(batch, mesh), rng.phase_key(config.seed, rng.TEACHER), optimizer.args)
mine = [np.asarray(a) for a in jax.tree.leaves(state.params)]
with np.load(f"{out}/teacher_0.npz") as f:
    theirs = [f[f"arr_{i}"] for i in range(len(f.files))]
restored = pdist.load(f"{out}/teacher")
student = pdist.load(f"{out}/distill")
x = restored.sample(10, num_steps=2, seed=3, batch_size=6)
leaves = jax.tree.leaves(restored.params)
print(json.dumps({
    "devices": jax.device_count(), "processes": jax.process_count(),
    "err_vs_two_processes": max(float(np.abs(a - b).max()) for a, b in zip(mine, theirs, strict=True)),
    "moved": max(float(np.abs(a - b).max()) for a, b in zip(mine, initial, strict=True)),
    "restored_step": restored.step,
    "restored_err": max(float(np.abs(np.asarray(a) - b).max()) for a, b in zip(leaves, theirs, strict=True)),
    "student_step": student.step, "student_sampling_steps": student.metadata["sampling_steps"],
    "samples_err": float(np.abs(x - np.load(f"{out}/samples_0.npy")).max()),
}))  # fmt: skip
