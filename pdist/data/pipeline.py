"""TFDS input: every process reads the split in one shuffled order, keeps its
rows of each global batch, decodes, flips and scales them to [-1, 1], and
prefetches.

The global batches are a pure function of (seed, step, global batch size), not
of the number of processes or devices: shuffling uses one fixed seed on every
process, flips draw from a stateless RNG keyed by the example's position in
the stream, and a resumed run skips the records it has already consumed
(before decoding, so skipping is cheap). A resumed run thus sees exactly the
global batches the uninterrupted run would have seen, on any number of hosts.

The price of that (against per-process file shards): every process reads and,
with ``config.data.cache``, holds every encoded record of the split, though it
decodes only its own rows. For the datasets pdist trains on (digits, CIFAR-10,
ImageNet 64 and LSUN at 128 px: at most a few GB encoded) that is cheap next to
a training step; Grain over ArrayRecord would read only a process's rows, at
the cost of another dependency and a TFDS build in another file format.

This module is the only TensorFlow user in pdist; TensorFlow is kept off
accelerators so it never takes memory from JAX.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from jax.experimental import multihost_utils

from pdist import rng
from pdist.data import digits  # noqa: F401  (registers the "digits" builder)
from pdist.errors import InputError
from pdist.runtime import console

tf.config.set_visible_devices([], "GPU")


class DatasetUnavailableError(InputError, RuntimeError):
    """A dataset is not prepared locally and could not be prepared here."""


def builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
    """The prepared TFDS builder of ``name``; prepares it if needed (offline for ``digits``)."""
    try:
        b = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise DatasetUnavailableError(
            f"TFDS has no dataset {name!r}; set config.data.name to a TFDS name such as 'cifar10' or 'digits'."
        ) from e
    if not b.is_prepared() and jax.process_count() > 1:
        # Process 0 prepares first, so that a shared data_dir is ready for the others (hosts with
        # their own disks prepare after the barrier); a failure is raised after the barrier.
        failure = None
        if jax.process_index() == 0:
            try:
                _prepare(b, name)
            except DatasetUnavailableError as e:
                failure = e
        multihost_utils.sync_global_devices(f"pdist: {name} prepared")
        if failure is not None:
            raise failure
        b = tfds.builder(name, data_dir=data_dir)
    if not b.is_prepared():
        _prepare(b, name)
    return b


def _prepare(b: tfds.core.DatasetBuilder, name: str) -> None:
    began = time.time()
    console.say(f"preparing the {name} dataset in {b.data_dir} (once) ...")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # TFDS prints its own lines; this function says them
            b.download_and_prepare()
    except Exception as e:  # TFDS raises many types here (network, manual_dir, checksum)
        raise DatasetUnavailableError(
            f"Dataset {name!r} is not prepared in {b.data_dir!r} and could not be prepared here "
            f"({type(e).__name__}); run `tfds build {name} --data_dir=DIR` on a machine with network "
            "(placing manual downloads as its docs say), then pass --config.data.data_dir=DIR."
        ) from e
    console.say(f"prepared {name} in {console.duration(time.time() - began)}")


def check_split(b: tfds.core.DatasetBuilder, split: str, name: str = "config.data.split") -> None:
    """One sentence if ``split`` (such as ``train`` or ``train[:90%]``) names no split of the dataset."""
    if not isinstance(split, str):  # a tfds.core.ReadInstruction, made from a checked name
        return
    base = split.split("[")[0].strip()
    if base not in b.info.splits:
        raise DatasetUnavailableError(
            f"{name}={split!r} is not a split of {b.name!r}; choose one of {sorted(b.info.splits)}."
        )


def training_builder(settings: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
    """The prepared builder of ``config.data``, its split checked (one sentence if either is wrong)."""
    b = builder(settings.name, settings.data_dir)
    check_split(b, settings.split)
    return b


def _preprocess(record: dict, index, *, size: int, channels: int, flip: bool, seed: int) -> dict:
    image = tf.io.decode_image(record["image"], channels=channels, expand_animations=False)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    if not (image.shape[0] == size and image.shape[1] == size):
        side = tf.minimum(height, width)  # center crop to a square, then area-resize
        image = tf.image.crop_to_bounding_box(image, (height - side) // 2, (width - side) // 2, side, side)
        image = tf.image.resize(image, (size, size), method="area", antialias=True)
    image = tf.reshape(tf.cast(image, tf.float32), (size, size, channels))
    if flip:
        u = tf.random.stateless_uniform([], seed=tf.stack([tf.cast(seed, tf.int64), tf.cast(index, tf.int64)]))
        image = tf.cond(u < 0.5, lambda: tf.image.flip_left_right(image), lambda: image)
    out = {"image": image / 127.5 - 1.0}
    if "label" in record:
        out["label"] = tf.cast(record["label"], tf.int32)
    return out


def train_batches(
    config: ml_collections.ConfigDict,
    *,
    local_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    start_step: int = 0,
    seed: int | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """An endless iterator of this process's rows of every global batch, starting at ``start_step``.

    The global batches are a function of the seed, the step and the global batch size
    (``local_batch_size * process_count``) only: every process reads the whole split in the same shuffled order
    (one seed for all), cuts it into global batches and keeps its own rows (process i: rows ``i * local`` to
    ``(i + 1) * local - 1``), decoding and augmenting only those, each example's flip drawn from its global
    position. So a run resumed on another number of processes or devices sees the same global batches
    (elastic resume, tests/test_scale.py), and a one-process run's stream is what it always was.

    Yields numpy dicts: ``image`` [local_batch, H, W, C] float32 in [-1, 1] and
    ``label`` [local_batch] int32 where the dataset has labels.
    """
    settings = config.data
    seed = config.seed if seed is None else seed
    b = training_builder(settings)
    global_batch, first = local_batch_size * process_count, local_batch_size * process_index
    ds = b.as_dataset(split=settings.split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()})
    ds = ds.map(lambda r: {k: r[k] for k in ("image", "label") if k in r})
    if settings.cache:
        ds = ds.cache()
    ds = ds.shuffle(settings.shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.enumerate().skip(start_step * global_batch)
    if process_count > 1:  # this process's rows of each global batch, still encoded
        ds = ds.batch(global_batch, drop_remainder=True)
        ds = ds.map(lambda i, r: (i[first : first + local_batch_size], {k: v[first : first + local_batch_size]
                                                                          for k, v in r.items()}))  # fmt: skip
        ds = ds.unbatch()
    ds = ds.map(
        lambda i, r: _preprocess(
            r, i, size=settings.image_size, channels=settings.channels, flip=settings.random_flip, seed=seed * 1000
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    ds = ds.batch(local_batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return iter(tfds.as_numpy(ds))


def process_batches(config: ml_collections.ConfigDict, start_step: int, phase: int) -> Iterator[dict[str, np.ndarray]]:
    """This process's rows of every global batch of ``phase`` (:mod:`pdist.rng`) from ``start_step`` on."""
    return train_batches(
        config,
        local_batch_size=config.train.batch_size // jax.process_count(),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        start_step=start_step,
        seed=rng.data_seed(config.seed, phase),
    )


def load_split(name: str, split: str, data_dir: str | None, size: int, channels: int) -> dict[str, np.ndarray]:
    """A whole split in order, preprocessed as for training without flips: ``image`` [N, H, W, C] in [-1, 1],
    and ``label`` [N] where the dataset has labels. For evaluation (reference statistics, NLL)."""
    b = builder(name, data_dir)
    check_split(b, split, "split")
    ds = b.as_dataset(split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()})
    ds = ds.map(lambda r: {k: r[k] for k in ("image", "label") if k in r}).enumerate()
    ds = ds.map(lambda i, r: _preprocess(r, i, size=size, channels=channels, flip=False, seed=0))
    batches = list(tfds.as_numpy(ds.batch(1024).prefetch(2)))
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
