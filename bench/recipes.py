"""Training recipes on the digits teacher, over training seeds: learning-rate schedules, and the Progressive
Distillation paper's Table 1 (network output against loss weighting).

    python bench/recipes.py --study schedules --root runs/recipes --data-dir DIR
    python bench/recipes.py --study table1 --root runs/recipes --seeds 0,1,2
    python bench/recipes.py --study schedules --num-steps 200 --lrs 1e-3 --seeds 0 --num-samples 200   # a smoke run

Every run trains ``configs/digits.py`` in this process (the compiled step is shared: a schedule's numbers and
the seed are arguments of the step) into ROOT/STUDY/NAME, with four checkpoints kept, and is skipped when its
last checkpoint is there: the study resumes where it stopped, run by run, and the runs can be spread over
sessions or machines that share ROOT. Each run's measurements are cached beside it (``recipes.json``, with the
config they were made with), so a rerun only measures what is missing.

* ``schedules``: cosine, linear, REX and refined-from-linear (the linear run of the same peak rate and seed is
  the source), each at every peak rate of ``--lrs``; Frechet distance of 64-step DDIM samples at every kept
  checkpoint (its monotonicity during training) and at the end; each schedule's best peak rate by mean FD.
* ``table1``: parameterization (eps, x, v, both) against weighting (constant = x-MSE, snr = eps-MSE,
  truncated_snr, snr_plus_one); Frechet distance of the undistilled teacher at 8 and 256 DDIM steps.

Figures: mean, std (ddof 1) and a percentile bootstrap interval over training seeds (pdist.evaluation.stats),
the sampling seed fixed per training seed. Writes ROOT/STUDY.json and ROOT/STUDY.md.
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
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import pdist  # noqa: E402
from pdist import config as config_lib  # noqa: E402
from pdist.evaluation import evaluators, stats  # noqa: E402
from pdist.evaluation.score import score  # noqa: E402
from pdist.jobs import evaluate, train  # noqa: E402

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
        for schedule, lr, seed in itertools.product(SCHEDULES, [float(x) for x in args.lrs.split(",")], seeds):
            config = base(args, seed)
            config.optim.schedule, config.optim.learning_rate = schedule, lr
            if schedule == "refined":
                config.optim.refine_from = os.path.join(args.root, "schedules", f"linear_lr{lr:g}_s{seed}")
            out.append((f"{schedule}_lr{lr:g}_s{seed}", {"schedule": schedule, "lr": lr, "seed": seed}, config))
    else:
        for output, weighting, seed in itertools.product(OUTPUTS, WEIGHTINGS, seeds):
            config = base(args, seed)
            config.diffusion.parameterization, config.diffusion.weighting = output, weighting
            settings = {"output": output, "weighting": weighting, "seed": seed}
            out.append((f"{output}_{weighting}_s{seed}", settings, config))
    return out


def measure(workdir: str, config, evaluator, ref, args) -> dict:
    """FD (and precision/recall) of DDIM samples: every kept checkpoint at 64 steps, or the last at 8 and 256."""
    steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
    plan = [(s, 64) for s in steps] if args.study == "schedules" else [(steps[-1], 8), (steps[-1], 256)]
    rows = []
    for step, n in plan:
        model = pdist.load(workdir, step)
        x = model.sample(args.num_samples, method="ddim", num_steps=n, seed=config.seed)
        s = score(evaluator, ref, x, pr_samples=args.num_samples, is_splits=1)
        rows.append({"step": step, "ddim_steps": n, **{k: s[k] for k in ("fd", "precision", "recall")}})
    return {"rows": rows, "final_loss": pdist.load(workdir).metadata.get("loss")}


def run_all(args) -> dict:
    results, evaluator, ref = {}, None, None
    for name, settings, config in runs(args):
        workdir = os.path.join(args.root, args.study, name)
        cache = os.path.join(workdir, "recipes.json")
        stored = json.loads(config.to_json())
        if os.path.exists(cache):
            with open(cache) as f:
                cached = json.load(f)
            if cached["config"] == stored and cached["num_samples"] == args.num_samples:
                results[name] = cached
                continue
        began = time.time()
        if not os.path.isdir(os.path.join(workdir, "checkpoints", str(config.train.num_steps))):
            config_lib.validate(config)
            train.run(config, workdir)
        if evaluator is None:
            evaluator = evaluators.make("auto", config.data, config.eval)
            ref = evaluate.reference(evaluator, config, "train", args.num_samples)
        result = {"settings": settings, "config": stored, "num_samples": args.num_samples}
        result.update(measure(workdir, config, evaluator, ref, args))
        result["seconds"] = time.time() - began
        with open(cache, "w") as f:
            json.dump(result, f, indent=1)
        results[name] = result
        print(name, [(r["step"], r["ddim_steps"], round(r["fd"], 2)) for r in result["rows"]], flush=True)
    return results


def _group(results: dict, key) -> dict:
    groups = {}
    for r in results.values():
        groups.setdefault(key(r["settings"]), []).append(r)
    return groups


def report(args, results: dict) -> str:
    machine = f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, {jax.devices()[0].platform}"
    lines = [f"# {args.study} ({machine})", "", f"`python bench/recipes.py {' '.join(sys.argv[1:])}`", ""]
    if args.study == "schedules":
        lines += ["| schedule | peak lr | seeds | final FD (64 DDIM steps) | FD fell at every checkpoint |"]
        lines += ["|---|---:|---:|---:|---:|"]
        for (schedule, lr), rs in _group(results, lambda s: (s["schedule"], s["lr"])).items():
            finals = [r["rows"][-1]["fd"] for r in rs]
            falling = sum(all(np.diff([row["fd"] for row in r["rows"]]) < 0) for r in rs)
            lines.append(
                f"| {schedule} | {lr:g} | {len(rs)} | {stats.format_summary(stats.summarize(finals))} | "
                f"{falling} of {len(rs)} |"
            )
    else:
        lines += ["| output | weighting | seeds | FD, 8 DDIM steps | FD, 256 DDIM steps |", "|---|---|---:|---:|---:|"]
        for (output, weighting), rs in _group(results, lambda s: (s["output"], s["weighting"])).items():
            cells = [stats.format_summary(stats.summarize([r["rows"][i]["fd"] for r in rs])) for i in (0, 1)]
            lines.append(f"| {output} | {weighting} | {len(rs)} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", choices=("schedules", "table1"), required=True)
    parser.add_argument("--root", default="runs/recipes")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--seeds", default="0,1,2", help="training seeds")
    parser.add_argument("--lrs", default="5e-4,1e-3,2e-3", help="peak learning rates (schedules)")
    parser.add_argument("--num-steps", type=int, default=0, help="training steps (0: the config's)")
    parser.add_argument("--num-samples", type=int, default=1000)
    args = parser.parse_args()
    results = run_all(args)
    with open(os.path.join(args.root, f"{args.study}.json"), "w") as f:
        json.dump({"args": vars(args), "results": results}, f, indent=1)
    table = report(args, results)
    with open(os.path.join(args.root, f"{args.study}.md"), "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    main()
