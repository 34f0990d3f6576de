"""Which few-step student to train: Progressive Distillation against consistency distillation on one teacher.

python bench/consistency_vs_pd.py --teacher=runs/digits --pd=runs/digits_distill --cd=runs/digits_consistency \
    --out=docs/consistency_vs_pd

``--pd`` and ``--cd`` take comma-separated workdirs, one per training seed. Every cell is ``--num-seeds``
sampling seeds of ``--num-samples`` samples per training seed, scored by ``pdist.evaluation.quality.
evaluate_model`` (what ``--config.mode=eval`` runs: Frechet distance in the digits evaluator's features,
precision and recall): the teacher's own DDIM at ``--teacher-steps``; each PD run's students (the round whose
student takes N steps, DDIM, N in ``--steps``); each consistency run's one student with the multistep
consistency sampler at every N. Also each run's cost: updates, teacher network calls (per example) and wall
seconds, from its summary.json; and each consistency run's kept checkpoints at 1 step (is it still
improving?). Writes OUT.json, OUT.md and OUT.png (FD against steps).

``--guidance W``: the class-conditional teacher's guided model at w = W: the teacher's DDIM and the PD runs'
students (guided distillation's, which take w) sampled at W, against consistency runs that distilled the
teacher's guided ODE at W (``--config.distill.consistency.guidance=W``), which sample it unguided:

    python bench/consistency_vs_pd.py --teacher=runs/digits_cond --pd=runs/digits_cond_guided \
        --cd=runs/cd_cond_w2 --guidance=2 --config=configs/digits_cond.py --out=docs/consistency_vs_pd_cond_w2
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

import pdist
from pdist import config as config_lib
from pdist.evaluation import evaluators, quality, stats
from pdist.runtime import layout
from pdist.runtime.checkpoint import Checkpointer

METRICS = ("fd", "precision", "recall")


def _summary(path: str) -> list[dict]:
    with open(os.path.join(path, "summary.json")) as f:
        return json.load(f)


def _cost(path: str, method: str) -> dict:
    """Updates, teacher calls per example and seconds of a run (all its rounds)."""
    rows = _summary(path)
    stored = pdist.load(layout.round_dir(path, rows[-1]["round"], rows[-1]["steps"])).config
    c = stored.distill.consistency
    doubled = 2 if c.get("guidance", 0.0) > 0 else 1  # a guided teacher's step: one call on twice the batch
    calls = 2 if method == "pd" else {"ddim": 1, "heun": 2}[c.solver] * doubled
    updates = sum(r["updates"] for r in rows)
    return {"updates": updates, "teacher_calls": calls * updates, "seconds": sum(r["seconds"] or 0 for r in rows)}


def _pooled(rows: list[dict]) -> dict:
    """One cell over training seeds: every (training seed, sampling seed) value, and their summaries."""
    out = {m: [v for r in rows for v in r[m]["values"]] for m in METRICS}
    return {
        **{m: stats.summarize(v) for m, v in out.items()},
        "per_run": [[r[m]["mean"] for m in METRICS] for r in rows],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--pd", required=True, help="Progressive Distillation workdirs, comma-separated")
    parser.add_argument("--cd", required=True, help="consistency distillation workdirs, comma-separated")
    parser.add_argument("--out", required=True, help="path prefix of the JSON, markdown and PNG")
    parser.add_argument("--config", default="configs/digits.py", help="whose eval section gives the defaults")
    parser.add_argument("--steps", default="1,2,4")
    parser.add_argument("--teacher-steps", default="8,16,256")
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--num-seeds", type=int, default=3)
    parser.add_argument("--guidance", type=float, default=None, help="w of the teacher and the PD students")
    args = parser.parse_args()
    weights = (args.guidance,)

    teacher = pdist.load(args.teacher)
    settings = config_lib.from_file(args.config).eval
    settings.update(num_samples=args.num_samples, num_seeds=args.num_seeds, pr_samples=args.num_samples, seed=1)
    evaluator = evaluators.make("auto", teacher.config.data, settings)
    ref = quality.reference(evaluator, teacher.config, "train", settings.pr_samples)
    steps = [int(n) for n in args.steps.split(",")]
    cells = []
    for row in quality.evaluate_model(
        teacher, evaluator, ref, [("ddim", int(n)) for n in args.teacher_steps.split(",")], settings, weights=weights
    ):
        cells.append({"model": "teacher", "sampler": "ddim", "steps": row["steps"], **_pooled([row])})
    runs = {"pd": args.pd.split(","), "cd": args.cd.split(",")}
    costs = {method: [_cost(p, method) for p in paths] for method, paths in runs.items()}
    for n in steps:
        per_run = []
        for path in runs["pd"]:
            (rnd,) = [r for r in _summary(path) if r["steps"] == n]
            student = pdist.load(layout.round_dir(path, rnd["round"], n))
            per_run += quality.evaluate_model(student, evaluator, ref, [("ddim", n)], settings, weights=weights)
        cells.append({"model": "pd", "sampler": "ddim", "steps": n, **_pooled(per_run)})
        per_run = []
        for path in runs["cd"]:
            (rnd,) = _summary(path)
            student = pdist.load(layout.round_dir(path, rnd["round"], rnd["steps"]))
            distilled_at = student.config.distill.consistency.get("guidance", 0.0)
            if distilled_at != (args.guidance or 0.0):
                parser.error(f"{path} distilled the teacher at w = {distilled_at:g}; give --guidance={distilled_at:g}")
            per_run += quality.evaluate_model(student, evaluator, ref, [("consistency", n)], settings)
        cells.append({"model": "cd", "sampler": "consistency", "steps": n, **_pooled(per_run)})

    # Is the consistency student still improving? Each run's kept checkpoints, 1 step (FD's mean over seeds).
    trend = {}
    for path in runs["cd"]:
        (rnd,) = _summary(path)
        directory = layout.round_dir(path, rnd["round"], rnd["steps"])
        steps_kept = Checkpointer(layout.checkpoints(directory), asynchronous=False).all_steps()
        trend[path] = {}
        for step in sorted(steps_kept):
            student = pdist.load(directory, step)
            (row,) = quality.evaluate_model(student, evaluator, ref, [("consistency", 1)], settings)
            trend[path][step] = row["fd"]["mean"]

    result = {
        "evaluator": evaluator.name,
        "num_samples": args.num_samples,
        "sampling_seeds": list(range(1, 1 + args.num_seeds)),
        "runs": runs,
        "guidance": args.guidance,
        "costs": costs,
        "cells": cells,
        "cd_trend": trend,
    }
    with open(f"{args.out}.json", "w") as f:
        json.dump(result, f, indent=1)
    names = {"teacher": "teacher (DDIM)", "pd": "PD student (DDIM)", "cd": "consistency student"}
    lines = [
        f"{len(runs['pd'])} PD and {len(runs['cd'])} consistency training run(s); {args.num_samples} samples x "
        f"{args.num_seeds} sampling seeds per run; mean ± std [95% bootstrap interval of the mean]"
        + ("" if args.guidance is None else f"; guidance w = {args.guidance:g}"),
        "",
        "| model | steps | FD | precision | recall |",
        "|---|---:|---:|---:|---:|",
    ]
    for c in cells:
        lines.append(
            f"| {names[c['model']]} | {c['steps']} | "
            + " | ".join(stats.format_summary(c[m], 3 if m != "fd" else 2) for m in METRICS)
            + " |"
        )
    lines += ["", "| run | updates | teacher calls per example | minutes |", "|---|---:|---:|---:|"]
    for method, entries in costs.items():
        for path, c in zip(runs[method], entries, strict=True):
            lines.append(f"| {method}: {path} | {c['updates']:,} | {c['teacher_calls']:,} | {c['seconds'] / 60:.1f} |")
    lines += ["", "The consistency student at 1 step over its kept checkpoints (FD, mean of the sampling seeds):", ""]
    for path, by_step in trend.items():
        lines.append(f"- {path}: " + ", ".join(f"{fd:.2f} at update {step:,}" for step, fd in by_step.items()))
    table = "\n".join(lines) + "\n"
    with open(f"{args.out}.md", "w") as f:
        f.write(table)
    _plot(cells, f"{args.out}.png", names)
    print(table)


def _plot(cells: list[dict], path: str, names: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, metric in zip(axes, METRICS, strict=True):
        for model, marker in (("pd", "o"), ("cd", "s"), ("teacher", "^")):
            rows = sorted((c for c in cells if c["model"] == model), key=lambda c: c["steps"])
            x = [c["steps"] for c in rows]
            y = np.array([c[metric]["mean"] for c in rows])
            lo = y - np.array([c[metric]["low"] for c in rows])
            hi = np.array([c[metric]["high"] for c in rows]) - y
            ax.errorbar(x, y, yerr=[lo, hi], marker=marker, capsize=3, label=names[model])
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sampling steps (network calls)")
        ax.set_title(metric)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
