"""One process with 4 CPU devices: the 2-process run's config trained here from scratch (the same global batches,
whatever the process count), the 2-process run's step-3 checkpoint resumed here (elastic resume), and its
checkpoints restored and sampled here. ``one_process.py OUT TFDS_DIR``."""

import json
import os
import shutil
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from helpers import tiny_config  # noqa: E402

import pdist  # noqa: E402
from pdist import build  # noqa: E402
from pdist.data import train_batches  # noqa: E402
from pdist.jobs import train  # noqa: E402
from pdist.runtime import mesh as mesh_lib  # noqa: E402
from pdist.runtime import step as step_lib  # noqa: E402
from pdist.spec import ModelSpec  # noqa: E402

out, tfds = sys.argv[1], sys.argv[2]
config = tiny_config(tfds)
init_fn, _ = build.state_init(config, ModelSpec.of(config))
initial = [np.array(a) for a in jax.tree.leaves(step_lib.create_state(init_fn, mesh_lib.data_mesh()).params)]
first = next(train_batches(config, local_batch_size=16))
mine = [np.asarray(a) for a in jax.tree.leaves(train.run(config, f"{out}/one_process").params)]
shutil.copytree(f"{out}/teacher", f"{out}/elastic_back")
shutil.rmtree(f"{out}/elastic_back/checkpoints/6")  # the 2-process run as it was at step 3
back = [np.asarray(a) for a in jax.tree.leaves(train.run(config, f"{out}/elastic_back").params)]


def largest(a, b):
    return max(float(np.abs(np.asarray(x) - np.asarray(y)).max()) for x, y in zip(a, b, strict=True))


with np.load(f"{out}/teacher_0.npz") as f:
    theirs = [f[f"arr_{i}"] for i in range(len(f.files))]
with np.load(f"{out}/first_0.npz") as f0, np.load(f"{out}/first_1.npz") as f1:
    same_first = all(np.array_equal(np.concatenate([f0[k], f1[k]]), first[k]) for k in first)
restored = pdist.load(f"{out}/teacher")
student = pdist.load(f"{out}/distill")
x = restored.sample(10, num_steps=2, seed=3, batch_size=6)
print(json.dumps({
    "devices": jax.device_count(), "processes": jax.process_count(), "same_first_batch": same_first,
    "err_vs_two_processes": largest(mine, theirs), "moved": largest(mine, initial),
    "elastic_back_err": largest(back, theirs), "elastic_back_step": pdist.load(f"{out}/elastic_back").step,
    "restored_step": restored.step, "restored_err": largest(jax.tree.leaves(restored.params), theirs),
    "student_step": student.step, "student_sampling_steps": student.metadata["sampling_steps"],
    "samples_err": float(np.abs(x - np.load(f"{out}/samples_0.npy")).max()),
}))  # fmt: skip
