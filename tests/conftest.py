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


def config_file(name: str, variant: str | None = None):
    from pdist.config import from_file

    return from_file(os.path.join(REPO, "configs", f"{name}.py"), variant)
