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


def config_file(name: str, variant: str | None = None):
    from pdist.config import from_file

    return from_file(os.path.join(REPO, "configs", f"{name}.py"), variant)
