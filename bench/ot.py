"""DPM-OT on the digits at 10 network evaluations: the expressway against DDIM and DPM-Solver++ 2M from t = 1,
with the random-assignment ablation and a memorization check.

For each t' the expressway's targets are N images noised to t' (``Pretrained.expressway``; the solver's
steps, final gradient norm, empty cells and seconds are reported), and sampling runs 10 DDIM steps from t'.
``--targets=train``: the train split's 1,497 images (the reference's choice: stored data); ``--targets=samples``:
as many of the teacher's own samples (DDIM, ``--target-steps`` steps from t = 1, their own seed), noised to t'.
The latter is the marginal at t' of the teacher's reverse process (exactly so for an exact sampler), what the
reference gets by storing its sampling chain's state at t'; no training image is stored. The ablation sends
each noise to a uniformly random target instead of its OT cell. Scores per noise seed (mean ± std over
``--seeds``), with the digits classifier: Frechet distance of the features to the test split (the train split
is where the targets come from), precision and recall against the test split, the distance of each sample to
its nearest train image (pixels, [-1, 1]; the test split's own distances are the reference) and the share of
samples closer to a train image than any test image is (memorization), and the mode-mixture rate (two or more
classes with probability at least tau, as the reference defines it).

    python bench/ot.py --teacher runs/digits --data-dir ~/tensorflow_datasets --out docs/ot
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

import pdist
from pdist import ot, samplers
from pdist.data import pipeline
from pdist.evaluation import frechet, metrics
from pdist.evaluation.digits import DigitsEvaluator

TAUS = (0.1, 0.2, 0.3, 0.4)


def nearest(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Each row's L2 distance to its nearest row of ``ref`` (flattened images)."""
    a, b = jnp.asarray(x.reshape(len(x), -1)), jnp.asarray(ref.reshape(len(ref), -1))
    d2 = jnp.sum(a**2, 1)[:, None] - 2 * a @ b.T + jnp.sum(b**2, 1)[None, :]
    return np.sqrt(np.maximum(np.asarray(jnp.min(d2, axis=1)), 0.0))


def scores(x, evaluator, test_features, test_radii, train, test_nn) -> dict:
    features, probs = evaluator.outputs(x)
    precision, recall = metrics.precision_recall(test_features, features, real_radii=test_radii)
    nn = nearest(x, train)
    out = {
        "fd": float(
            frechet.frechet_distance(*frechet.gaussian_stats(features), *frechet.gaussian_stats(test_features))
        ),
        "precision": float(precision),
        "recall": float(recall),
        "nn_train": float(np.mean(nn)),
        "memorized": float(np.mean(nn < test_nn.min())),
    }
    for tau in TAUS:
        out[f"mixture_{tau:g}"] = float(np.mean(np.sum(probs >= tau, axis=1) >= 2))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--times", default="0.2,0.4,0.6")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-solver-steps", type=int, default=1000)
    parser.add_argument("--targets", choices=("train", "samples"), default="train")
    parser.add_argument("--target-steps", type=int, default=64, help="the teacher's DDIM steps for --targets=samples")
    parser.add_argument("--out", default="docs/ot")
    args = parser.parse_args()

    model = pdist.load(args.teacher)
    evaluator = DigitsEvaluator(args.data_dir)
    train = pipeline.load_split("digits", "train", args.data_dir, 8, 1)["image"]
    test = pipeline.load_split("digits", "test", args.data_dir, 8, 1)["image"]
    test_features = evaluator.features(test)
    test_radii = metrics.knn_radii(test_features, 3)
    test_nn = nearest(test, train)
    denoise = model.denoiser()
    shape = (args.num_samples, *test.shape[1:])
    rows, solver = [], []

    def run(name, t, make_start, method="ddim", grid="auto", steps=args.steps):
        per_seed = []
        for seed in range(args.seeds):
            key = jax.random.fold_in(jax.random.key(1234), seed)
            noise = jax.random.normal(key, shape, jnp.float32)
            z = make_start(noise, jax.random.fold_in(key, 1))
            x = samplers.sample(denoise, model.schedule, z, method=method, num_steps=steps, grid=grid,
                                clip_x=True, t_start=t)  # fmt: skip
            per_seed.append(scores(np.asarray(x), evaluator, test_features, test_radii, train, test_nn))
        row = {"method": name, "t_start": t, "nfe": steps, "per_seed": per_seed}
        for k in per_seed[0]:
            v = np.array([s[k] for s in per_seed])
            row[k], row[f"{k}_std"] = float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "per_seed"}), flush=True)

    run("ddim", 1.0, lambda noise, key: noise)
    run("dpmpp_2m", 1.0, lambda noise, key: noise, method="dpmpp_2m", grid="logsnr")
    if args.targets == "train":
        images = train
    else:  # the teacher's own samples, from noise no sampling seed above uses; and the sampler that made them
        images = model.sample(len(train), method="ddim", num_steps=args.target_steps, seed=10_000)
        run(f"ddim, {args.target_steps} steps (the targets' sampler)", 1.0, lambda noise, key: noise,
            steps=args.target_steps)  # fmt: skip
    for t in (float(v) for v in args.times.split(",")):
        began = time.time()
        way = model.expressway(images, t, seed=0, max_steps=args.max_solver_steps)
        targets = jnp.asarray(way.targets)
        check = ot.cell_masses(jax.random.key(99), targets, jnp.asarray(way.potentials), source=ot.normal_source,
                               batch=20_000, num_batches=10)  # fmt: skip
        solver.append(
            {"t": t, "seconds": time.time() - began, "max_mass_error": float(np.max(np.abs(check * len(targets) - 1))),
             "empty_cells": int(np.sum(np.asarray(check) == 0))}
        )  # fmt: skip
        print(json.dumps(solver[-1]), flush=True)
        run("dpm-ot", t, lambda noise, key, way=way: ot.on_expressway(noise, way.targets, way.potentials))
        run(
            "random assignment", t,
            lambda noise, key, way=way: jnp.asarray(way.targets)[
                ot.random_assignment(key, len(way.targets), noise.shape[0])].reshape(noise.shape),
        )  # fmt: skip
    meta = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, {jax.default_backend()}",
        "date": time.strftime("%Y-%m-%d"),
        "test_nn_train": float(np.mean(test_nn)),
        "samples": args.num_samples,
        "seeds": args.seeds,
        "targets": args.targets if args.targets == "train" else f"samples (ddim:{args.target_steps})",
    }
    with open(args.out + ".json", "w") as f:
        json.dump({"meta": meta, "solver": solver, "rows": rows}, f, indent=1)
    lines = [
        f"# DPM-OT on the digits, {args.steps} evaluations ({meta['machine']}, {meta['date']})",
        "",
        f"{args.num_samples} samples a seed, {args.seeds} seeds (mean ± std); expressway targets: "
        f"{meta['targets']}, {len(images)} of them. Test images' mean distance to their nearest train image: "
        f"{meta['test_nn_train']:.3f}.",
        "",
        "| method | t' | NFE | FD (test) | precision | recall | NN dist. to train | memorized | "
        + " | ".join(f"mixture tau={t:g}" for t in TAUS)
        + " |",
        "|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(TAUS),
    ]
    for r in rows:
        mix = " | ".join(f"{r[f'mixture_{t:g}']:.3f}" for t in TAUS)
        lines.append(
            f"| {r['method']} | {r['t_start']:g} | {r['nfe']} | {r['fd']:.2f} ± {r['fd_std']:.2f} | "
            f"{r['precision']:.3f} | {r['recall']:.3f} | {r['nn_train']:.3f} | {r['memorized']:.3f} | {mix} |"
        )
    lines += ["", "| t' | solver seconds | max cell-mass error (x N) | empty cells |", "|---:|---:|---:|---:|"]
    lines += [f"| {s['t']:g} | {s['seconds']:.0f} | {s['max_mass_error']:.2f} | {s['empty_cells']} |" for s in solver]
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
