"""Plots a run's loss curve from its TensorBoard events and copies its sample grid.

python bench/plot_run.py --workdir=runs/digits --out=docs/digits
(writes docs/digits_loss.png and docs/digits_samples.png)
python bench/plot_run.py --workdir=runs/digits_distill --out=docs/digits_distill
(a distillation: every round's loss on one axis, docs/digits_distill_loss.png, and rounds.png copied)
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from pdist import images
from pdist.runtime.layout import scalars


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", required=True, help="path prefix of the PNGs")
    args = parser.parse_args()
    if os.path.exists(os.path.join(args.workdir, "summary.json")):
        return plot_rounds(args.workdir, args.out)
    step, loss = scalars(args.workdir, "loss")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(step, loss)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (mean over each log interval)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(f"{args.out}_loss.png", dpi=120)
    x = np.load(os.path.join(args.workdir, "samples.npz"))["samples"][:100]
    images.save_png(f"{args.out}_samples.png", images.grid(x, columns=10), scale=4)
    print("step  loss")
    for s, v in list(zip(step, loss, strict=True))[:: max(len(step) // 10, 1)] + [(step[-1], loss[-1])]:
        print(f"{s:5d} {v:.4f}")


def plot_rounds(workdir: str, out: str) -> None:
    """Each round's distillation loss against cumulative updates, one colour per round."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    offset = 0
    for folder in sorted(glob.glob(os.path.join(workdir, "round_*"))):
        step, loss = scalars(folder, "loss")
        steps_label = os.path.basename(folder).split("_")[-1].replace("steps", "")
        ax.plot(offset + step, loss, label=f"{steps_label}")
        print(f"{os.path.basename(folder)}: loss {loss[0]:.3g} -> {loss[-1]:.3g} over {step[-1]} updates")
        offset += step[-1]
    ax.set(xlabel="updates (all rounds)", ylabel="distillation loss", yscale="log")
    ax.legend(title="student steps", fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(f"{out}_loss.png", dpi=120)
    shutil.copy(os.path.join(workdir, "rounds.png"), f"{out}_rounds.png")


if __name__ == "__main__":
    main()
