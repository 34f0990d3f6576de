"""How close a digits teacher is to its data: its Frechet distance against the evaluator's floor at the same
sample size, over training seeds, and whether its samples copy training images.

    for s in 0 1 2; do python -m pdist.main --config=configs/digits.py --workdir=runs/digits_s$s --config.seed=$s; done
    python bench/teacher_floor.py --workdirs runs/digits_s0,runs/digits_s1,runs/digits_s2 --out docs/teacher_floor

The floor is the FD of the test split (300 images) to the reference (the train split); each teacher is scored
at 300 samples (the floor's size) and at 1,000 (DDIM, ``--steps`` steps, sampling seeds 1 to ``--num-seeds``),
each training seed as the mean over its sampling seeds, summarized over training seeds. Memorization: the pixel
distance from every sample to its nearest train image, beside the same for the test images, and the fraction of
samples closer to their nearest train image than half the distance to the second nearest. Writes OUT.json and
OUT.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import pdist  # noqa: E402
from pdist.data import pipeline  # noqa: E402
from pdist.evaluation import (  # noqa: E402
    evaluators,
    quality,  # noqa: E402
    stats,
)
from pdist.evaluation.score import score  # noqa: E402


def nearest(x: np.ndarray, train: np.ndarray) -> dict:
    """Distance to the nearest train image (median, 5th percentile, least) and the near-copy fraction."""
    d = np.sort(((x.reshape(len(x), -1)[:, None] - train[None]) ** 2).sum(-1), axis=1)
    first = np.sqrt(d[:, 0])
    copies = float((np.sqrt(d[:, 0] / d[:, 1]) < 0.5).mean())
    return {"median": float(np.median(first)), "p5": float(np.percentile(first, 5)), "min": float(first.min()),
            "copies": copies}  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdirs", required=True, help="comma-separated teachers, one per training seed")
    parser.add_argument("--out", required=True, help="path prefix of the JSON and markdown")
    parser.add_argument("--sizes", default="300,1000")
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--num-seeds", type=int, default=3)
    args = parser.parse_args()

    workdirs = args.workdirs.split(",")
    config = pdist.load(workdirs[0]).config
    evaluator = evaluators.make("auto", config.data, config.eval)
    ref = quality.reference(evaluator, config, "train", 1000)
    floor = score(evaluator, ref, evaluator.x_test)["fd"]  # the test split, scored as the samples are
    data = config.data
    train = pipeline.load_split(data.name, "train", data.data_dir, data.image_size, data.channels)["image"]
    train = train.reshape(len(train), -1).astype(np.float32)
    result = {"floor": floor, "test_nearest": nearest(np.asarray(evaluator.x_test, np.float32), train), "teachers": {}}
    for w in workdirs:
        model = pdist.load(w)
        row = {}
        for n in (int(v) for v in args.sizes.split(",")):
            xs = [model.sample(n, method="ddim", num_steps=args.steps, seed=s) for s in range(1, args.num_seeds + 1)]
            row[f"fd{n}"] = [score(evaluator, ref, x, pr_samples=min(n, 1000), is_splits=1)["fd"] for x in xs]
        row["nearest"] = nearest(np.asarray(xs[0], np.float32), train)
        result["teachers"][w] = row
        print(w, {k: np.round(v, 2).tolist() for k, v in row.items() if k.startswith("fd")}, flush=True)

    lines = [f"Floor (test split, {len(evaluator.x_test)} images, against the train split): FD {floor:.2f}", ""]
    lines += ["| samples | FD per training seed | mean ± std [bootstrap 95%] | / floor |", "|---:|---|---:|---:|"]
    for n in (int(v) for v in args.sizes.split(",")):
        per = [float(np.mean(r[f"fd{n}"])) for r in result["teachers"].values()]
        s = stats.summarize(per)
        ratio = f"{s['mean'] / floor:.2f}" if n == len(evaluator.x_test) else "- (another size)"
        lines.append(f"| {n} | {', '.join(f'{v:.2f}' for v in per)} | {stats.format_summary(s)} | {ratio} |")
    lines += ["", "| nearest train image | median | 5% | least | near copies |", "|---|---:|---:|---:|---:|"]
    rows = [("test images", result["test_nearest"])] + [(w, r["nearest"]) for w, r in result["teachers"].items()]
    for name, q in rows:
        lines.append(f"| {name} | {q['median']:.2f} | {q['p5']:.2f} | {q['min']:.2f} | {q['copies']:.3f} |")
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=1)
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
