"""Scaling out: two processes over gloo equal one, a run resumes on another number of processes and devices
(elastic resume), SIGTERM to one of two processes stops both at one step and resumes bit-identically, gradient
accumulation equals the big batch, rematerialization changes nothing but memory (bfloat16 compute:
tests/test_train.py)."""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import REPO, SCRIPTS, XLA_FLAGS, random_params, tiny_config

import pdist
from pdist import build
from pdist.data import train_batches
from pdist.jobs import train
from pdist.runtime import mesh as mesh_lib
from pdist.runtime import multihost
from pdist.runtime import step as step_lib
from pdist.spec import ModelSpec


@pytest.mark.heavy(6)  # this process and two more, each compiling training, distillation, evaluation: first
def test_two_processes_train_distill_and_evaluate_like_one(tmp_path, tfds_dir, evaluator_cache):
    out = tmp_path / "run"  # the processes read the digits evaluator from evaluator_cache
    out.mkdir()
    # The run on one process with one device, from scratch: what the two processes must match, and its step-3
    # checkpoint for them to resume (elastic resume).
    config = tiny_config(tfds_dir)
    init_fn, _ = build.state_init(config, ModelSpec.of(config))
    initial = jax.tree.leaves(step_lib.create_state(init_fn, mesh_lib.data_mesh()).params)
    first = next(train_batches(config, local_batch_size=16))
    mine = jax.tree.leaves(train.run(config, str(out / "elastic")).params)
    shutil.rmtree(out / "elastic" / "checkpoints" / "6")
    launch = os.path.join(REPO, "launch", "local.sh")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env["XLA_FLAGS"] = XLA_FLAGS  # local.sh adds the device count
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    command = [launch, "-n", "2", "-d", "2", "-l", str(tmp_path / "logs"), "--"]
    run = subprocess.run(
        [*command, "python", os.path.join(SCRIPTS, "two_processes.py"), str(out), tfds_dir],
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

    # SIGTERM to process 1 alone: both stopped at the next log step (4) with status 143 and a complete checkpoint
    # there, and the resumed run ends bit-identical to the uninterrupted one.
    for r in records:
        assert r["preempted"]["status"] == 143 and "Stopped by SIGTERM at step 4" in r["preempted"]["message"], r
        assert r["preempted_checkpoints"] == ["3", "4"], r
    resumed = np.load(out / "preempted_0.npz")
    assert all(np.array_equal(resumed[k], a[k]) for k in a.files)

    # Evaluation gathered all samples on both processes and wrote one report.
    assert records[0]["fd"] == records[1]["fd"] and np.isfinite(records[0]["fd"])
    (tag,) = os.listdir(teacher / "eval")
    report = json.loads((teacher / "eval" / tag / "eval.json").read_text())
    assert report["num_samples"] == 10 and report["rows"][0]["fd"]["mean"] == records[0]["fd"]
    x0, x1 = np.load(out / "samples_0.npy"), np.load(out / "samples_1.npy")
    assert x0.shape == (10, 8, 8, 1) and np.array_equal(x0, x1)

    # One process with one device: the same updates from the same global batches, and it resumes, restores and
    # samples the 2-process checkpoints.
    def largest(x, y):
        return max(float(np.abs(np.asarray(u) - np.asarray(v)).max()) for u, v in zip(x, y, strict=True))

    theirs = [a[f"arr_{i}"] for i in range(len(a.files))]
    moved = largest(mine, initial)
    with np.load(out / "first_0.npz") as f0, np.load(out / "first_1.npz") as f1:
        assert all(np.array_equal(np.concatenate([f0[k], f1[k]]), first[k]) for k in first)  # rows split in order
    # Gloo and the in-process sums reduce in different orders, and Adam scales the tiny (cancelling) gradients of
    # the layers behind the zero-initialized output up to full-size updates: the runs agree to a small fraction of
    # how far the parameters moved (an absolute bound holds for one model, not another); other batches would
    # differ by about 100%.
    err = largest(mine, theirs)
    # Elastic resume, both ways: 1 process x 1 device -> 2 x 2 (steps 1-3, then 4-6), and 2 x 2 -> 1 x 1.
    elastic = np.load(out / "elastic_0.npz")
    forward = largest([elastic[f"arr_{i}"] for i in range(len(elastic.files))], theirs)
    shutil.copytree(teacher, out / "elastic_back")
    shutil.rmtree(out / "elastic_back" / "checkpoints" / "6")  # the 2-process run as it was at step 3
    back = largest(jax.tree.leaves(train.run(config, str(out / "elastic_back")).params), theirs)
    figures = {"vs_two_processes": err, "elastic_1x1_to_2x2": forward, "elastic_2x2_to_1x1": back, "moved": moved}
    print(json.dumps({"err": figures, "seconds": records[0]["seconds"]}))  # the figures docs/results.md quotes
    assert err < 5e-2 * moved and forward < 5e-2 * moved and back < 5e-2 * moved, figures
    restored, student = pdist.load(str(teacher)), pdist.load(str(out / "distill"))
    assert restored.step == 6 and largest(jax.tree.leaves(restored.params), theirs) == 0.0
    assert (student.step, student.metadata["sampling_steps"]) == (3, 2)
    x = restored.sample(10, num_steps=2, seed=3, batch_size=6)
    assert float(np.abs(x - x0).max()) < 1e-5


def test_gradient_accumulation_equals_the_big_batch_step(four_devices):
    result = four_devices["accumulation"]
    for loss, cases in result.items():
        for case, d in cases.items():
            assert d["state"] < 1e-5 and d["loss"] < 1e-5, (loss, case, d)
            assert d["grad_norm"] > 1e-3, (loss, case, d)  # a real update was compared


def test_remat_keeps_parameter_names_outputs_and_gradients():
    config = tiny_config()
    config.model.dropout = 0.1
    remat = tiny_config()
    remat.model.dropout = 0.1
    remat.model.remat = True
    params = random_params(config, jax.random.key(2))
    # the remat network's own init, traced (param_shapes() would drop remat: it shares the plain network's trace)
    assert jax.tree.structure(params) == jax.tree.structure(jax.eval_shape(ModelSpec.of(remat).init_params,
                                                                           jax.random.key(0)))  # fmt: skip
    batch = {"image": jax.random.uniform(jax.random.key(3), (8, 8, 8, 1), minval=-1, maxval=1)}
    grads = {}
    for name, c in (("plain", config), ("remat", remat)):
        (loss, _), grads[name] = jax.jit(jax.value_and_grad(build.loss(c, ModelSpec.of(c)), has_aux=True))(
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
    assert multihost.requested(mode, coordinator, env) is expected


def test_batches_that_do_not_split_stop_with_a_sentence():
    mesh = mesh_lib.data_mesh()
    with pytest.raises(ValueError, match=r"batch_size=12 must split evenly .* and 8 micro-batches .* multiple of 8"):
        mesh_lib.check_batch_size(12, mesh, 8)
    config = tiny_config()
    config.train.grad_accum_steps = 5
    from pdist.jobs import validate

    with pytest.raises(ValueError, match="batch_size=16 must be divisible by config.train.grad_accum_steps=5"):
        validate(config)
    config.train.grad_accum_steps = 1
    config.model.dtype = "float16"
    with pytest.raises(ValueError, match=r"config.model.dtype='float16' is not valid"):
        validate(config)


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
                [sys.executable, os.path.join(SCRIPTS, "slurm_task.py")],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err.decode()[-3000:]
        assert json.loads(out.decode().strip().splitlines()[-1]) == {"processes": 2, "ids": [0, 1]}
