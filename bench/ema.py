"""The teacher's parameter average: raw parameters against EMA decays, on the default and the conditional digits
teachers, over training seeds; what chose ``config.train.ema_decay`` in configs/digits.py.

    python bench/ema.py --root runs/ema --out docs/ema            # 2 teachers x 3 seeds, about 40 min on 2 cores
    python bench/ema.py --num-steps 100 --seeds 0 --num-samples 200 --root /tmp/ema --out /tmp/ema   # a smoke run

Each (teacher, seed) is trained once, as the train job trains it (``pdist.teacher.phase_of``: the config's data
order, step keys and optimizer), and every variant's average is kept beside the run at every step: the
parameters' trajectory does not depend on the average, so one run serves every variant. Variants:

* ``raw``: the last iterate;
* ``ema D``: the debiased EMA of decay D (``pdist.runtime.step.ema_update``, what ``config.train.ema_decay``
  selects; no weight on the initialization); the run's own EMA (the config's decay) is checked to equal the
  tracked one of that decay;
* ``ema D, warm-up``: the plain EMA with the usual warm-up, decay ``min(D, (1 + k) / (10 + k))`` at update k.

Scores: Frechet distance (the digits evaluator, pdist.evaluation) of DDIM samples at ``--steps`` steps against
the train split, the sampling seed equal to the training seed (paired across variants); the conditional teacher
at each ``--weights`` w. Mean, std (ddof 1) and a percentile bootstrap interval over training seeds
(pdist.evaluation.stats), and each variant's FD as a ratio of the raw parameters' on the same seed. Each run's
scores are cached in ROOT/NAME/ema.json; a rerun trains only what is missing. Writes OUT.json and OUT.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import shutil
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from pdist import config as config_lib  # noqa: E402
from pdist import teacher  # noqa: E402
from pdist.evaluation import evaluators, quality, stats  # noqa: E402
from pdist.evaluation.score import score  # noqa: E402
from pdist.runtime import mesh as mesh_lib  # noqa: E402
from pdist.runtime import phase  # noqa: E402
from pdist.runtime.step import ema_update  # noqa: E402
from pdist.sampling import ImageSampler, Sampling  # noqa: E402
from pdist.spec import ModelSpec  # noqa: E402

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
TEACHERS = {"default": "digits", "conditional": "digits_cond"}


def variants(decays: list[float]) -> list[tuple[str, float | None, bool]]:
    """(name, decay, warm-up) of every variant; decay None: the raw parameters."""
    return (
        [("raw", None, False)]
        + [(f"ema {d:g}", d, False) for d in decays]
        + [(f"ema {d:g}, warm-up", d, True) for d in decays if d >= 0.999]
    )


@functools.partial(jax.jit, static_argnames="decay")
def _debiased(ema, params, decay, count):
    return ema_update(ema, params, decay, count)  # as the train step calls it: a float decay, an int32 count


@functools.partial(jax.jit, static_argnames="decay")
def _warm(ema, params, decay, count):
    count = count.astype(jnp.float32)
    d = jnp.minimum(decay, (1.0 + count) / (10.0 + count))
    return jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params)


class Averages:
    """Every variant's average of the iterates, updated after each step (a snapshot of the phase)."""

    def __init__(self, kinds, params):
        self.kinds = kinds
        self.values = {name: jax.tree.map(jnp.copy, params) for name, decay, _ in kinds if decay is not None}
        self.raw = params

    def __call__(self, step, state, writer):
        self.raw = state.params
        for name, decay, warm in self.kinds:
            if decay is not None:
                fn = _warm if warm else _debiased
                self.values[name] = fn(self.values[name], state.params, decay, jnp.int32(step))

    def params(self, name):
        return self.raw if name == "raw" else self.values[name]


def train(config, directory: str, kinds):
    """Trains the teacher in ``directory`` (fresh) with every variant tracked; (averages, final state)."""
    if os.path.isdir(directory):
        shutil.rmtree(directory)  # an unscored run: its averages were not kept, train it again
    spec = ModelSpec.of(config)
    mesh = mesh_lib.data_mesh()
    run = teacher.phase_of(config, spec, directory)
    averages = Averages(kinds, jax.tree.map(np.asarray, jax.jit(run.init_fn)().params))
    result = phase.run(dataclasses.replace(run, snapshot=averages, snapshot_every=1), mesh)
    return spec, averages, result.state


def measure(args, name: str, seed: int, kinds, evaluator, ref) -> dict:
    config = config_lib.from_file(os.path.join(REPO, "configs", f"{TEACHERS[name]}.py"))
    config.seed = seed
    config.data.data_dir = args.data_dir
    if args.num_steps:
        config.train.num_steps = args.num_steps
        config.optim.warmup_steps = min(config.optim.warmup_steps, args.num_steps // 10)
    config.train.sample_every = 0
    config.train.checkpoint_every = config.train.num_steps
    directory = os.path.join(args.root, f"{name}_s{seed}")
    cache = os.path.join(directory, "ema.json")
    if os.path.exists(cache):
        return json.load(open(cache))
    began = time.time()
    spec, averages, state = train(config, directory, kinds)
    own = f"ema {config.train.ema_decay:g}"
    check = None
    if own in averages.values:  # the run's own EMA is the tracked one of its decay
        diffs = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), averages.values[own], state.ema_params)
        check = max(jax.tree.leaves(diffs))
    sampler = ImageSampler(spec)
    weights = [float(w) for w in args.weights.split(",")] if spec.num_classes else [None]
    labels = spec.default_labels(args.num_samples)
    scores = {}
    for variant, _, _ in kinds:
        for w in weights:
            how = Sampling(num_steps=args.steps, grid=config.sample.grid, guidance=w, seed=seed)
            x = sampler(averages.params(variant), args.num_samples, how)
            s = score(evaluator, ref, x, pr_samples=args.num_samples, is_splits=1, labels=labels)
            key = variant if w is None else f"{variant} | w={w:g}"
            scores[key] = {k: s[k] for k in ("fd", "precision", "recall") if k in s}
            if "accuracy" in s:
                scores[key]["accuracy"] = s["accuracy"]
            print(f"{name} seed {seed} {key}: FD {s['fd']:.3f}", flush=True)
    out = {"teacher": name, "seed": seed, "ema_decay": config.train.ema_decay, "own_ema_max_diff": check,
           "num_steps": config.train.num_steps, "seconds": time.time() - began, "scores": scores}  # fmt: skip
    json.dump(out, open(cache, "w"), indent=1)
    return out


def report(args, rows: list[dict]) -> str:
    device = jax.devices()[0]
    lines = [
        f"# The teacher's parameter average ({platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, "
        f"{device.platform}, {time.strftime('%Y-%m-%d')})",
        "",
        f"`python bench/ema.py --root {args.root} --out {args.out}` (seeds {args.seeds}, "
        f"{rows[0]['num_steps']} steps). FD of {args.num_samples} DDIM samples at {args.steps} steps against the "
        "train split (digits evaluator), the sampling seed equal to the training seed; mean ± std over training "
        "seeds [percentile bootstrap 95%]; ratio: the variant's FD over the raw parameters' on the same seed "
        "(mean [min, max]). Bold: the lowest mean FD of each column.",
        "",
    ]
    for name in TEACHERS:
        mine = [r for r in rows if r["teacher"] == name]
        if not mine:
            continue
        keys = list(mine[0]["scores"])
        columns = sorted({k.split(" | ")[1] if " | " in k else "" for k in keys}, key=lambda c: (len(c), c))
        names = list(dict.fromkeys(k.split(" | ")[0] for k in keys))
        best = {c: min(names, key=lambda v: np.mean([r["scores"][_key(v, c)]["fd"] for r in mine])) for c in columns}
        lines += [f"## {name} teacher (configs/{TEACHERS[name]}.py), {len(mine)} training seeds", ""]
        head = " | ".join(f"FD {c}" if c else "FD" for c in columns)
        ratio = " | ".join(f"ratio {c}" if c else "ratio to raw" for c in columns)
        lines += [f"| parameters | {head} | {ratio} |", "|---|" + "---:|" * (2 * len(columns))]
        for v in names:
            cells = []
            for c in columns:
                fd = [r["scores"][_key(v, c)]["fd"] for r in mine]
                s = stats.summarize(fd)
                text = f"{s['mean']:.2f} ± {s['std']:.2f} [{s['low']:.2f}, {s['high']:.2f}]"
                cells.append(f"**{text}**" if best[c] == v else text)
            for c in columns:
                q = [r["scores"][_key(v, c)]["fd"] / r["scores"][_key("raw", c)]["fd"] for r in mine]
                cells.append(f"{np.mean(q):.3f} [{min(q):.3f}, {max(q):.3f}]")
            lines.append(f"| {v} | " + " | ".join(cells) + " |")
        checks = [r["own_ema_max_diff"] for r in mine if r["own_ema_max_diff"] is not None]
        if checks:
            lines += ["", f"The run's own EMA (decay {mine[0]['ema_decay']:g}) against the tracked one: largest "
                      f"difference {max(checks):.2e} over every parameter and seed."]  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def _key(variant: str, column: str) -> str:
    return variant if not column else f"{variant} | {column}"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="runs/ema")
    parser.add_argument("--out", default="docs/ema")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--teachers", default=",".join(TEACHERS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--decays", default="0.99,0.995,0.999,0.9999")
    parser.add_argument("--weights", default="0,1,2", help="guidance weights of the conditional teacher")
    parser.add_argument("--steps", type=int, default=64, help="DDIM steps")
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--num-steps", type=int, default=0, help="training steps (0: the config's)")
    args = parser.parse_args()
    kinds = variants([float(d) for d in args.decays.split(",")])
    evaluator, refs, rows = None, {}, []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name in args.teachers.split(","):
            if evaluator is None:
                config = config_lib.from_file(os.path.join(REPO, "configs", "digits.py"))
                config.data.data_dir = args.data_dir
                evaluator = evaluators.make("auto", config.data, config.eval)
                refs = quality.reference(evaluator, config, "train", args.num_samples)
            rows.append(measure(args, name, seed, kinds, evaluator, refs))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(f"{args.out}.json", "w") as f:
        json.dump({"args": vars(args), "runs": rows}, f, indent=1)
    text = report(args, rows)
    with open(f"{args.out}.md", "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
