"""Guided distillation's trade-off curves: the guided teacher and its students, FD / IS / class accuracy against w.

Reads the ``eval.json`` files that ``--config.mode=eval --config.eval.guidance=...`` wrote for the teacher and
for each student round (the same ``eval.seed`` and ``num_samples``: the same noise, so comparisons are paired
seed by seed), and writes ``OUT.md`` (a table, and each student's FD against the teacher's at the same w and
seed), ``OUT.json`` and ``OUT.png`` (FD against w; FD against class accuracy and Inception Score).

    T=runs/digits_cond; G=runs/digits_cond_guided
    python -m pdist.main --config=configs/digits_cond.py --workdir=$T --config.mode=eval \\
        --config.eval.guidance=0,1,2,4 --config.eval.samplers=ddim:8,ddim:64 --config.eval.seed=1
    for R in $G/round_*; do N=${R##*_}; N=${N%steps}
      python -m pdist.main --config=configs/digits_cond.py --workdir=$R --config.mode=eval \\
        --config.eval.guidance=0,1,2,4 --config.eval.samplers=ddim:$N:uniform --config.eval.seed=1; done
    python bench/guided_tradeoff.py --teacher $T --students $G --reference-steps 64 --out docs/digits_cond_guided
"""

from __future__ import annotations

import argparse
import glob
import json
import os

import numpy as np


def _eval_json(workdir: str) -> dict | None:
    """The newest eval.json under ``workdir/eval/`` (None: not evaluated)."""
    found = sorted(glob.glob(os.path.join(workdir, "eval", "*", "eval.json")), key=os.path.getmtime)
    if not found:
        return None
    with open(found[-1]) as f:
        return json.load(f)


def collect(teacher: str, students: str) -> list[dict]:
    """One entry per (model, steps, w): name, steps, w, per-seed fd / is / accuracy."""
    out = []
    models = [("teacher", teacher)]
    rounds = sorted(d for d in glob.glob(os.path.join(students, "round_*")) if os.path.isdir(d))
    models += [(os.path.basename(d), d) for d in rounds]
    for name, path in models:
        result = _eval_json(path)
        if result is None:
            if name == "teacher":
                raise SystemExit(f"No eval/*/eval.json under {path}; run --config.mode=eval there first.")
            print(f"{name}: not evaluated, left out")
            continue
        for row in result["rows"]:
            seeds = row["seeds"]
            out.append(
                {
                    "model": name,
                    "steps": row["steps"],
                    "w": row["guidance"],
                    "call_batch": row["call_batch"],
                    "seeds": seeds,
                    **{m: [s[m] for s in row["per_seed"]] for m in ("fd", "is", "accuracy")},
                }
            )
    return out


def _ms(values) -> str:
    v = np.asarray(values, np.float64)
    return f"{v.mean():.2f} ± {v.std(ddof=1) if len(v) > 1 else 0:.2f}"


def table(entries: list[dict], reference_steps: int) -> str:
    ref = {e["w"]: e for e in entries if e["model"] == "teacher" and e["steps"] == reference_steps}
    lines = [
        f"FD ratio: the model's FD over the guided teacher's at {reference_steps} DDIM steps, same w, per seed "
        "(mean, and min-max over seeds); the 10% target is a ratio of at most 1.10.",
        "",
        "| model | steps | calls x batch | w | FD | Inception Score | class accuracy | FD ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in entries:
        r = ref.get(e["w"])
        ratio = "-"
        if r is not None and r["seeds"] == e["seeds"]:
            per_seed = np.asarray(e["fd"]) / np.asarray(r["fd"])
            ratio = f"{per_seed.mean():.3f} [{per_seed.min():.3f}, {per_seed.max():.3f}]"
        lines.append(
            f"| {e['model']} | {e['steps']} | {e['steps']} x {e['call_batch']} | {e['w']:g} | {_ms(e['fd'])} "
            f"| {_ms(e['is'])} | {np.mean(e['accuracy']):.3f} | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def plot(entries: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    curves = {}
    for e in entries:
        curves.setdefault((e["model"], e["steps"]), []).append(e)
    # teachers in blues, students in oranges to reds: distinct colors for any number of curves
    teachers = sorted(steps for model, steps in curves if model == "teacher")
    students = sorted(steps for model, steps in curves if model != "teacher")

    def color(model, steps):
        group, cmap = (teachers, plt.cm.Blues) if model == "teacher" else (students, plt.cm.autumn)
        i = group.index(steps)
        return (
            cmap(0.35 + 0.65 * i / max(len(group) - 1, 1))
            if model == "teacher"
            else cmap(0.8 * i / max(len(group) - 1, 1))
        )

    for (model, steps), rows in curves.items():
        rows = sorted(rows, key=lambda e: e["w"])
        c = color(model, steps)
        unit = "step" if steps == 1 else "steps"
        label = f"teacher, {steps} DDIM {unit} (guided)" if model == "teacher" else f"student, {steps} {unit}"
        style = "--" if model == "teacher" else "-"
        w = [e["w"] for e in rows]
        fd = [np.mean(e["fd"]) for e in rows]
        err = [np.std(e["fd"], ddof=1) for e in rows]
        axes[0].errorbar(w, fd, yerr=err, fmt=style + "o", label=label, capsize=2, color=c)
        axes[1].plot([np.mean(e["accuracy"]) for e in rows], fd, style + "o", label=label, color=c)
        axes[2].plot([np.mean(e["is"]) for e in rows], fd, style + "o", label=label, color=c)
    axes[0].set(xlabel="guidance weight w", ylabel="Frechet distance (digits features)", title="FD against w")
    axes[1].set(xlabel="class accuracy", ylabel="Frechet distance", title="trade-off: accuracy")
    axes[2].set(xlabel="Inception Score (digits classifier)", ylabel="Frechet distance", title="trade-off: IS")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True, help="the guided teacher's workdir (its eval/ folder)")
    parser.add_argument("--students", required=True, help="the guided distillation's workdir (round_* folders)")
    parser.add_argument("--reference-steps", type=int, default=64, help="the teacher's DDIM steps compared with")
    parser.add_argument("--out", required=True, help="path prefix of OUT.md, OUT.json, OUT.png")
    args = parser.parse_args()
    entries = collect(args.teacher, args.students)
    with open(f"{args.out}.json", "w") as f:
        json.dump(entries, f, indent=1)
    text = table(entries, args.reference_steps)
    with open(f"{args.out}.md", "w") as f:
        f.write(f"# Guided teacher and guided-distillation students\n\n{text}")
    plot(entries, f"{args.out}.png")
    print(text)


if __name__ == "__main__":
    main()
