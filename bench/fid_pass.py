"""A whole FID pass, timed end to end: sample N images from a config's network, run them through the FID
Inception-v3, and compare their statistics with a reference; the wall time of each part.

python bench/fid_pass.py --setup=cifar10 --samples=50000 --steps=8 --dtype=bfloat16 --sample-batch=2048 \\
    --inception-batch=500
python bench/fid_pass.py --setup=cifar10 --samples=64 --steps=2 --sample-batch=32 --inception-batch=32  # CPU check

What ``--config.mode=eval`` does for one row, with what cannot be had
offline replaced by stand-ins of the same cost: the network and the
Inception weights are random (no timing depends on weights; the samples are
not images anyone would score), and the reference statistics are those of
``--reference`` random feature vectors (a real run reads them from its
cache, computed once per dataset). The sampling is ``pdist.sampling.ImageSampler``
(the evaluation's), the features ``InceptionEvaluator.outputs``, the scores
``pdist.evaluation.score.score`` (Frechet distance, Inception Score,
precision and recall on ``--pr-samples`` images).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from eval_throughput import random_inception  # noqa: E402
from sampling_throughput import random_params  # noqa: E402

from pdist.config import from_file  # noqa: E402
from pdist.evaluation.score import Reference, score  # noqa: E402
from pdist.sampling import ImageSampler, Sampling  # noqa: E402
from pdist.spec import ModelSpec  # noqa: E402

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setup", default="cifar10")
    parser.add_argument("--samples", type=int, default=50_000)
    parser.add_argument("--steps", type=int, default=8, help="DDIM steps (a distilled student's)")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--sample-batch", type=int, default=2048)
    parser.add_argument("--inception-batch", type=int, default=500)
    parser.add_argument("--reference", type=int, default=10_000, help="random reference feature vectors")
    parser.add_argument("--pr-samples", type=int, default=10_000)
    args = parser.parse_args()
    config = from_file(os.path.join(CONFIGS, f"{args.setup}.py"))
    config.model.dtype = args.dtype
    if config.data.channels != 3:
        raise SystemExit("The FID Inception-v3 takes RGB images; pick a setup with 3 channels (cifar10, imagenet64).")
    device = jax.devices()[0]
    print(f"{args.setup} on {device.device_kind} x{jax.device_count()}, jax {jax.__version__}")
    params = random_params(config)
    sampler, inception = ImageSampler(ModelSpec.of(config)), random_inception(args.inception_batch)
    rng = np.random.default_rng(0)
    pr = min(args.pr_samples, args.reference, args.samples)
    reference = Reference.from_features(rng.normal(size=(args.reference, 2048)).astype(np.float32), pr)
    # Compile both programs on a first small call, as a long evaluation amortizes them.
    began = time.perf_counter()
    warm = sampler(params, args.sample_batch, Sampling(num_steps=args.steps, batch_size=args.sample_batch))
    inception.outputs(warm[: args.inception_batch])
    compile_s = time.perf_counter() - began
    began = time.perf_counter()
    images = sampler(params, args.samples, Sampling(num_steps=args.steps, batch_size=args.sample_batch, seed=1))
    sample_s = time.perf_counter() - began
    began = time.perf_counter()
    scores = score(inception, reference, images, pr_samples=pr, is_splits=10)
    score_s = time.perf_counter() - began
    total = sample_s + score_s
    print(
        "| samples | steps | dtype | sample batch | compile s | sampling s | Inception + scores s | total s "
        "| images/s |"
    )
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {args.samples:,} | {args.steps} | {args.dtype} | {args.sample_batch} | {compile_s:.1f} | {sample_s:.1f} "
        f"| {score_s:.1f} | {total:.1f} | {args.samples / total:,.0f} |"
    )
    print(f"(scores of random weights, not a result: FD {scores['fd']:.1f}, IS {scores['is']:.2f})")


if __name__ == "__main__":
    main()
