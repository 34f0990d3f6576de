"""Fixtures: CPU only, a persistent compilation cache, the digits dataset built once, one evaluator cache, and
trained workdirs shared by the tests that only read them (helpers live in tests/helpers.py)."""

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402
from helpers import JAX_CACHE, REPO, SMALL_MODEL, main_env, run_main, small_config, xla_flags  # noqa: E402

from pdist.main import fewer_collections  # noqa: E402

os.environ["XLA_FLAGS"] = xla_flags(1)  # read when the backend starts; as a 1-device subprocess's (main_env)

jax.config.update("jax_compilation_cache_dir", JAX_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # every program, as main_env

# The cycle collector at a young generation of 50,000 objects (pdist.main.fewer_collections). Freezing what outlives
# each test as well cut a worker's pauses further (30.8 s to 1.9 s over tests/test_interop.py and tests/test_distill.py)
# but over the whole suite the workers' memory and system time grew, so it is not done.
fewer_collections()

# The README's main command, shortened and with helpers.SMALL_MODEL (the default's two-level layout compiles in
# tests/test_models.py and tests/scripts/four_devices.py): what test_cli reads.
SHORT = [
    *(f"--config.model.{k}={v}" for k, v in SMALL_MODEL.items()),
    "--config.train.num_steps=20",
    "--config.train.log_every=10",
    "--config.train.checkpoint_every=10",
    "--config.train.sample_every=0",
    "--config.train.num_grid_samples=16",
    "--config.sample.num_steps=8",
    "--config.sample.num_samples=16",
]


def _shared_dir(tmp_path_factory):
    """The folder the pytest-xdist workers of this run share (the run's base temporary folder without them)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _once_per_run(tmp_path_factory, name: str, make) -> str:
    """``make(path)`` once for the whole run, in a folder the pytest-xdist workers share: the first worker that
    needs it makes it under a lock, the others wait and reuse it."""
    shared = _shared_dir(tmp_path_factory)
    path = shared / name
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (shared / f"{name}.done").exists():
            make(str(path))
            (shared / f"{name}.done").touch()
        fcntl.flock(lock, fcntl.LOCK_UN)
    return str(path)


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
    """A TFDS data_dir holding the prepared digits dataset (built here, offline, once per run)."""
    from pdist.data import builder

    return _once_per_run(tmp_path_factory, "tfds", lambda path: builder("digits", path))


@pytest.fixture(scope="session")
def evaluator_cache(tmp_path_factory, tfds_dir):
    """One PDIST_CACHE for the whole run holding the digits evaluator, trained once (and never in ~/.cache)."""
    from pdist.evaluation import DigitsEvaluator

    path = _once_per_run(tmp_path_factory, "pdist_cache", lambda path: DigitsEvaluator(tfds_dir, cache_dir=path))
    previous = os.environ.get("PDIST_CACHE")
    os.environ["PDIST_CACHE"] = path
    yield path
    if previous is None:
        os.environ.pop("PDIST_CACHE", None)
    else:
        os.environ["PDIST_CACHE"] = previous


@pytest.fixture(scope="session", autouse=True)
def _four_devices_in_the_background(request, tmp_path_factory):
    """Starts tests/scripts/four_devices.py (4 forced CPU devices, one interpreter for all that needs them) when
    the run holds a test that reads it, once for the whole run and at its start, beside the tests: a worker
    that waited for it at the first test that needs it would leave a core idle for a minute."""
    if not any("four_devices" in item.fixturenames for item in request.session.items):
        return
    shared = _shared_dir(tmp_path_factory)
    with open(shared / "four_devices.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (shared / "four_devices.started").exists():
            (shared / "four_devices.started").touch()
            out, err, rc = (shared / f"four_devices.{name}" for name in ("out", "err", "rc"))
            script = os.path.join(REPO, "tests", "scripts", "four_devices.py")
            subprocess.Popen(
                ["/bin/sh", "-c", f'"{sys.executable}" "{script}" > "{out}" 2> "{err}"; echo $? > "{rc}.tmp"; '
                 f'mv "{rc}.tmp" "{rc}"'],
                cwd=REPO, env=main_env(4), start_new_session=True,
            )  # fmt: skip
        fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def four_devices(tmp_path_factory, _four_devices_in_the_background) -> dict:
    """tests/scripts/four_devices.py's results (sections ``train``, ``accumulation``, ``sampling``, ``ot``: the
    tests that read them), waited for."""
    shared = _shared_dir(tmp_path_factory)
    began = time.time()
    while not (shared / "four_devices.rc").exists():
        assert time.time() - began < 900, "tests/scripts/four_devices.py did not finish in 15 minutes"
        time.sleep(0.5)
    status = int((shared / "four_devices.rc").read_text())
    assert status == 0, (shared / "four_devices.err").read_text()[-3000:]
    return json.loads((shared / "four_devices.out").read_text().strip().splitlines()[-1])


@pytest.fixture(scope="session")
def cli_workdir(tmp_path_factory, tfds_dir):
    """The README's main command, 20 steps: a teacher workdir written from the shell (read, never changed), with
    a data folder of its own (the digits dataset is prepared in it). Its terminal output is beside it, in
    ``<path>.stdout`` and ``<path>.stderr``."""
    path = str(tmp_path_factory.mktemp("digits_run"))
    data_dir = str(tmp_path_factory.mktemp("digits_run_tfds"))
    out = run_main(f"--workdir={path}", f"--config.data.data_dir={data_dir}", *SHORT)
    assert out.returncode == 0, out.stderr[-3000:]
    for name in ("stdout", "stderr"):
        with open(f"{path}.{name}", "w") as f:
            f.write(getattr(out, name))
    return path


@pytest.fixture(scope="session")
def small_teacher(tmp_path_factory, tfds_dir):
    """A 30-step teacher of :func:`helpers.small_config` at batch 32, trained in-process (read, never changed)."""
    from pdist.jobs import train

    config = small_config(tfds_dir, num_steps=30, batch_size=32)
    path = str(tmp_path_factory.mktemp("teacher"))
    train.run(config, path)
    return path


@pytest.fixture(scope="session")
def cond_teacher(tmp_path_factory, tfds_dir):
    """A 20-step class-conditional teacher with label dropout (the small model), trained in-process once for the
    whole run (read, never changed)."""
    from pdist.jobs import train

    config = small_config(tfds_dir, num_steps=20, batch_size=32)
    config.model.class_conditional, config.train.label_dropout = True, 0.1
    return _once_per_run(tmp_path_factory, "cond_teacher", lambda path: train.run(config, path))


@pytest.fixture
def legacy_teacher(tmp_path):
    """A copy of a teacher workdir written by pdist before the run-layer refactor (commit 5c89b90's command line):
    4 steps of the digits config at width 8, one level with attention at 8x8, num_res_blocks=1 and batch 16
    (tests/fixtures/legacy_teacher)."""
    path = tmp_path / "legacy_teacher"
    shutil.copytree(os.path.join(REPO, "tests", "fixtures", "legacy_teacher"), path)
    return str(path)


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one worker more than the cores, at most 4 (pytest.ini). The small digits programs leave a core
    idle between steps, and subprocesses start and wait; on the 2-core machine 3 workers ran the suite in 6m41s
    against 7m06s with 2 and 7m06s with 4 (working tree, warm compilation cache, 2026-12-02)."""
    return min(4, (os.cpu_count() or 1) + 1)


def pytest_collection_modifyitems(items):
    """Puts the files with tests marked ``heavy`` (or ``heavy(n)``, worth n) first, heaviest first: pytest-xdist hands whole files out
    (``--dist loadfile``, so a file's trained fixtures are built once) in this order (``--no-loadscope-reorder``),
    and the long ones start while the short ones fill in."""
    weight = {}
    for item in items:
        heavy = item.get_closest_marker("heavy")
        weight[item.path] = weight.get(item.path, 0) + (0 if heavy is None else heavy.args[0] if heavy.args else 1)
    items.sort(key=lambda item: -weight[item.path])  # stable: the order within a file stays
