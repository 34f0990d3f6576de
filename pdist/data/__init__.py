"""Input pipelines (the only TensorFlow user in pdist).

The names below load :mod:`pdist.data.pipeline`, and TensorFlow with it, on first use (PEP 562), not when
``pdist.data`` is imported: the jobs import it, and their checks of a config run before any data is read, so a
refused command never pays TensorFlow's import (about 4 CPU-s).
"""

__all__ = [
    "DatasetUnavailableError",
    "builder",
    "process_batches",
    "train_batches",
    "training_builder",
]


def __getattr__(name: str):
    if name in __all__:
        from pdist.data import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'pdist.data' has no attribute {name!r}")
