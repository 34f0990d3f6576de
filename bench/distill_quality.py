"""Sample quality of every distilled student beside DDIM on its teacher at the same step counts (digits).

python bench/distill_quality.py --teacher=runs/digits --distill=runs/digits_distill --out=docs/digits_distill

Frechet distance in the embedded digits evaluator's feature space (pdist.evaluation)
of ``--num-samples`` samples against the train split, for each seed; prints a
markdown table (mean and spread over seeds), writes ``<out>.json`` and a plot
``<out>_fd.png`` of distance against sampling steps.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

import pdist
from pdist import distill
from pdist.evaluation import DigitsEvaluator


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--distill", required=True)
    parser.add_argument("--out", required=True, help="path prefix of the JSON and PNG")
    parser.add_argument("--teacher-steps", default="256,32,8,4,2,1")
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--seeds", default="1,2")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    evaluator = DigitsEvaluator()
    print(f"evaluator test accuracy {evaluator.test_accuracy:.4f}")
    floor = evaluator.frechet(evaluator.x_test)

    def measure(model, steps):
        began = time.time()
        fds = [evaluator.frechet(model.sample(args.num_samples, method="ddim", num_steps=steps, seed=s)) for s in seeds]
        return {"steps": steps, "fd": fds, "seconds": time.time() - began}

    teacher = pdist.load(args.teacher)
    rows = {"teacher": [measure(teacher, int(n)) for n in args.teacher_steps.split(",")], "students": []}
    with open(os.path.join(args.distill, "summary.json")) as f:
        rounds = json.load(f)
    for w in rounds:
        student = pdist.load(os.path.join(args.distill, distill.round_name(w["round"], w["steps"])))
        rows["students"].append({**measure(student, w["steps"]), "round": w["round"]})
    rows.update(test_split_fd=floor, num_samples=args.num_samples, seeds=seeds)

    def cell(r):
        fd = np.asarray(r["fd"])
        return f"{fd.mean():.2f} ± {fd.std(ddof=1) if len(fd) > 1 else 0:.2f}"

    teacher_by_steps = {r["steps"]: r for r in rows["teacher"]}
    print(f"\nFrechet distance to the train split ({args.num_samples} samples, seeds {seeds}; mean ± sd)")
    print(f"test split itself ({len(evaluator.x_test)} images): {floor:.2f}\n")
    print("| steps | teacher DDIM | distilled student |")
    print("|---:|---:|---:|")
    by_steps = {r["steps"]: r for r in rows["students"]}
    for n in sorted(set(teacher_by_steps) | set(by_steps), reverse=True):
        t = cell(teacher_by_steps[n]) if n in teacher_by_steps else "-"
        s = cell(by_steps[n]) if n in by_steps else "-"
        print(f"| {n} | {t} | {s} |")
    with open(f"{args.out}.json", "w") as f:
        json.dump(rows, f, indent=1)

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, rs in (("teacher, DDIM", rows["teacher"]), ("distilled student", rows["students"])):
        steps = [r["steps"] for r in rs]
        ax.errorbar(steps, [np.mean(r["fd"]) for r in rs], yerr=[np.std(r["fd"]) for r in rs], marker="o", label=name)
    ax.axhline(floor, color="gray", ls=":", label="test split")
    ax.set(xscale="log", yscale="log", xlabel="sampling steps", ylabel="Frechet distance (digits features)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(f"{args.out}_fd.png", dpi=120)


if __name__ == "__main__":
    main()
