"""Sample quality against function evaluations: a teacher under several samplers, and its distilled students.

python bench/quality_vs_nfe.py --teacher=runs/digits --distill=runs/digits_distill --out=docs/digits_quality

Runs ``pdist.evaluation.quality.evaluate_model`` (what ``--config.mode=eval`` runs) on the teacher for
every sampler in ``--samplers`` at every step count in ``--steps``, and on each
distillation round's student with DDIM at its own step count; every cell is
``--num-seeds`` seeds of ``--num-samples`` samples. Also the evaluator's floor:
the test split against the train split, with a subsampling interval over test
images. Writes ``OUT.json``, ``OUT.md`` (tables) and ``OUT.png`` (each metric
against NFE, the students as their own line).
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

import pdist
from pdist import config as config_lib
from pdist.evaluation import evaluators, quality, report, stats
from pdist.evaluation.frechet import frechet_distance, gaussian_stats
from pdist.runtime import layout


def floor(evaluator, ref, draws: int = 200) -> dict:
    """FD of the test split to the reference, and its subsampling interval over test images
    (:func:`pdist.evaluation.stats.subsampling_interval`: a bootstrap with repeats biases FD upward)."""
    features = evaluator.features(evaluator.x_test)

    def fd(rows):
        return frechet_distance(*gaussian_stats(features[rows]), ref.mu, ref.sigma)

    low, high = stats.subsampling_interval(fd, len(features), draws=draws)
    return {"fd": float(fd(np.arange(len(features)))), "low": low, "high": high, "images": len(features)}


def floor_line(fl: dict) -> str:
    return (
        f"Floor: the test split ({fl['images']} images) against the train split: Frechet distance "
        f"{fl['fd']:.2f} [{fl['low']:.2f}, {fl['high']:.2f}] (subsampling interval over test images, "
        "half-size subsets)."
    )


def rewrite_floor(args) -> None:
    """The floor alone, recomputed into an existing OUT.json and OUT.md (their other figures untouched)."""
    config = config_lib.from_file(args.config)
    settings = config.eval
    with open(f"{args.out}.json") as f:
        result = json.load(f)
    settings.update(pr_samples=result["num_samples"])
    evaluator = evaluators.make("auto", config.data, settings)
    ref = quality.reference(evaluator, config, "train", settings.pr_samples)
    result["floor"] = floor(evaluator, ref)
    with open(f"{args.out}.json", "w") as f:
        json.dump(result, f, indent=1)
    with open(f"{args.out}.md") as f:
        lines = f.read().split("\n")
    lines = [floor_line(result["floor"]) if line.startswith("Floor: ") else line for line in lines]
    with open(f"{args.out}.md", "w") as f:
        f.write("\n".join(lines))
    print(floor_line(result["floor"]))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher")
    parser.add_argument("--distill")
    parser.add_argument(
        "--floor-only", action="store_true", help="recompute the evaluator floor alone into OUT.json and OUT.md"
    )
    parser.add_argument("--out", required=True, help="path prefix of the JSON, markdown and PNG")
    parser.add_argument("--config", default="configs/digits.py", help="whose eval section gives the defaults")
    parser.add_argument("--samplers", default="ddim,ddpm,plms,dpmpp_2m")
    parser.add_argument("--steps", default="8,16,32,64,128,256")
    parser.add_argument("--extra", default="ddim:1,ddim:2,ddim:4", help="more method:steps pairs for the teacher")
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--num-seeds", type=int, default=3)
    args = parser.parse_args()
    if args.floor_only:
        return rewrite_floor(args)
    if not (args.teacher and args.distill):
        parser.error("--teacher and --distill are needed (or --floor-only)")

    teacher = pdist.load(args.teacher)
    settings = config_lib.from_file(args.config).eval
    settings.update(num_samples=args.num_samples, num_seeds=args.num_seeds, pr_samples=args.num_samples, seed=1)
    evaluator = evaluators.make("auto", teacher.config.data, settings)
    ref = quality.reference(evaluator, teacher.config, "train", settings.pr_samples)
    print(f"evaluator: {evaluator.name}, test accuracy {getattr(evaluator, 'test_accuracy', float('nan')):.4f}")
    pairs = [(m, int(n)) for m in args.samplers.split(",") for n in args.steps.split(",")]
    pairs += quality.parse_samplers(args.extra) if args.extra else []
    rows = quality.evaluate_model(teacher, evaluator, ref, pairs, settings)
    with open(os.path.join(args.distill, "summary.json")) as f:
        rounds = json.load(f)
    students = []
    for w in rounds:
        student = pdist.load(layout.round_dir(args.distill, w["round"], w["steps"]))
        (row,) = quality.evaluate_model(student, evaluator, ref, [("ddim", w["steps"])], settings)
        students.append({**row, "method": "distilled", "round": w["round"]})
    result = {
        "evaluator": evaluator.name,
        "evaluator_test_accuracy": getattr(evaluator, "test_accuracy", None),
        "num_samples": args.num_samples,
        "seeds": rows[0]["seeds"],
        "floor": floor(evaluator, ref) if hasattr(evaluator, "x_test") else None,
        "teacher": rows,
        "students": students,
    }
    with open(f"{args.out}.json", "w") as f:
        json.dump(result, f, indent=1)
    title = f"digits: {args.num_samples} samples x {args.num_seeds} seeds"
    table = report.markdown(rows + students, title)
    if result["floor"]:
        table += "\n" + floor_line(result["floor"]) + "\n"
    table += "\n| steps | teacher DDIM FD | student FD | resolved |\n|---:|---:|---:|---|\n"
    ddim = {r["steps"]: r for r in rows if r["method"] == "ddim"}
    for s in students:
        t = ddim.get(s["steps"])
        cells = [stats.format_summary(x["fd"]) if x else "-" for x in (t, s)]
        verdict = "-" if t is None else ("yes" if stats.resolved(t["fd"]["values"], s["fd"]["values"]) else "no")
        table += f"| {s['steps']} | {cells[0]} | {cells[1]} | {verdict} |\n"
    with open(f"{args.out}.md", "w") as f:
        f.write(table)
    report.plot(rows + students, f"{args.out}.png", title)
    print(table)


if __name__ == "__main__":
    main()
