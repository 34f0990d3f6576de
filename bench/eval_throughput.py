"""Evaluation throughput: images/s through the digits evaluator and through the FID Inception-v3.

python bench/eval_throughput.py [--inception-batch=50] [--inception-images=200]

The Inception network runs with random weights (throughput does not depend on
them) on 32x32 RGB inputs, which it resizes to 299x299 as for CIFAR-10; the
digits evaluator runs on 8x8 inputs. Times exclude the first (compiling) call.
Prints a markdown table with the device.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import numpy as np

from pdist.evaluation.inception import SIZE, FIDInceptionV3, InceptionEvaluator
from pdist.interop import pytorch_fid as convert


def rate(fn, x, repeats: int = 3) -> float:
    fn(x[: len(x) // 2])  # compile (and warm up) on part of the data
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        fn(x)
        best = min(best, time.perf_counter() - began)
    return len(x) / best


def random_inception(batch_size: int) -> InceptionEvaluator:
    """The FID Inception-v3 with random weights (its speed does not depend on them)."""
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(FIDInceptionV3().init, jax.random.key(0), jax.ShapeDtypeStruct((1, SIZE, SIZE, 3), "f4"))
    variables = jax.tree.map(lambda s: (0.05 * rng.normal(size=s.shape)).astype(np.float32), shapes)
    variables["batch_stats"] = jax.tree.map(np.abs, variables["batch_stats"])
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "random.npz")
        convert.save_npz(variables, path)
        return InceptionEvaluator(path, batch_size=batch_size)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inception-batch", type=int, default=50)
    parser.add_argument("--inception-images", type=int, default=200)
    parser.add_argument("--digits-images", type=int, default=10_000, help="0 skips the digits evaluator")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    device = jax.devices()[0]
    kind = f"{jax.device_count()} x {device.device_kind} ({device.platform})"
    print(f"JAX {jax.__version__}, {kind}, {os.cpu_count()} CPUs\n")
    print("| evaluator | input | batch | images/s |\n|---|---|---:|---:|")
    if args.digits_images:
        from pdist.evaluation.digits import DigitsEvaluator

        digits = DigitsEvaluator()
        x = rng.uniform(-1, 1, (args.digits_images, 8, 8, 1)).astype(np.float32)
        print(f"| digits CNN | 8x8x1 | 500 | {rate(digits.outputs, x):,.0f} |")
    inception = random_inception(args.inception_batch)
    x = rng.uniform(-1, 1, (args.inception_images, 32, 32, 3)).astype(np.float32)
    print(f"| FID Inception-v3 | 32x32x3 -> 299x299 | {args.inception_batch} | {rate(inception.outputs, x):,.1f} |")


if __name__ == "__main__":
    main()
