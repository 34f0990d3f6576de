"""Test configuration: CPU only, and a persistent compilation cache for the many small compiles."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_compilation_cache_dir", os.path.expanduser("~/.cache/pdist/jax"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
