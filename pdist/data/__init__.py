"""Input pipelines (the only TensorFlow user in pdist)."""

from pdist.data.pipeline import (
    DatasetUnavailableError,
    builder,
    process_batches,
    train_batches,
    training_builder,
)

__all__ = [
    "DatasetUnavailableError",
    "builder",
    "process_batches",
    "train_batches",
    "training_builder",
]
