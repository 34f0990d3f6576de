"""Soak test: a digits training and a distillation killed at random moments, restarted, compared bit for bit.

    python bench/soak.py --kills=12 --workdir=/tmp/pdist_soak

Each job first runs uninterrupted. Then the same command runs again in a
fresh workdir and is stopped ``--kills`` times at a random moment (uniform in
``--min-seconds`` .. ``--max-seconds`` after its start) with SIGKILL or
SIGTERM at random, restarted each time, and finally left to finish. The
table gives, per job, the kills of each kind that landed before the run
finished, how many SIGTERMs exited cleanly (status 143 with a checkpoint at
the current step), how many SIGKILLs left a half-written checkpoint behind,
and whether the final parameters (and EMA parameters, of every distillation
round) equal the uninterrupted run's bit for bit.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

TEACHER = [
    "--config.model.ch=16",
    "--config.model.head_dim=16",
    "--config.train.batch_size=32",
    "--config.train.num_steps=3000",
    "--config.train.checkpoint_every=100",
    "--config.train.log_every=50",
    "--config.train.sample_every=1000",
    "--config.train.num_grid_samples=16",
    "--config.sample.num_steps=8",
    "--config.sample.num_samples=16",
    "--config.optim.warmup_steps=100",
]


def distill_args(teacher: str) -> list[str]:
    return [
        "--config.model.ch=16",
        "--config.model.head_dim=16",
        f"--config.distill.teacher={teacher}",
        "--config.distill.start_steps=16",
        "--config.distill.final_steps=2",
        "--config.distill.updates_per_round=400",
        "--config.distill.updates_last_rounds=400",
        "--config.distill.fidelity_samples=64",
        "--config.train.batch_size=32",
        "--config.train.checkpoint_every=100",
        "--config.train.log_every=50",
    ]


def command(config: str, workdir: str, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "pdist.main", f"--config={config}", f"--workdir={workdir}", *args]


def env() -> dict:
    return dict(os.environ, JAX_PLATFORMS="cpu")


def finish(cmd: list[str], log: str) -> float:
    began = time.time()
    with open(log, "a") as f:
        out = subprocess.run(cmd, cwd=REPO, env=env(), stdout=f, stderr=f)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed with status {out.returncode}; see {log}")
    return time.time() - began


def partial_saves(workdir: str) -> int:
    return sum(
        1 for root, dirs, _ in os.walk(workdir) for d in dirs if "orbax-checkpoint-tmp" in d and "checkpoints" in root
    )


def soak(cmd: list[str], workdir: str, kills: int, rng: random.Random, low: float, high: float, log: str) -> dict:
    counts = {"sigkill": 0, "sigterm": 0, "sigterm_clean": 0, "partial_saves_left": 0, "finished_early": 0}
    for _ in range(kills):
        how = rng.choice([signal.SIGKILL, signal.SIGTERM])
        delay = rng.uniform(low, high)
        with open(log, "a") as f:
            f.write(f"\n=== soak: {how.name} after {delay:.2f}s\n")
            f.flush()
            proc = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=f, stderr=f)
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(how)
                proc.wait()
        if proc.returncode == 0:
            counts["finished_early"] += 1
            break
        if how == signal.SIGKILL:
            counts["sigkill"] += 1
            counts["partial_saves_left"] += partial_saves(workdir) > 0
        else:
            counts["sigterm"] += 1
            counts["sigterm_clean"] += proc.returncode == 128 + signal.SIGTERM
    finish(cmd, log)
    return counts


def same_parameters(a: str, b: str) -> bool:
    import pdist

    x, y = pdist.load(a), pdist.load(b)
    leaves = lambda m: jax.tree.leaves((m.params, m.ema_params))  # noqa: E731
    return x.step == y.step and all(
        np.array_equal(np.asarray(u), np.asarray(v)) for u, v in zip(leaves(x), leaves(y), strict=True)
    )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/pdist_soak")
    p.add_argument("--kills", type=int, default=12, help="kills per job (training, then distillation)")
    p.add_argument("--min-seconds", type=float, default=2.0)
    p.add_argument("--max-seconds", type=float, default=30.0)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    os.makedirs(a.workdir, exist_ok=True)
    rng = random.Random(a.seed)
    log = os.path.join(a.workdir, "soak.log")
    rows = []

    ref_teacher = os.path.join(a.workdir, "teacher_uninterrupted")
    seconds = finish(command("configs/digits.py", ref_teacher, TEACHER), log)
    soaked = os.path.join(a.workdir, "teacher_soaked")
    counts = soak(
        command("configs/digits.py", soaked, TEACHER), soaked, a.kills, rng, a.min_seconds, a.max_seconds, log
    )
    rows.append({"job": "train 3000 steps", "uninterrupted_s": seconds, **counts,
                 "equal": same_parameters(ref_teacher, soaked)})  # fmt: skip

    args = distill_args(ref_teacher)
    ref = os.path.join(a.workdir, "distill_uninterrupted")
    seconds = finish(command("configs/digits_distill.py", ref, args), log)
    soaked = os.path.join(a.workdir, "distill_soaked")
    counts = soak(command("configs/digits_distill.py", soaked, args), soaked, a.kills, rng, a.min_seconds,
                  a.max_seconds, log)  # fmt: skip
    rounds = sorted(n for n in os.listdir(ref) if n.startswith("round_"))
    equal = all(same_parameters(os.path.join(ref, r), os.path.join(soaked, r)) for r in rounds)
    with open(os.path.join(ref, "summary.json")) as f, open(os.path.join(soaked, "summary.json")) as g:
        strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
        equal = equal and strip(json.load(f)) == strip(json.load(g))
    rows.append({"job": f"distill 16 -> 2 steps ({len(rounds)} rounds)", "uninterrupted_s": seconds, **counts,
                 "equal": equal})  # fmt: skip

    print(
        "| job | uninterrupted (s) | SIGKILL | half-written saves left | SIGTERM | clean exits | finished early "
        "| bit-identical |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        equal = "yes" if r["equal"] else "NO"
        print(f"| {r['job']} | {r['uninterrupted_s']:.0f} | {r['sigkill']} | {r['partial_saves_left']} | "
              f"{r['sigterm']} | {r['sigterm_clean']} | {r['finished_early']} | {equal} |")  # fmt: skip
    with open(os.path.join(a.workdir, "soak.json"), "w") as f:
        json.dump(rows, f, indent=1)
    if not all(r["equal"] for r in rows):
        sys.exit("The soaked runs differ from the uninterrupted ones.")


if __name__ == "__main__":
    main()
