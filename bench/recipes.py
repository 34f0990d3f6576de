"""Training recipes on the digits teacher, over training seeds: learning-rate schedules, and the Progressive
Distillation paper's Table 1 (network output against loss weighting).

    python bench/recipes.py --study schedules --root runs/recipes --data-dir DIR
    python bench/recipes.py --study table1 --root runs/recipes --seeds 0,1,2
    python bench/recipes.py --study schedules --num-steps 200 --lrs 1e-3 --seeds 0 --num-samples 200   # a smoke run
    python bench/recipes.py --study schedules --worker 0/3 & ...   # three processes share the study

Several processes (``--worker K/N``, K = 0 .. N-1) split a study's runs between them: the digits model is too
small to keep two cores busy, so three processes on the 2-core CPU finish the study in about half the time of
one. A refined run goes to the worker that trains its source. Workers write no report; run the command once
more without ``--worker`` when they are done (it only reads the caches) for the tables and the plot.

Every run trains ``configs/digits.py`` in this process (the compiled step is shared: a schedule's numbers and
the seed are arguments of the step) into ROOT/STUDY/NAME, with four checkpoints kept, and is skipped when its
last checkpoint is there: the study resumes where it stopped, run by run, and the runs can be spread over
sessions or machines that share ROOT. Each run's measurements are cached beside it (``recipes.json``, with the
config they were made with), so a rerun only measures what is missing.

* ``schedules``: cosine, linear, REX and refined-from-linear (the source: the linear run of the same seed at
  ``--refine-source-lr``; the refined schedule has a peak rate of its own), each at every peak rate of
  ``--lrs``; Frechet distance of 64-step DDIM samples at every kept checkpoint (its monotonicity during
  training) and at the end; each schedule's best peak rate by mean FD.
  Scored on the last iterate (``--use-ema 1`` for the EMA), which is what a schedule decides.
* ``table1``: parameterization (eps, x, v, both) against weighting (constant = x-MSE, snr = eps-MSE,
  truncated_snr, snr_plus_one); Frechet distance of the undistilled teacher at 8 and 256 DDIM steps.

Figures: mean, std (ddof 1) and a percentile bootstrap interval over training seeds (pdist.evaluation.stats),
the sampling seed equal to the training seed, so that runs of one seed are compared on the same noise (paired).
Writes ROOT/STUDY.json, ROOT/STUDY.md and ROOT/STUDY.png.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time

import jax
import ml_collections
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import pdist  # noqa: E402
from pdist import config as config_lib  # noqa: E402
from pdist import jobs  # noqa: E402
from pdist.evaluation import (  # noqa: E402
    evaluators,
    quality,  # noqa: E402
    stats,
)
from pdist.evaluation.score import score  # noqa: E402
from pdist.sampling import ImageSampler, Sampling  # noqa: E402

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SCHEDULES = ("cosine", "linear", "rex", "refined")
OUTPUTS = ("eps", "x", "v", "both")
WEIGHTINGS = ("constant", "snr", "truncated_snr", "snr_plus_one")


def base(args, seed: int):
    config = config_lib.from_file(os.path.join(REPO, "configs", "digits.py"))
    config.seed = seed
    config.data.data_dir = args.data_dir
    if args.num_steps:
        config.train.num_steps = args.num_steps
        config.optim.warmup_steps = min(config.optim.warmup_steps, args.num_steps // 10)
    config.train.checkpoint_every = config.train.num_steps // 4
    config.train.log_every = max(1, config.train.num_steps // 100)  # 100 logged norms for a run refined from it
    config.train.keep_checkpoints = 4
    config.train.sample_every = 0
    return config


def runs(args) -> list[tuple[str, dict, object]]:
    """(name, its settings, config) of every run of the study, sources before the runs refined from them."""
    seeds = [int(s) for s in args.seeds.split(",")]
    out = []
    if args.study == "schedules":
        # Peak rate by peak rate, all the schedules of a seed together: a study cut short leaves whole rows.
        schedules = args.schedules.split(",")
        for lr, seed, schedule in itertools.product([float(x) for x in args.lrs.split(",")], seeds, schedules):
            config = base(args, seed)
            config.optim.schedule, config.optim.learning_rate = schedule, lr
            if schedule == "refined":
                source = f"linear_lr{args.refine_source_lr:g}_s{seed}"
                config.optim.refine_from = os.path.join(args.root, "schedules", source)
            out.append((f"{schedule}_lr{lr:g}_s{seed}", {"schedule": schedule, "lr": lr, "seed": seed}, config))
    else:
        # The paper's weightings first (SNR, truncated SNR, SNR+1), the constant weighting last.
        for weighting, output, seed in itertools.product(WEIGHTINGS[1:] + WEIGHTINGS[:1], OUTPUTS, seeds):
            config = base(args, seed)
            config.diffusion.parameterization, config.diffusion.weighting = output, weighting
            settings = {"output": output, "weighting": weighting, "seed": seed}
            out.append((f"{output}_{weighting}_s{seed}", settings, config))
    return out


def mine(args, runs_: list) -> list:
    """The runs of worker K of N (``--worker K/N``): whole training seeds for the schedules study, so that a
    refined run follows its linear source in the same process."""
    if not args.worker:
        return runs_
    k, n = (int(v) for v in args.worker.split("/"))
    if args.study == "schedules":
        seeds = list(dict.fromkeys(s["seed"] for _, s, _ in runs_))
        return [r for r in runs_ if seeds.index(r[1]["seed"]) % n == k]
    return runs_[k::n]


def measure(workdir: str, config, evaluator, ref, args) -> dict:
    """FD (and precision/recall) of DDIM samples: every kept checkpoint at 64 steps, or the last at 8 and 256."""
    steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
    plan = [(s, 64) for s in steps] if args.study == "schedules" else [(steps[-1], 8), (steps[-1], 256)]
    rows, sampler = [], None
    for step, n in plan:
        model = pdist.load(workdir, step)
        sampler = sampler or ImageSampler(model.spec)  # one compilation per DDIM step count, for every checkpoint
        params = model.ema_params if args.use_ema else model.params
        x = sampler(params, args.num_samples, Sampling(num_steps=n, grid=model.grid(), seed=config.seed))
        s = score(evaluator, ref, x, pr_samples=args.num_samples, is_splits=1)
        rows.append({"step": step, "ddim_steps": n, **{k: s[k] for k in ("fd", "precision", "recall")}})
    return {"rows": rows, "final_loss": model.metadata.get("loss")}  # the plan ends at the last checkpoint


def _settings_of(config: dict, like: dict) -> dict:
    """``config`` restricted to the keys of ``like`` (nested): a setting pdist added after a run was cached
    (its default keeps the old behaviour) does not invalidate the run."""
    return {k: _settings_of(config[k], v) if isinstance(v, dict) else config.get(k) for k, v in like.items()}


def run_all(args) -> dict:
    results, evaluator, ref = {}, None, None
    for name, settings, config in mine(args, runs(args)):
        workdir = os.path.join(args.root, args.study, name)
        cache = os.path.join(workdir, "recipes.json")
        stored = json.loads(config.to_json())
        if os.path.exists(cache):
            with open(cache) as f:
                cached = json.load(f)
            measured = (_settings_of(stored, cached["config"]), cached["num_samples"], cached.get("use_ema"))
            if measured == (cached["config"], args.num_samples, args.use_ema):
                results[name] = cached
                continue
        if args.report_only:
            continue
        began = time.time()
        if not os.path.isdir(os.path.join(workdir, "checkpoints", str(config.train.num_steps))):
            jobs.run(config, workdir)  # the train job, checked as the command line checks it
        trained = time.time() - began
        if evaluator is None:
            evaluator = evaluators.make("auto", config.data, config.eval)
            ref = quality.reference(evaluator, config, "train", args.num_samples)
        result = {"settings": settings, "config": stored, "num_samples": args.num_samples, "use_ema": args.use_ema}
        result.update(measure(workdir, config, evaluator, ref, args))
        result["seconds"], result["train_seconds"] = time.time() - began, trained
        with open(cache, "w") as f:
            json.dump(result, f, indent=1)
        results[name] = result
        print(name, [(r["step"], r["ddim_steps"], round(r["fd"], 2)) for r in result["rows"]], flush=True)
    return results


def _group(results: dict, key) -> dict:
    groups = {}
    for r in results.values():
        groups.setdefault(key(r["settings"]), []).append(r)
    for rs in groups.values():
        rs.sort(key=lambda r: r["settings"]["seed"])
    return groups


def _paired(a: list, b: list) -> str:
    """Seed-by-seed difference of the final FD of runs ``a`` and ``b`` (same training and sampling seed), over
    the seeds both have: mean ± std and the count below 0."""
    final = lambda runs: {r["settings"]["seed"]: r["rows"][-1]["fd"] for r in runs}  # noqa: E731
    fa, fb = final(a), final(b)
    d = np.asarray([fa[s] - fb[s] for s in sorted(fa.keys() & fb.keys())])
    if not d.size:
        return "-"
    spread = f" ± {d.std(ddof=1):.2f}" if d.size > 1 else ""
    return f"{d.mean():+.2f}{spread} ({int((d < 0).sum())} of {d.size} lower)"


def best_rates(results: dict) -> dict:
    """Each schedule's peak rate of lowest mean final FD: ``{schedule: (lr, [its runs by seed])}``."""
    best = {}
    for (schedule, lr), rs in _group(results, lambda s: (s["schedule"], s["lr"])).items():
        fd = np.mean([r["rows"][-1]["fd"] for r in rs])
        if schedule not in best or fd < best[schedule][2]:
            best[schedule] = (lr, rs, fd)
    return {k: v[:2] for k, v in sorted(best.items(), key=lambda kv: SCHEDULES.index(kv[0]))}


def report(args, results: dict) -> str:
    machine = f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, {jax.devices()[0].platform}"
    lines = [f"# {args.study} ({machine})", "", f"`python bench/recipes.py {' '.join(sys.argv[1:])}`", ""]
    summary = lambda values: stats.format_summary(stats.summarize(values))  # noqa: E731
    if args.study == "schedules":
        lines += ["Final FD (64 DDIM steps) over training seeds, mean ± std [bootstrap 95%]; how many runs' FD fell"]
        lines += ["at every kept checkpoint.", ""]
        lines += ["| schedule | peak lr | seeds | final FD | final loss | FD fell at every checkpoint |"]
        lines += ["|---|---:|---:|---:|---:|---:|"]
        for (schedule, lr), rs in _group(results, lambda s: (s["schedule"], s["lr"])).items():
            finals = [r["rows"][-1]["fd"] for r in rs]
            falling = sum(all(np.diff([row["fd"] for row in r["rows"]]) < 0) for r in rs)
            loss = np.mean([r["final_loss"] for r in rs])
            cells = f"{summary(finals)} | {loss:.4f} | {falling} of {len(rs)}"
            lines.append(f"| {schedule} | {lr:g} | {len(rs)} | {cells} |")
        best = best_rates(results)
        steps = [row["step"] for row in next(iter(best.values()))[1][0]["rows"]]
        lines += ["", "Each schedule at its best peak rate: FD at every kept checkpoint (mean ± std over seeds), and"]
        lines += ["the seed-by-seed difference of its final FD to linear decay's at its best rate.", ""]
        lines += ["| schedule | peak lr | " + " | ".join(f"step {s}" for s in steps) + " | final - linear |"]
        lines += ["|---|---:|" + "---:|" * len(steps) + "---:|"]
        linear = best["linear"][1] if "linear" in best else None
        for schedule, (lr, rs) in best.items():
            by_step = np.array([[row["fd"] for row in r["rows"]] for r in rs])
            spread = by_step.std(0, ddof=1) if len(rs) > 1 else np.zeros(len(steps))
            cells = [f"{m:.2f} ± {d:.2f}" for m, d in zip(by_step.mean(0), spread, strict=True)]
            diff = "-" if schedule == "linear" or linear is None else _paired(rs, linear)
            lines.append(f"| {schedule} | {lr:g} | " + " | ".join(cells) + f" | {diff} |")
    else:
        lines += ["FD of the undistilled teacher over training seeds, mean ± std [bootstrap 95%].", ""]
        lines += ["| output | weighting | seeds | FD, 8 DDIM steps | FD, 256 DDIM steps | final loss |"]
        lines += ["|---|---|---:|---:|---:|---:|"]
        for (output, weighting), rs in _group(results, lambda s: (s["output"], s["weighting"])).items():
            cells = [summary([r["rows"][i]["fd"] for r in rs]) for i in (0, 1)]
            loss = np.mean([r["final_loss"] for r in rs])
            lines.append(f"| {output} | {weighting} | {len(rs)} | {cells[0]} | {cells[1]} | {loss:.4g} |")
    return "\n".join(lines) + "\n"


def plot(args, results: dict, path: str) -> None:
    """schedules: each schedule's learning rate at its best peak rate (seed 0; refined from its linear source)
    and FD during training; table1: mean FD at 8 and 256 steps as two heat maps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pdist import build

    if args.study == "schedules":
        fig, (ax_lr, ax_fd) = plt.subplots(1, 2, figsize=(11, 4))
        for schedule, (lr, rs) in best_rates(results).items():
            config = ml_collections.ConfigDict(rs[0]["config"])
            total = config.train.num_steps
            t = np.arange(total + 1)
            rate = np.asarray(build.optimizer(config.optim, total).learning_rate(t))
            ax_lr.plot(t, rate, label=f"{schedule} (peak {lr:g})")
            steps = [row["step"] for row in rs[0]["rows"]]
            fd = np.array([[row["fd"] for row in r["rows"]] for r in rs])
            ax_fd.errorbar(steps, fd.mean(0), yerr=fd.std(0), capsize=3, marker="o", label=schedule)
        ax_lr.set(xlabel="step", ylabel="learning rate", title="schedules at their best peak rate")
        ax_fd.set(xlabel="step", ylabel="FD (64 DDIM steps)", title="FD during training (mean ± std over seeds)")
        ax_lr.legend()
        ax_fd.legend()
    else:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        groups = _group(results, lambda s: (s["output"], s["weighting"]))
        for i, (ax, title) in enumerate(zip(axes, ("8 DDIM steps", "256 DDIM steps"), strict=True)):
            table = np.full((len(OUTPUTS), len(WEIGHTINGS)), np.nan)
            for (output, weighting), rs in groups.items():
                table[OUTPUTS.index(output), WEIGHTINGS.index(weighting)] = np.mean([r["rows"][i]["fd"] for r in rs])
            image = ax.imshow(table, cmap="viridis_r")
            for (a, b), v in np.ndenumerate(table):
                ax.text(b, a, f"{v:.1f}", ha="center", va="center", color="w")
            ax.set(xticks=range(len(WEIGHTINGS)), yticks=range(len(OUTPUTS)), title=f"mean FD, {title}")
            ax.set_xticklabels(WEIGHTINGS, rotation=20)
            ax.set_yticklabels(OUTPUTS)
            fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", choices=("schedules", "table1"), required=True)
    parser.add_argument("--root", default="runs/recipes")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seeds", default="0,1,2", help="training seeds")
    parser.add_argument("--lrs", default="4e-3,8e-3", help="peak rates (schedules), in running order")
    parser.add_argument("--num-steps", type=int, default=0, help="training steps (0: the config's)")
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument(
        "--use-ema",
        type=int,
        default=0,
        help="score the EMA parameters (1) or the last iterate (0: the default, "
        "what a schedule is about; an EMA of decay 0.999 averages over the whole of a 1,000-step run)",
    )
    parser.add_argument("--schedules", default=",".join(SCHEDULES), help="the schedules study's schedules")
    parser.add_argument(
        "--refine-source-lr",
        type=float,
        default=4e-3,
        help="peak rate of the linear run (same seed) that a refined run is refined from, at any peak of its own",
    )
    parser.add_argument("--worker", default="", help="K/N: run only this worker's share, write no report")
    parser.add_argument("--report-only", action="store_true", help="tables and plot from the cached runs only")
    args = parser.parse_args()
    results = run_all(args)
    if args.worker:
        return
    with open(os.path.join(args.root, f"{args.study}.json"), "w") as f:
        json.dump({"args": vars(args), "results": results}, f, indent=1)
    table = report(args, results)
    with open(os.path.join(args.root, f"{args.study}.md"), "w") as f:
        f.write(table)
    plot(args, results, os.path.join(args.root, f"{args.study}.png"))
    print(table)


if __name__ == "__main__":
    main()
