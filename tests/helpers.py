"""Helpers the tests share: configs, running the command line and scripts, comparing workdirs."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import jax
import jax.flatten_util
import numpy as np

from pdist import cpu_defaults
from pdist.spec import ModelSpec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(REPO, "tests", "scripts")
# The tests' persistent compilation cache (PDIST_TEST_JAX_CACHE: another folder, e.g. an empty one to time a cold run).
JAX_CACHE = os.environ.get("PDIST_TEST_JAX_CACHE") or os.path.expanduser("~/.cache/pdist/jax")
# Compiling dominates the suite's time on a CPU, and LLVM's -O0 for XLA's CPU code halves it; XLA's older CPU
# fusion code generation (fusion emitters off) compiles the train step a fifth faster again (measured: 3.4 s
# against 4.2 s for the small UNet's step, which also runs faster). One LLVM module per program instead of
# splitting it for parallel code generation (split count 1) takes a fifth less CPU time again (the small UNet's
# train step: 1.33 to 1.95 CPU-s against 1.88 to 2.30, four alternating pairs); the suite's workers already keep
# every core busy. Results differ from a default build's in the
# last bits, so tests compare programs compiled under these same flags only.
# A process of one device runs its programs on one thread (``--xla_cpu_multi_thread_eigen=false``, :func:`xla_flags`):
# the suite keeps more processes than cores busy (pytest-xdist's workers and their subprocesses), and Eigen's thread
# pool spends CPU spinning for work another process could have done (tests/test_train.py with tests/test_distill.py
# took 124 CPU-s against 141, and test_guided_distill, test_consistency and test_samplers 196 and 200 against 211 and
# 212, alone, cold). Processes of several devices keep the pool: tests/test_scale.py took 210 CPU-s without it
# against 196.
# pdist's own CPU defaults (pdist/cpu_defaults.py) are part of the string, so that this process and every
# subprocess (which imports pdist with these flags set) compile the same programs.
XLA_FLAGS = os.environ.get(
    "PDIST_TEST_XLA_FLAGS",
    "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false "
    f"--xla_cpu_parallel_codegen_split_count=1 {cpu_defaults.flags()}".strip(),
)

# For a test's own program that runs long (many steps over large batches: a training loop, a 1,000-step sampler
# over 20,000 points), ``jax.jit(..., compiler_options=OPTIMIZED)`` (pdist.cpu_defaults.OPTIMIZED): LLVM's default
# optimizations for that program only. It compiles a little slower and runs several times faster (the 2-D mixture
# distillation: 9.4 to 11.9 s against 12.8 to 15.6 s, cold, alone; docs/benchmarks.md).
OPTIMIZED = cpu_defaults.OPTIMIZED


def config_file(name: str, variant: str | None = None):
    """``get_config()`` of ``configs/<name>.py``."""
    from pdist.config import from_file

    return from_file(os.path.join(REPO, "configs", f"{name}.py"), variant)


# The digits UNet at width 8 with one resolution level and attention in its middle block only (the middle block's
# is always there; attention control in editing acts on it): it compiles in a third of the time of the default's
# two levels, and in 15% less than with attention at its level too (2.6 s against 3.0 s for the train step). The full layout is exercised by the CLI runs, tests/scripts/four_devices.py and
# tests/test_models.py.
SMALL_MODEL = {"ch": 8, "head_dim": 16, "ch_mult": (1,), "attn_resolutions": ()}


def small_model(config):
    """``config`` with :data:`SMALL_MODEL` (returned for chaining)."""
    for key, value in SMALL_MODEL.items():
        config.model[key] = value
    return config


def small_config(tfds_dir=None, **train_overrides):
    """The digits config with :data:`SMALL_MODEL`: it trains in seconds."""
    config = small_model(config_file("digits"))
    config.data.data_dir = tfds_dir
    config.train.batch_size = 64
    config.train.sample_every = 0
    config.sample.num_steps = 4
    # The grid as many images as the final samples: one sampling program draws both (ImageSampler's programs are
    # per number of images).
    config.train.num_grid_samples = config.sample.num_samples = 8
    for k, v in train_overrides.items():
        config.train[k] = v
    return config


def init_params(config, key):
    """``ModelSpec.of(config).init_params(key)``, compiled: run eagerly, every layer's operations compile one by one
    (hundreds of small programs; one program is several times cheaper)."""

    return jax.jit(ModelSpec.of(config).init_params)(key)


def apply_fn(config):
    """``ModelSpec.of(config).apply``, compiled (see :func:`init_params`)."""

    return jax.jit(ModelSpec.of(config).apply)


@jax.jit
def perturb(params, key, scale: float = 0.1):
    """``params`` plus ``scale`` times independent standard normal noise on every entry (one draw for all of them:
    a draw per leaf compiles a generator per leaf)."""
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    return unravel(flat + scale * jax.random.normal(key, flat.shape))


def random_params(config, key, scale: float = 0.1):
    """Parameters of ``config``'s network drawn as independent normals of standard deviation ``scale``: for tests
    that need two different parameter sets, not the initializer's (its program takes seconds to compile for the
    default layout; the shapes are traced, not compiled)."""
    shapes = ModelSpec.of(config).param_shapes()
    return perturb(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes), key, scale)


def conditional_model(label_dropout: float = 0.1):
    """configs/digits_cond.py (class-conditional, trained for guidance) with :data:`SMALL_MODEL` and this label
    dropout."""
    config = small_model(config_file("digits_cond"))
    config.train.label_dropout = label_dropout
    return config


def nonzero_params(config):
    """``config``'s initial parameters perturbed (0.05): non-zero output layers, so every input shows in every
    output."""
    return perturb(init_params(config, jax.random.key(0)), jax.random.key(1), 0.05)


def train_steps(config, num_steps: int):
    """``num_steps`` steps of ``config``'s teacher on its digits batches in this process (one compiled step, the
    key fixed, EMA decay 0.99): the final state and the loss of every step."""
    from pdist import build
    from pdist.data import train_batches
    from pdist.runtime import mesh as mesh_lib
    from pdist.runtime import step as step_lib

    mesh = mesh_lib.data_mesh()
    init_fn, optimizer = build.state_init(config, ModelSpec.of(config))
    state = step_lib.create_state(init_fn, mesh)
    step = step_lib.compile_step(
        step_lib.make_train_step(build.loss(config, ModelSpec.of(config)), optimizer, ema_decay=0.99), mesh
    )
    batches = train_batches(config, local_batch_size=config.train.batch_size)
    losses = []
    for _ in range(num_steps):
        state, metrics = step(state, mesh_lib.global_batch(next(batches), mesh), jax.random.key(0), optimizer.args)
        losses.append(metrics.scalars["loss"])
    return state, np.asarray(jax.device_get(losses))


def tiny_config(tfds_dir=None):
    """:func:`small_config` with 16-image batches and 6 steps: for runs over several devices or processes."""
    config = small_config(tfds_dir, batch_size=16, num_steps=6, checkpoint_every=3, log_every=2)
    config.optim.warmup_steps = 2
    config.sample.num_steps = 2
    config.train.num_grid_samples = config.sample.num_samples = 6  # one sampling program draws both (small_config)
    return config


def xla_flags(devices: int = 1) -> str:
    """The XLA flags of a process with ``devices`` CPU devices: the same string in this process and in a
    subprocess of as many devices, so that their programs share entries of the persistent compilation cache."""
    one_thread = " --xla_cpu_multi_thread_eigen=false" if devices == 1 else ""
    return f"--xla_force_host_platform_device_count={devices} {XLA_FLAGS}{one_thread}"


def main_env(devices: int = 1) -> dict:
    """The environment a subprocess gets: CPU only, ``devices`` forced devices, the tests' JAX cache, which keeps
    every program (a cold suite compiles each program once, whichever process needs it first)."""
    return dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=xla_flags(devices),
        JAX_COMPILATION_CACHE_DIR=JAX_CACHE,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )


def main_command(*args, config: str = "configs/digits.py") -> list[str]:
    """``python -m pdist.main --config=CONFIG ARGS`` as an argument list."""
    return [sys.executable, "-m", "pdist.main", f"--config={config}", *args]


def run_main(*args, config: str = "configs/digits.py", devices: int = 1, timeout: int = 900):
    """Runs the command line to completion; returns the CompletedProcess (text stdout/stderr)."""
    return subprocess.run(
        main_command(*args, config=config), cwd=REPO, env=main_env(devices), capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def run_in_process(*args, config: str = "configs/digits.py"):
    """``python -m pdist.main --config=CONFIG ARGS`` through the same parse, run and outcome, in this process
    (no interpreter to start, no imports to repeat; :func:`pdist.main.invoke`): ``(exit status, its one-line
    message or "", the flags)``."""
    from pdist import main

    return main.invoke([f"--config={os.path.join(REPO, config)}", *args])


def run_script(name: str, *args: str, devices: int = 4) -> dict:
    """Runs ``tests/scripts/<name>.py ARGS`` with ``devices`` forced CPU devices; returns its last stdout line (JSON)."""
    out = subprocess.run(
        [sys.executable, os.path.join(SCRIPTS, f"{name}.py"), *args], cwd=REPO, env=main_env(devices),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def snapshot(path) -> dict | None:
    """Every file under ``path`` with a hash of its bytes (None if ``path`` does not exist)."""
    if not os.path.exists(path):
        return None
    out = {}
    for root, dirs, names in os.walk(path):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), path)] = "dir"
        for f in names:
            with open(os.path.join(root, f), "rb") as fh:
                out[os.path.relpath(os.path.join(root, f), path)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def assert_same_state(workdir_a, workdir_b, step=None) -> None:
    """The two workdirs' checkpoints (newest, or ``step``) hold bit-identical parameters and EMA parameters."""
    import pdist

    a, b = pdist.load(workdir_a, step), pdist.load(workdir_b, step)
    assert a.step == b.step
    assert_same_tree((a.params, a.ema_params), (b.params, b.ema_params))


def assert_same_tree(a, b) -> None:
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def one_sentence(message: str) -> bool:
    return "\n" not in message.strip() and message.strip().endswith((".", "?")) and "Traceback" not in message
