"""Editing digits into other classes: InfEdit's DDCM against SDEdit, DDIM inversion and sampling from scratch.

Every test-split image of class A is edited into every class B != A (300 images, 2,700 edits a setting), by a
class-conditional teacher trained with label dropout and by a guided-distillation student. Scored with the
digits classifier (pdist.evaluation.digits): the accuracy on B, the distance to the source (PSNR on [-1, 1],
and the L2 distance of the classifier's 128 features), and the Frechet distance of the edits' features to the
train split. The methods at equal network evaluations (2N for N DDCM steps): SDEdit with 2N DDIM steps from
several t_start, DDIM inversion (N) then DDIM under B (N), and B sampled from scratch with 2N steps. A -> A
reconstruction error at the weights each row's edits use (DDCM's is exactly 0 only at equal source and
target weights, which tests/test_editing.py checks), and DDCM's self-attention control. Each row over
``--seeds`` noise seeds (mean ± std).

    python bench/editing.py --teacher runs/digits_cond --student runs/digits_cond_guided/round_05_4steps \\
        --data-dir ~/tensorflow_datasets --out docs/editing

With ``--pd`` and ``--cd`` (a Progressive Distillation run and a consistency distillation run of the same
conditional teacher) it compares the two few-step students as DDCM editors at equal evaluations instead: DDCM
with N = 1, 2, 4 steps (2N evaluations) at w = 0 (neither student is guided: a consistency student has no null
class), by PD's N-step student and by the one consistency student, beside the teacher's DDCM at the same N and
at 12 steps:

    python bench/editing.py --teacher runs/digits_cond --pd runs/digits_cond_distill \\
        --cd runs/digits_cond_consistency --out docs/editing_cd_vs_pd
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import numpy as np

import pdist
from pdist.data import pipeline
from pdist.evaluation import frechet
from pdist.evaluation.digits import DigitsEvaluator
from pdist.runtime import layout

COMPARE_STEPS = (1, 2, 4)


def compare_settings(model: str) -> list[dict]:
    """``--pd``/``--cd`` mode: unguided DDCM rows at 2N evaluations (the teacher's also at 12 steps)."""
    steps = COMPARE_STEPS + ((12,) if model == "teacher" else ())
    return [{"method": "ddcm", "num_steps": n, "noise_fraction": 1.0, "guidance": 0.0, "nfe": 2 * n} for n in steps]


def compare_models(teacher: str, pd_run: str, cd_run: str) -> list[tuple[str, str, list[dict]]]:
    """(name, workdir, rows): the teacher; PD's N-step student for each N; the consistency student."""
    with open(os.path.join(pd_run, "summary.json")) as f:
        pd_rounds = {r["steps"]: r for r in json.load(f)}
    with open(os.path.join(cd_run, "summary.json")) as f:
        (cd_round,) = json.load(f)
    models = [("teacher", teacher, compare_settings("teacher"))]
    for n in COMPARE_STEPS:
        row = [r for r in compare_settings("pd") if r["num_steps"] == n]
        models.append((f"PD {n}-step student", layout.round_dir(pd_run, pd_rounds[n]["round"], n), row))
    cd_dir = layout.round_dir(cd_run, cd_round["round"], cd_round["steps"])
    models.append(("consistency student", cd_dir, compare_settings("cd")))
    return models


def settings(student: bool) -> list[dict]:
    """The grid of (method, options) rows; every row's evaluations are stated as ``nfe``."""
    rows = []
    if student:  # the 4-step student: DDCM on its own grid, SDEdit onto its grid points, inversion
        for w in (0.0, 1.0, 2.0):
            rows.append({"method": "ddcm", "num_steps": 4, "noise_fraction": 1.0, "guidance": w, "nfe": 8})
        for w in (1.0,):
            rows.append({"method": "sdedit", "num_steps": 2, "t_start": 0.5, "guidance": w, "nfe": 2})
            rows.append({"method": "sdedit", "num_steps": 3, "t_start": 0.75, "guidance": w, "nfe": 3})
            rows.append({"method": "sdedit", "num_steps": 4, "t_start": 1.0, "guidance": w, "nfe": 4, "scratch": True})
            rows.append({"method": "inversion", "num_steps": 4, "guidance": w, "nfe": 8})
        return rows
    for n in (4, 8, 12, 16):
        for fraction in (1.0, 0.5):
            rows.append({"method": "ddcm", "num_steps": n, "noise_fraction": fraction, "guidance": 1.0, "nfe": 2 * n})
    for w in (0.0, 2.0):
        rows.append({"method": "ddcm", "num_steps": 12, "noise_fraction": 1.0, "guidance": w, "nfe": 24})
    for attention in (4, 8):
        rows.append(
            {"method": "ddcm", "num_steps": 12, "noise_fraction": 1.0, "guidance": 1.0, "attention_steps": attention,
             "nfe": 24}
        )  # fmt: skip
    for t_start in (0.3, 0.5, 0.7, 0.9):
        rows.append({"method": "sdedit", "num_steps": 24, "t_start": t_start, "guidance": 1.0, "nfe": 24})
    rows.append({"method": "sdedit", "num_steps": 24, "t_start": 1.0, "guidance": 1.0, "nfe": 24, "scratch": True})
    for n in (4, 8, 12, 16):
        rows.append({"method": "inversion", "num_steps": n, "guidance": 1.0, "nfe": 2 * n})
    return rows


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per image, for images in [-1, 1] (peak-to-peak 2)."""
    mse = np.mean((a - b) ** 2, axis=tuple(range(1, a.ndim)))
    return 10 * np.log10(4.0 / np.maximum(mse, 1e-12))


def edit_options(row: dict) -> dict:
    """The row's keyword arguments of ``Pretrained.edit`` (besides method)."""
    return {k: v for k, v in row.items() if k not in ("nfe", "scratch", "method")}


def run_row(model, row: dict, x, a, b, evaluator, src_features, ref, seed: int) -> dict:
    options = edit_options(row)
    began = time.time()
    y = model.edit(x, a, b, method=row["method"], seed=seed, batch_size=900, **options)
    seconds = time.time() - began
    features, probs = evaluator.outputs(y)
    return {
        "accuracy": float(np.mean(probs.argmax(-1) == b)),
        "psnr": float(np.mean(psnr(y, x))),
        "feature_distance": float(np.mean(np.linalg.norm(features - src_features, axis=-1))),
        "fd": float(frechet.frechet_distance(*frechet.gaussian_stats(features), *ref)),
        "seconds": seconds,
    }


def reconstruction(model, row: dict, x, a, seed: int) -> float:
    """RMSE of the A -> A edit at the row's own weights (DDCM: 0 only where source and target weights agree)."""
    options = edit_options(row)
    y = model.edit(x, a, a, method=row["method"], seed=seed, batch_size=900, **options)
    return float(np.sqrt(np.mean((y - x) ** 2)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--student", default="")
    parser.add_argument("--pd", default="", help="a PD run of the teacher (with --cd: the students' comparison)")
    parser.add_argument("--cd", default="", help="a consistency distillation run of the teacher")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", default="docs/editing")
    args = parser.parse_args()

    evaluator = DigitsEvaluator(args.data_dir)
    test = pipeline.load_split("digits", "test", args.data_dir, 8, 1)
    train = pipeline.load_split("digits", "train", args.data_dir, 8, 1)
    ref = frechet.gaussian_stats(evaluator.features(train["image"]))
    source, labels = test["image"], test["label"].astype(np.int32)
    pairs = [(i, c) for i in range(len(source)) for c in range(10) if c != labels[i]]
    idx = np.array([i for i, _ in pairs])
    x, a, b = source[idx], labels[idx], np.array([c for _, c in pairs], np.int32)
    src_features = evaluator.features(x)
    floor = frechet.frechet_distance(*frechet.gaussian_stats(evaluator.features(source)), *ref)

    results = []
    if bool(args.pd) != bool(args.cd):
        parser.error("--pd and --cd go together (the comparison of the two students)")
    if args.pd:
        models = compare_models(args.teacher, args.pd, args.cd)
    else:
        models = [("teacher", args.teacher, settings(False))]
        models += [("student", args.student, settings(True))] if args.student else []
    for name, path, rows in models:
        model = pdist.load(path)
        for row in rows:
            per_seed = [run_row(model, row, x, a, b, evaluator, src_features, ref, s) for s in range(args.seeds)]
            out = {"model": name, "path": path, **row, "per_seed": per_seed}
            for metric in ("accuracy", "psnr", "feature_distance", "fd"):
                values = np.array([r[metric] for r in per_seed])
                out[metric] = float(values.mean())
                out[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            out["reconstruction_rmse"] = reconstruction(model, row, source, labels, 0)
            results.append(out)
            print(json.dumps({k: v for k, v in out.items() if k != "per_seed"}), flush=True)
    meta = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, {jax.default_backend()}",
        "date": time.strftime("%Y-%m-%d"),
        "edits": len(x),
        "source_fd": floor,
        "seeds": args.seeds,
    }
    with open(args.out + ".json", "w") as f:
        json.dump({"meta": meta, "rows": results}, f, indent=1)
    write_table(results, meta, args.out + ".md")
    plot(results, args.out + ".png")


def _label(r: dict) -> str:
    if r.get("scratch"):
        return "scratch"
    if r["method"] == "ddcm":
        extra = f", attention {r['attention_steps']}" if r.get("attention_steps") else ""
        return f"ddcm N={r['num_steps']}, noise {r['noise_fraction']:g}{extra}"
    if r["method"] == "sdedit":
        return f"sdedit t_start={r['t_start']:g}, {r['num_steps']} steps"
    return f"inversion N={r['num_steps']}"


def write_table(results: list[dict], meta: dict, path: str) -> None:
    lines = [
        f"# Editing digits into other classes ({meta['machine']}, {meta['date']})",
        "",
        f"{meta['edits']} edits a row (each test image into each other class), {meta['seeds']} noise seeds "
        f"(mean ± std). FD of the test split itself: {meta['source_fd']:.2f}.",
        "",
        "| model | method | w | NFE | accuracy on B | PSNR to source | feature distance | FD | A->A RMSE at its w |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['model']} | {_label(r)} | {r['guidance']:g} | {r['nfe']} | "
            f"{r['accuracy']:.3f} ± {r['accuracy_std']:.3f} | {r['psnr']:.2f} ± {r['psnr_std']:.2f} | "
            f"{r['feature_distance']:.2f} ± {r['feature_distance_std']:.2f} | {r['fd']:.2f} ± {r['fd_std']:.2f} | "
            f"{r['reconstruction_rmse']:.4f} |"
        )
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if all(r["guidance"] == 0 for r in results):  # the students' comparison
        return plot_compare(results, path)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, model in zip(axes, ("teacher", "student"), strict=True):
        rows = [r for r in results if r["model"] == model]
        if not rows:
            ax.set_visible(False)
            continue
        for kind, marker in (("ddcm", "o"), ("sdedit", "s"), ("inversion", "^"), ("scratch", "x")):
            pick = [r for r in rows if (r.get("scratch") and kind == "scratch") or
                    (not r.get("scratch") and r["method"] == kind)]  # fmt: skip
            if pick:
                ax.scatter([r["feature_distance"] for r in pick], [r["accuracy"] for r in pick], marker=marker,
                           label=kind, alpha=0.8)  # fmt: skip
        ax.set_xlabel("feature distance to the source (lower: closer)")
        ax.set_ylabel("classifier accuracy on the target class")
        ax.set_title(f"{model}: target accuracy against closeness")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_compare(results: list[dict], path: str) -> None:
    """Accuracy on B and FD against evaluations: the teacher, PD's students and the consistency student."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    groups = {
        "teacher": [r for r in results if r["model"] == "teacher"],
        "PD students": [r for r in results if r["model"].startswith("PD")],
        "consistency student": [r for r in results if r["model"] == "consistency student"],
    }
    for ax, (metric, title) in zip(
        axes, (("accuracy", "accuracy on B"), ("fd", "FD to the train split"), ("feature_distance", "feature "
        "distance to the source")), strict=True):  # fmt: skip
        for (label, rows), marker in zip(groups.items(), ("^", "o", "s"), strict=True):
            rows = sorted(rows, key=lambda r: r["nfe"])
            ax.errorbar([r["nfe"] for r in rows], [r[metric] for r in rows], yerr=[r[f"{metric}_std"] for r in rows],
                        marker=marker, capsize=3, label=label)  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_xlabel("network evaluations (2N)")
        ax.set_title(f"DDCM, w = 0: {title}")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
