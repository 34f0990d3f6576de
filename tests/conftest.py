"""Test configuration: CPU only, a persistent compilation cache, and the digits dataset built once."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

CACHE = os.path.expanduser("~/.cache/pdist/jax")
jax.config.update("jax_compilation_cache_dir", CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
    """A TFDS data_dir holding the prepared digits dataset (built here, offline)."""
    from pdist.data import builder

    path = str(tmp_path_factory.mktemp("tfds"))
    builder("digits", path)
    return path


@pytest.fixture(scope="session")
def evaluator_cache(tmp_path_factory):
    """One PDIST_CACHE for the whole session, so the digits evaluator is trained once (and not in ~/.cache)."""
    path = str(tmp_path_factory.mktemp("pdist_cache"))
    previous = os.environ.get("PDIST_CACHE")
    os.environ["PDIST_CACHE"] = path
    yield path
    if previous is None:
        os.environ.pop("PDIST_CACHE", None)
    else:
        os.environ["PDIST_CACHE"] = previous


def run_on_cpu_devices(script: str, devices: int = 4) -> dict:
    """Runs ``script`` in a fresh Python with ``devices`` forced CPU devices; returns its last stdout line as JSON."""
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=main_env(devices), capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def config_file(name: str, variant: str | None = None):
    from pdist.config import from_file

    return from_file(os.path.join(REPO, "configs", f"{name}.py"), variant)


def main_command(*args, config: str = "configs/digits.py") -> list[str]:
    """``python -m pdist.main --config=CONFIG ARGS`` as an argument list."""
    import sys

    return [sys.executable, "-m", "pdist.main", f"--config={config}", *args]


def main_env(devices: int = 1) -> dict:
    """The environment a CLI run in the tests gets: CPU only, ``devices`` forced devices, the tests' JAX cache."""
    return dict(
        os.environ,
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        JAX_COMPILATION_CACHE_DIR=CACHE,
    )


def run_main(*args, config: str = "configs/digits.py", devices: int = 1, timeout: int = 900):
    """Runs the command line to completion; returns the CompletedProcess (text stdout/stderr)."""
    import subprocess

    return subprocess.run(
        main_command(*args, config=config),
        cwd=REPO,
        env=main_env(devices),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
