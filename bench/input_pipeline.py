"""The input pipeline's cost of elastic resume: images/s one process delivers, pdist's global order against
per-process file shards.

pdist's pipeline (``pdist.data.train_batches``) has every process read the split in one shuffled order and keep
its rows of each global batch, so the global batches do not depend on the process count (elastic resume). The
alternative it replaced gives each process its own shard of the files (``tfds.split_for_jax_process``) and
shuffles that: each process reads only its share, but the global batches change with the process count. This
prints, for P processes (process 0's stream, simulated in one process), the images per second of the process's
own rows and how many records it reads per row it keeps.

``python bench/input_pipeline.py [--data_dir DIR] [--batches 300]``
"""

from __future__ import annotations

import argparse
import time

import tensorflow as tf
import tensorflow_datasets as tfds

from pdist import config as config_lib
from pdist.data import pipeline


def sharded(config, local: int, process: int, count: int):
    """The replaced design: this process's file shard, shuffled with its own seed (not elastic)."""
    settings = config.data
    b = pipeline.training_builder(settings)
    split = tfds.split_for_jax_process(settings.split, process_index=process, process_count=count)
    ds = b.as_dataset(split=split, shuffle_files=False, decoders={"image": tfds.decode.SkipDecoding()})
    ds = ds.map(lambda r: {k: r[k] for k in ("image", "label")}).cache()
    ds = ds.shuffle(settings.shuffle_buffer, seed=config.seed + process).repeat().enumerate()
    ds = ds.map(
        lambda i, r: pipeline._preprocess(
            r, i, size=settings.image_size, channels=settings.channels, flip=False, seed=0
        ),  # fmt: skip
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return iter(tfds.as_numpy(ds.batch(local, drop_remainder=True).prefetch(tf.data.AUTOTUNE)))


def rate(stream, batches: int, local: int) -> float:
    for _ in range(20):  # warm-up: the cache fills during the first epoch
        next(stream)
    began = time.perf_counter()
    for _ in range(batches):
        next(stream)
    return batches * local / (time.perf_counter() - began)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--global_batch", type=int, default=128)
    args = parser.parse_args()
    config = config_lib.from_file("configs/digits.py")
    config.data.data_dir = args.data_dir
    print(
        "| processes | rows per process | pdist (global order) images/s | file shards images/s "
        "| records read per row kept (pdist / shards) |"
    )
    print("|---:|---:|---:|---:|---:|")
    for count in (1, 2, 4, 8):
        local = args.global_batch // count
        ours = rate(pipeline.train_batches(config, local_batch_size=local, process_index=0, process_count=count),
                    args.batches, local)  # fmt: skip
        theirs = rate(sharded(config, local, 0, count), args.batches, local)
        print(f"| {count} | {local} | {ours:,.0f} | {theirs:,.0f} | {count} / 1 |")
    print(f"\n(one run each: {args.batches} batches of process 0 after 20 of warm-up, {time.strftime('%Y-%m-%d')})")


if __name__ == "__main__":
    main()
