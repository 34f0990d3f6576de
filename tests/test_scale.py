"""Scaling out: two processes over gloo equal one, gradient accumulation equals the big batch,
bfloat16 compute still trains, rematerialization changes nothing but memory."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, run_on_cpu_devices
from test_train import small_config

from pdist import build, distributed, parallel, train_step
from pdist.data import train_batches


def tiny_config(tfds_dir=None):
    config = small_config(tfds_dir, batch_size=16, num_steps=6, checkpoint_every=3, log_every=2)
    config.optim.warmup_steps = 2
    config.sample.num_steps, config.sample.num_samples = 2, 6
    return config


# Run by launch/local.sh in each of 2 processes with 2 CPU devices each; it appends the coordinator flags.
TWO_PROCESSES = """
import argparse, json, os, sys
import numpy as np
parser = argparse.ArgumentParser()
for name in ("out", "tfds", "--coordinator_address"):
    parser.add_argument(name)
parser.add_argument("--num_processes", type=int)
parser.add_argument("--process_id", type=int)
args = parser.parse_args(sys.argv[1:])
from pdist import distributed
assert distributed.initialize(
    "auto", coordinator_address=args.coordinator_address, num_processes=args.num_processes, process_id=args.process_id
)
import jax
sys.path.insert(0, "tests")
from test_scale import tiny_config
from pdist import config as config_lib, distill, evaluate, pretrained, train
from pdist.data import pipeline

out, rank = args.out, jax.process_index()
config = tiny_config(args.tfds)
record = {"processes": jax.process_count(), "devices": jax.device_count(), "local_devices": jax.local_device_count()}

shard = pipeline.load_split("digits", pipeline.process_split("train", rank, 2), args.tfds, 8, 1)["image"]
first = next(pipeline.train_batches(config, local_batch_size=8, process_index=rank, process_count=2))["image"]
np.savez(f"{out}/shard_{rank}.npz", shard=shard, first=first)

state = train.train_and_evaluate(config, f"{out}/teacher")
np.savez(f"{out}/teacher_{rank}.npz", *[np.asarray(a) for a in jax.tree.leaves(state.params)])

dcfg = config_lib.for_distillation(
    tiny_config(args.tfds), start_steps=4, batch_size=16, learning_rate=1e-4, updates_per_round=3,
    updates_last_rounds=3,
)
dcfg.distill.final_steps = 2
dcfg.distill.teacher = f"{out}/teacher"
dcfg.distill.fidelity_samples = 6
dcfg.distill.grid_samples = 4
record["rounds"] = distill.distill(dcfg, f"{out}/distill")

ecfg = tiny_config(args.tfds)
ecfg.mode = "eval"
ecfg.eval.samplers = "ddim:2"
ecfg.eval.num_samples = 10
ecfg.eval.num_seeds = 1
ecfg.eval.pr_samples = 10
ecfg.eval.is_splits = 1
ecfg.eval.batch_size = 6  # batches of 6 and 4 images over 4 devices: padded to 8, and 4
result = evaluate.run(ecfg, f"{out}/teacher")
record["fd"] = result["rows"][0]["fd"]["mean"]
x = pretrained.load(f"{out}/teacher").sample(10, num_steps=2, seed=3, batch_size=6)
np.save(f"{out}/samples_{rank}.npy", x)
with open(f"{out}/record_{rank}.json", "w") as f:
    json.dump(record, f)
"""

# One process with 4 CPU devices: the same steps on the same global batches (process 0's rows, then 1's),
# then the 2-process run's checkpoints restored and sampled here.
ONE_PROCESS = """
import json, sys
import jax, numpy as np
sys.path.insert(0, "tests")
from test_scale import tiny_config
import pdist
from pdist import build, parallel, train, train_step
from pdist.data import train_batches

out, tfds = sys.argv[1], sys.argv[2]
config = tiny_config(tfds)
mesh = parallel.data_mesh()
init_fn, tx = build.state_init(config)
state = train_step.create_state(init_fn, mesh)
step = train.compiled_step(config, tx, mesh)
shards = [train_batches(config, local_batch_size=8, process_index=i, process_count=2) for i in range(2)]
for _ in range(config.train.num_steps):
    local = [next(s) for s in shards]
    batch = {k: np.concatenate([b[k] for b in local]) for k in local[0]}
    state, _ = step(state, parallel.global_batch(batch, mesh), train.step_key(config))
mine = [np.asarray(a) for a in jax.tree.leaves(state.params)]
theirs = np.load(f"{out}/teacher_0.npz")
theirs = [theirs[f"arr_{i}"] for i in range(len(theirs.files))]
restored = pdist.load(f"{out}/teacher")
student = pdist.load(f"{out}/distill")
x = restored.sample(10, num_steps=2, seed=3, batch_size=6)
print(json.dumps({
    "devices": jax.device_count(), "processes": jax.process_count(),
    "err_vs_two_processes": max(float(np.abs(a - b).max()) for a, b in zip(mine, theirs)),
    "restored_step": restored.step,
    "restored_err": max(float(np.abs(np.asarray(a) - b).max()) for a, b in zip(jax.tree.leaves(restored.params), theirs)),
    "student_step": student.step, "student_sampling_steps": student.metadata["sampling_steps"],
    "samples_err": float(np.abs(x - np.load(f"{out}/samples_0.npy")).max()),
}))
"""


def test_two_processes_train_distill_and_evaluate_like_one(tmp_path, tfds_dir, evaluator_cache):
    from pdist.evaluation import DigitsEvaluator

    DigitsEvaluator(data_dir=tfds_dir, cache_dir=evaluator_cache)  # trained once here, read by the processes
    out = tmp_path / "run"
    out.mkdir()
    launch = os.path.join(REPO, "launch", "local.sh")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    command = [launch, "-n", "2", "-d", "2", "-l", str(tmp_path / "logs"), "--"]
    run = subprocess.run(
        [*command, "python", "-c", TWO_PROCESSES, str(out), tfds_dir],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    records = [json.loads((out / f"record_{i}.json").read_text()) for i in range(2)]
    for r in records:
        assert (r["processes"], r["devices"], r["local_devices"]) == (2, 4, 2)

    # Disjoint shards that together are the split; each process's batches come from its own shard.
    from pdist.data.pipeline import load_split

    whole = load_split("digits", "train", tfds_dir, 8, 1)["image"].reshape(-1, 64)
    shards = [np.load(out / f"shard_{i}.npz") for i in range(2)]
    both = np.concatenate([s["shard"].reshape(-1, 64) for s in shards])
    assert len(both) == len(whole) and min(len(s["shard"]) for s in shards) >= len(whole) // 2
    assert np.array_equal(np.unique(both, axis=0), np.unique(whole, axis=0))
    assert sorted(map(bytes, both)) == sorted(map(bytes, whole))  # the same multiset of images
    for s in shards:
        own = {bytes(row) for row in s["shard"].reshape(-1, 64)}
        assert all(bytes(row) in own for row in s["first"].reshape(-1, 64))

    # Both processes hold the same parameters; process 0 alone wrote logs, grids and samples.
    a, b = np.load(out / "teacher_0.npz"), np.load(out / "teacher_1.npz")
    assert all(np.array_equal(a[k], b[k]) for k in a.files)
    teacher = out / "teacher"
    assert sorted(os.listdir(teacher / "checkpoints")) == ["3", "6"]
    assert len([f for f in os.listdir(teacher) if f.startswith("events.out")]) == 1
    assert os.listdir(teacher / "grids") == ["step_00000006.png"] and (teacher / "samples.npz").exists()

    # The round ran once, over both processes.
    rows = [[{k: v for k, v in row.items() if k != "seconds"} for row in r["rounds"]] for r in records]
    assert rows[0] == rows[1] and [r["steps"] for r in rows[0]] == [2]
    assert os.listdir(out / "distill" / "round_01_2steps" / "checkpoints") == ["3"]
    assert np.load(out / "distill" / "round_01_2steps" / "samples.npz")["samples"].shape == (6, 8, 8, 1)

    # Evaluation gathered all samples on both processes and wrote one report.
    assert records[0]["fd"] == records[1]["fd"] and np.isfinite(records[0]["fd"])
    (tag,) = os.listdir(teacher / "eval")
    report = json.loads((teacher / "eval" / tag / "eval.json").read_text())
    assert report["num_samples"] == 10 and report["rows"][0]["fd"]["mean"] == records[0]["fd"]
    x0, x1 = np.load(out / "samples_0.npy"), np.load(out / "samples_1.npy")
    assert x0.shape == (10, 8, 8, 1) and np.array_equal(x0, x1)

    # One process with 4 devices: the same updates from the same global batches, and it restores
    # and samples the 2-process checkpoints.
    single = run_on_cpu_devices(ONE_PROCESS.replace("sys.argv[1], sys.argv[2]", f"{str(out)!r}, {tfds_dir!r}"))
    assert (single["devices"], single["processes"]) == (4, 1)
    assert single["err_vs_two_processes"] < 1e-5, single
    assert single["restored_step"] == 6 and single["restored_err"] == 0.0
    assert (single["student_step"], single["student_sampling_steps"]) == (3, 2)
    assert single["samples_err"] < 1e-5, single


ACCUMULATION = """
import json, sys
import jax, numpy as np, optax
sys.path.insert(0, "tests")
from test_scale import tiny_config
from pdist import build, parallel, train_step
from pdist.config import for_distillation

def run(config, loss_fn, devices, accum, loss_args=(), lr=0.5):
    mesh = parallel.data_mesh(jax.devices()[:devices])
    init_fn, _ = build.state_init(config)
    tx = optax.sgd(lr)  # the update is the scaled gradient, so parameters compare gradients
    state = train_step.create_state(lambda: train_step.init_state(init_fn().params, tx, build.importance_sampler(config)), mesh)
    step = train_step.compile_step(train_step.make_train_step(
        loss_fn, tx, ema_decay=0.9, importance=build.importance_sampler(config), accum_steps=accum), mesh)
    rng = np.random.default_rng(0)
    for i in range(2):
        batch = {"image": rng.uniform(-1, 1, (16, 8, 8, 1)).astype(np.float32),
                 "label": rng.integers(0, 10, 16).astype(np.int32)}
        state, metrics = step(state, parallel.global_batch(batch, mesh), jax.random.key(3),
                              *[parallel.put_replicated(a, mesh) for a in loss_args])
    return [np.asarray(a) for a in jax.tree.leaves(state)], jax.device_get(metrics)

def compare(x, y):
    (sx, mx), (sy, my) = x, y
    # Largest difference per leaf, relative to the leaf's scale (the importance history holds terms ~1e4).
    return {"state": max(float(np.abs(a - b).max() / max(1.0, np.abs(a).max())) for a, b in zip(sx, sy)),
            "loss": abs(float(mx["loss"]) / float(my["loss"]) - 1), "grad_norm": float(mx["grad_norm"])}

out = {}
config = tiny_config()  # v-MSE, continuous time
loss = build.loss_fn(config)
big = run(config, loss, 1, 1)
out["mse"] = {"accum2_4dev": compare(big, run(config, loss, 4, 2))}

vlb = tiny_config()  # learned variances, L_vlb with importance-sampled levels (per-example terms reassembled)
vlb.diffusion.schedule, vlb.diffusion.num_timesteps = "cosine", 50
vlb.diffusion.parameterization, vlb.diffusion.weighting = "eps", "snr"
vlb.diffusion.learned_variance, vlb.diffusion.loss, vlb.diffusion.importance_sampling = True, "vlb", True
loss = build.loss_fn(vlb)
big = run(vlb, loss, 1, 1, lr=1e-6)  # the bound's gradients are large
out["vlb"] = {"accum4_4dev": compare(big, run(vlb, loss, 4, 4, lr=1e-6))}

student = for_distillation(tiny_config(), start_steps=8, batch_size=16, learning_rate=1e-4)
teacher = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(1), p.shape), build.init_params(student, jax.random.key(0)))
loss = build.distillation_loss(student, 4)
big = run(student, loss, 1, 1, (teacher,))
out["distill"] = {"accum8": compare(big, run(student, loss, 1, 8, (teacher,)))}
print(json.dumps(out))
"""


def test_gradient_accumulation_equals_the_big_batch_step():
    result = run_on_cpu_devices(ACCUMULATION)
    for loss, cases in result.items():
        for case, d in cases.items():
            assert d["state"] < 1e-5 and d["loss"] < 1e-5, (loss, case, d)
            assert d["grad_norm"] > 1e-3, (loss, case, d)  # a real update was compared


def test_bfloat16_training_lowers_the_loss_with_float32_parameters_and_optimizer_state(tfds_dir):
    config = tiny_config(tfds_dir)
    config.model.dtype = "bfloat16"
    config.train.batch_size = 64
    config.train.num_steps = 200  # the learning rate's cosine spans the run
    config.optim.warmup_steps = 20
    mesh = parallel.data_mesh()
    init_fn, tx = build.state_init(config)
    state = train_step.create_state(init_fn, mesh)
    step = train_step.compile_step(train_step.make_train_step(build.loss_fn(config), tx, ema_decay=0.99), mesh)
    batches = train_batches(config, local_batch_size=64)
    losses = []
    for _ in range(200):
        state, metrics = step(state, parallel.global_batch(next(batches), mesh), jax.random.key(0))
        losses.append(metrics["loss"])
    losses = np.asarray(jax.device_get(losses))
    assert losses[-20:].mean() < 0.6 * losses[:20].mean(), (losses[:20].mean(), losses[-20:].mean())
    assert {a.dtype for a in jax.tree.leaves((state.params, state.ema_params, state.opt_state))} <= {
        jnp.dtype(jnp.float32),
        jnp.dtype(jnp.int32),
    }
    # The compute really is bfloat16: the same parameters in float32 give close but different outputs.
    f32 = tiny_config(tfds_dir)
    z, t = jax.random.normal(jax.random.key(1), (8, 8, 8, 1)), jnp.linspace(0.1, 0.9, 8)
    out16 = build.apply_fn(config)(state.params, z, t, None, None)
    out32 = build.apply_fn(f32)(state.params, z, t, None, None)
    rel = float(jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32))
    assert out16.dtype == jnp.float32 and 1e-4 < rel < 5e-2, rel


def test_remat_keeps_parameter_names_outputs_and_gradients():
    config = tiny_config()
    config.model.dropout = 0.1
    remat = tiny_config()
    remat.model.dropout = 0.1
    remat.model.remat = True
    params = build.init_params(config, jax.random.key(0))
    assert jax.tree.structure(params) == jax.tree.structure(build.init_params(remat, jax.random.key(0)))
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(2), p.shape), params)
    batch = {"image": jax.random.uniform(jax.random.key(3), (8, 8, 8, 1), minval=-1, maxval=1)}
    grads = {}
    for name, c in (("plain", config), ("remat", remat)):
        (loss, _), grads[name] = jax.jit(jax.value_and_grad(build.loss_fn(c), has_aux=True))(
            params, batch, jax.random.key(4)
        )
        assert float(loss) > 0
    for a, b in zip(jax.tree.leaves(grads["plain"]), jax.tree.leaves(grads["remat"]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads["plain"])) > 1e-3


@pytest.mark.parametrize(
    "mode,coordinator,env,expected",
    [
        ("auto", None, {}, False),
        ("auto", "10.0.0.1:1234", {}, True),
        ("auto", None, {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, True),
        ("auto", None, {"SLURM_STEP_NODELIST": "gpu[01-02]", "SLURM_NTASKS": "16"}, True),
        ("auto", None, {"SLURM_STEP_NODELIST": "gpu01", "SLURM_NTASKS": "1"}, False),
        ("auto", None, {"TPU_WORKER_HOSTNAMES": "t1k-w-0,t1k-w-1"}, True),
        ("auto", None, {"TPU_WORKER_HOSTNAMES": "localhost"}, False),
        ("on", None, {}, True),
        ("off", "10.0.0.1:1234", {"SLURM_STEP_NODELIST": "gpu01", "SLURM_NTASKS": "8"}, False),
    ],
)
def test_when_a_run_joins_a_multi_process_run(mode, coordinator, env, expected):
    assert distributed.requested(mode, coordinator, env) is expected


def test_batches_that_do_not_split_stop_with_a_sentence():
    mesh = parallel.data_mesh()
    with pytest.raises(ValueError, match=r"batch_size=12 must split evenly .* and 8 micro-batches .* multiple of 8"):
        parallel.check_batch_size(12, mesh, 8)
    config = tiny_config()
    config.train.grad_accum_steps = 5
    from pdist.config import validate

    with pytest.raises(ValueError, match="batch_size=16 must be divisible by config.train.grad_accum_steps=5"):
        validate(config)
    config.train.grad_accum_steps = 1
    config.model.dtype = "float16"
    with pytest.raises(ValueError, match=r"config.model.dtype='float16' is not valid"):
        validate(config)


SLURM_TASK = """
import json
import numpy as np
from pdist import distributed
assert distributed.initialize("auto")  # no flags: the SLURM variables say how to join
import jax
from jax.experimental import multihost_utils
ids = multihost_utils.process_allgather(np.asarray([jax.process_index()]))
print(json.dumps({"processes": jax.process_count(), "ids": np.asarray(ids).ravel().tolist()}))
"""


def test_tasks_of_a_slurm_step_join_one_run_from_the_environment():
    """Two processes with the variables srun gives two tasks on one node; JAX's SLURM detection does the rest."""
    job = 1000 + os.getpid() % 3000  # JAX derives the coordinator port from the job id
    procs = []
    for task in range(2):
        env = dict(
            os.environ,
            JAX_PLATFORMS="cpu",
            SLURM_JOB_ID=str(job),
            SLURM_STEP_NODELIST="localhost",
            SLURM_STEP_NUM_NODES="1",
            SLURM_NTASKS="2",
            SLURM_PROCID=str(task),
            SLURM_LOCALID=str(task),
            PYTHONPATH=REPO,
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", SLURM_TASK], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        )
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err.decode()[-3000:]
        assert json.loads(out.decode().strip().splitlines()[-1]) == {"processes": 2, "ids": [0, 1]}
