"""Improved DDPM's claims measured on the digits (configs/digits_iddpm.py): NLL by loss, and sample quality
against sampling steps for fixed and learned variances.

    python bench/iddpm_digits.py --root runs/iddpm --data-dir DIR            # trains what is missing, then measures
    python bench/iddpm_digits.py --variants simple,hybrid --steps 25,50,100 --num-samples 500 --num-seeds 2
    python bench/iddpm_digits.py --variants hybrid --reuse-nll     # samples only; NLL from the last iddpm.json

For each variant: ``python -m pdist.main --config=configs/digits_iddpm.py:VARIANT`` (skipped when the workdir
holds its last checkpoint), then the NLL bound over all T = 1000 levels on the test split with clipped x-hat
(Improved DDPM's protocol, per-term breakdown), then ``ddpm`` on the respaced grid at each step count with the
``small``, ``large`` and (for models that learned them) ``learned`` variances, scored by the digits evaluator
against the train split over sampling seeds (Frechet distance, precision and recall). Writes ROOT/iddpm.json
(variants measured earlier and not now are kept), ROOT/iddpm.md and ROOT/iddpm.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import jax

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import pdist  # noqa: E402
from pdist import config as config_lib  # noqa: E402
from pdist.evaluation import (  # noqa: E402
    evaluators,
    quality,  # noqa: E402
    stats,
)
from pdist.evaluation.score import score  # noqa: E402
from pdist.evaluation.split_nll import split_nll  # noqa: E402

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CONFIG = os.path.join(REPO, "configs", "digits_iddpm.py")


def train(variant: str, workdir: str, data_dir: str | None, seed: int) -> float:
    config = config_lib.from_file(CONFIG, variant)
    last = os.path.join(workdir, "checkpoints", str(config.train.num_steps))
    if os.path.isdir(last):
        return 0.0
    began = time.time()
    args = [f"--config={CONFIG}:{variant}", f"--workdir={workdir}", f"--config.seed={seed}"]
    args += [f"--config.data.data_dir={data_dir}"] if data_dir else []
    subprocess.run([sys.executable, "-m", "pdist.main", *args], cwd=REPO, check=True)
    return time.time() - began


def measure(model, evaluator, ref, steps, variances, num_samples, num_seeds) -> list[dict]:
    rows = []
    for variance in variances:
        for n in steps:
            per_seed = []
            began = time.time()
            for seed in range(num_seeds):
                x = model.sample(num_samples, method="ddpm", num_steps=n, seed=seed, variance=variance)
                per_seed.append(score(evaluator, ref, x, pr_samples=num_samples, is_splits=1))
            row = {"variance": variance, "steps": n, "grid": model.grid(), "seconds": time.time() - began}
            row.update({m: stats.summarize([s[m] for s in per_seed]) for m in ("fd", "precision", "recall")})
            rows.append(row)
            print(f"  ddpm {variance} {n} steps: FD {stats.format_summary(row['fd'])}", flush=True)
    return rows


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for variant, r in results.items():
        for variance in dict.fromkeys(row["variance"] for row in r["samples"]):
            rs = [row for row in r["samples"] if row["variance"] == variance]
            ax.errorbar(
                [row["steps"] for row in rs],
                [row["fd"]["mean"] for row in rs],
                yerr=[row["fd"]["std"] for row in rs],
                marker="o",
                capsize=3,
                label=f"{variant}, {variance}",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("ddpm steps (respaced grid)")
    ax.set_ylabel("Frechet distance (digits features)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="runs/iddpm")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--variants", default="v_mse,simple,hybrid,vlb")
    parser.add_argument("--steps", default="25,50,100,250,1000")
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--num-seeds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="the training seed")
    parser.add_argument("--reuse-nll", action="store_true", help="take each variant's NLL from ROOT/iddpm.json")
    args = parser.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    machine = f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, {jax.devices()[0].platform}"
    path = os.path.join(args.root, "iddpm.json")
    earlier = {}
    if os.path.exists(path):
        with open(path) as f:
            stored = json.load(f)
        earlier = {k: {"args": stored["args"], **r} for k, r in stored["results"].items()}
    results = dict(earlier)
    for variant in args.variants.split(","):
        workdir = os.path.join(args.root, variant)
        seconds = train(variant, workdir, args.data_dir, args.seed)
        model = pdist.load(workdir)
        settings = model.config.eval
        settings.nll_examples = 0  # the whole test split
        began = time.time()
        if args.reuse_nll and variant in earlier:
            nll = earlier[variant]["nll"]
        else:
            nll = split_nll(model, settings)
            nll["seconds"] = time.time() - began
        print(f"{variant}: NLL {nll['bits_per_dim']:.3f} ± {nll['stderr']:.3f} bits/dim", flush=True)
        evaluator = evaluators.make("auto", model.config.data, settings)
        ref = quality.reference(evaluator, model.config, "train", args.num_samples)
        variances = ["small", "large"] + (["learned"] if model.config.diffusion.learned_variance else [])
        samples = measure(model, evaluator, ref, steps, variances, args.num_samples, args.num_seeds)
        results[variant] = {"train_seconds": seconds, "nll": nll, "samples": samples, "args": vars(args)}
    os.makedirs(args.root, exist_ok=True)
    with open(path, "w") as f:
        json.dump({"machine": machine, "args": vars(args), "results": results}, f, indent=1)
    lines = [f"# Improved DDPM on the digits ({machine})", ""]
    lines += ["| variant | NLL bits/dim | prior | decoder (L_1) | L_2..L_10 | L_11..L_100 | L_101..L_T |"]
    lines += ["|---|---:|---:|---:|---:|---:|---:|"]
    for variant, r in results.items():
        n, terms = r["nll"], r["nll"]["terms"]
        lines.append(
            f"| {variant} | {n['bits_per_dim']:.3f} ± {n['stderr']:.3f} | {n['prior']:.3f} | {terms[0]:.3f} | "
            f"{sum(terms[1:10]):.3f} | {sum(terms[10:100]):.3f} | {sum(terms[100:]):.3f} |"
        )
    for metric, name in (("fd", "Frechet distance"), ("precision", "Precision"), ("recall", "Recall")):
        lines += ["", f"{name}: mean ± std over sampling seeds [bootstrap interval] (samples, seeds per row)", ""]
        lines += ["| variant | variance | samples x seeds | " + " | ".join(f"{s} steps" for s in steps) + " |"]
        lines += ["|---|---|---|" + "---:|" * len(steps)]
        for variant, r in results.items():
            run = r["args"]
            for variance in dict.fromkeys(row["variance"] for row in r["samples"]):
                by_steps = {row["steps"]: row[metric] for row in r["samples"] if row["variance"] == variance}
                cells = [stats.format_summary(by_steps[n]) if n in by_steps else "" for n in steps]
                size = f"{run['num_samples']} x {run['num_seeds']}"
                lines.append(f"| {variant} | {variance} | {size} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    with open(os.path.join(args.root, "iddpm.md"), "w") as f:
        f.write(table)
    plot(results, os.path.join(args.root, "iddpm.png"))
    print(table)


if __name__ == "__main__":
    main()
