"""``--config.mode=eval``: sample quality (and optionally NLL) of one checkpoint, with seed variance.

For each ``method:steps[:grid]`` entry of ``config.eval.samplers`` and each of
``config.eval.num_seeds`` seeds: generate ``num_samples`` images (each batch
split over every device of every process and gathered), score them against the reference split with the
evaluator network (Frechet distance, Inception Score, precision/recall, class
histogram), then summarize every metric over seeds (mean, std, bootstrap 95%
interval). Writes ``eval.json``, ``eval.md`` (a table; differences within seed
noise of the best are marked), ``eval.png`` (each metric against function
evaluations, one line per sampler) and TensorBoard scalars under
``WORKDIR/eval/TAG/``; ``TAG`` names the checkpoint (run or round, and step).
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pdist import build, rng, samplers
from pdist import config as config_lib
from pdist.evaluation import evaluators, stats
from pdist.evaluation.score import METRICS, Reference, score
from pdist.pretrained import load
from pdist.runtime import console, events, files, preemption, workdir
from pdist.runtime import mesh as mesh_lib
from pdist.sampling import Sampling, requested_labels

LOWER_IS_BETTER = {"fd": True, "is": False, "precision": False, "recall": False, "accuracy": False}
LABELS = {
    "fd": "Frechet distance",
    "is": "Inception Score",
    "precision": "precision",
    "recall": "recall",
    "accuracy": "class accuracy",
}


def reference(evaluator, model_config: ml_collections.ConfigDict, split: str, pr_samples: int) -> Reference:
    """Reference statistics of ``split`` through ``evaluator``, computed once and cached."""
    data = model_config.data
    dataset = f"{data.name}_{split}_{data.image_size}".replace("/", "_").replace(":", "_")
    key = f"{evaluator.cache_key}_{dataset}_pr{pr_samples}"
    path = files.cache_dir("reference", f"{key}.npz")
    if files.exists(path):
        return Reference.load(path)
    from pdist.data import pipeline

    images = pipeline.load_split(data.name, split, data.data_dir, data.image_size, data.channels)["image"]
    logging.info("Reference statistics of %s[%s] (%d images) through %s", data.name, split, len(images), evaluator.name)
    ref = Reference.from_features(evaluator.outputs(images)[0], pr_samples)
    ref.save(path)
    return ref


def evaluate_model(
    model,
    evaluator,
    ref: Reference,
    entries,
    settings: ml_collections.ConfigDict,
    progress: str | None = None,
    weights=(None,),
) -> list[dict]:
    """One row per (method, steps) or (method, steps, grid) entry and guidance weight of ``weights`` (None:
    unguided): the grid (None or left out: the model's ``config.sample.grid``), NFE, per-seed metrics and
    their summaries. A class-conditional model samples the classes 0, 1, 2, ... in turn; when the evaluator
    classifies the same classes, ``accuracy`` is the fraction of samples it assigns to the requested class.
    A guided step is one network call on twice the batch: ``nfe`` counts calls, ``call_batch`` says 2 (1 for
    a guided-distillation student, which takes w as an input).

    ``progress``: a JSON file of the finished (method, steps, seed) scores,
    written after each one and read back, so an interrupted evaluation
    resumes at the seed it was on.
    """
    done = {}
    if progress and files.exists(progress):
        done = files.read_json(progress)
    rows = []
    expressway = settings.get("ot")  # a DPM-OT expressway file, or None
    labels = requested_labels(model.config, settings.num_samples)  # the classes model.sample draws
    if evaluator.num_classes != model.config.data.num_classes:
        labels = None  # the evaluator's classifier does not know them: no accuracy
    for (method, steps, *grid), w in itertools.product(entries, weights):
        grid = model.grid(grid[0] if grid else None)
        per_seed, began = [], time.time()
        for seed in range(settings.seed, settings.seed + settings.num_seeds):
            guided = "" if w is None else f":w{w:g}"
            on_ot = "" if expressway is None else f":ot={expressway}"
            name = f"{method}:{steps}:{grid}{guided}{on_ot}:seed{seed}:n{settings.num_samples}"
            if name in done:
                per_seed.append(done[name])
                continue
            preemption.check(f"evaluation ({name})", sync=True)
            sampling = Sampling(method, steps, grid, settings.clip_x, w, settings.batch_size, seed, expressway)
            x = model.sample(settings.num_samples, sampling, use_ema=settings.use_ema, progress=f"sampling {name}")
            kwargs = dict(pr_samples=settings.pr_samples, is_splits=settings.is_splits, labels=labels)
            per_seed.append(score(evaluator, ref, x, **kwargs))
            console.say(f"{method}:{steps}{guided} seed {seed}: {_brief(per_seed[-1])}")
            done[name] = per_seed[-1]
            if progress and jax.process_index() == 0:
                files.write_json(progress, done)
        row = {
            "method": method,
            "steps": steps,
            "grid": grid,
            "guidance": w,
            "ot": expressway,
            "nfe": samplers.nfe(method, steps, model.schedule),
            "call_batch": build.call_batch(model.config, w),
            "seeds": list(range(settings.seed, settings.seed + settings.num_seeds)),
            "per_seed": per_seed,
            "seconds": time.time() - began,
        }
        row.update({m: stats.summarize([s[m] for s in per_seed]) for m in _metrics(per_seed)})
        row["class_histogram"] = np.mean([s["class_histogram"] for s in per_seed], axis=0).tolist()
        rows.append(row)
    return rows


def _metrics(rows: list[dict]) -> list[str]:
    """The metrics every row (a score, or a summarized row) holds: METRICS, and accuracy where measured."""
    return [m for m in (*METRICS, "accuracy") if all(m in r for r in rows)]


def _sampler(r: dict) -> str:
    return r["method"] if r.get("guidance") is None else f"{r['method']} w={r['guidance']:g}"


def _brief(s: dict) -> str:
    return ", ".join(f"{m} {s[m]:.4g}" for m in _metrics([s]))


def markdown(rows: list[dict], title: str) -> str:
    """The table; a cell within seed noise of its column's best is marked with ≈ (bootstrap 95%)."""
    metrics = _metrics(rows)
    lines = [
        f"# {title}",
        "",
        "mean ± std [bootstrap 95% interval] over seeds; ≈: not resolved from the column's best at 95%. A guided",
        "sampler (w: its guidance weight) calls the network NFE times on twice the batch (a guided-distillation",
        "student: on the batch, with w as an input).",
        "",
        "| sampler | steps | grid | NFE | " + " | ".join(LABELS[m] for m in metrics) + " |",
        "|---|---:|---|---:|" + "---:|" * len(metrics),
    ]
    best = {}
    for m in metrics:
        sign = 1 if LOWER_IS_BETTER[m] else -1
        best[m] = min(rows, key=lambda r: sign * r[m]["mean"])
    for r in rows:
        cells = []
        for m in metrics:
            cell = stats.format_summary(r[m], 2 if m in ("fd", "is") else 3)
            if r is best[m]:
                cell = f"**{cell}**"
            elif r[m]["n"] > 1 and not stats.resolved(r[m]["values"], best[m][m]["values"]):
                cell += " ≈"
            cells.append(cell)
        lines.append(
            f"| {_sampler(r)} | {r['steps']} | {r.get('grid', '-')} | {r['nfe']} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = _metrics(rows)
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6))
    lines = dict.fromkeys((_sampler(r), r.get("grid")) for r in rows)  # one line per sampler and grid
    several_grids = len({grid for _, grid in lines}) > 1
    for ax, m in zip(axes, metrics, strict=True):
        for method, grid in lines:
            rs = sorted((r for r in rows if (_sampler(r), r.get("grid")) == (method, grid)), key=lambda r: r["nfe"])
            ax.errorbar(
                [r["nfe"] for r in rs],
                [r[m]["mean"] for r in rs],
                yerr=[r[m]["std"] for r in rs],
                marker="o",
                capsize=3,
                label=f"{method} ({grid})" if several_grids else method,
            )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("function evaluations")
        ax.set_title(LABELS[m])
        if m == "fd":
            ax.set_yscale("log")
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    with files.atomic(path) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def nll(model, settings: ml_collections.ConfigDict) -> dict:
    """The bound in bits/dim on ``settings.nll_examples`` images of ``settings.nll_split``, with its terms.

    A discrete model's T-step bound over its own levels; for a continuous model the T-step bound of
    ``settings.nll_timesteps`` or, when that is None, the continuous-time limit (``pdist.evaluation.nll``).
    x-hat is clipped to [-1, 1] when ``settings.clip_x`` (Improved DDPM's default).
    """
    from pdist.data import pipeline
    from pdist.evaluation.nll import continuous_bound, vlb_terms

    model_config = model.config
    T = settings.nll_timesteps or model_config.diffusion.num_timesteps
    kind = "learned" if model_config.diffusion.learned_variance else settings.nll_variance
    dataset = model_config.data
    split = pipeline.load_split(
        dataset.name, settings.nll_split, dataset.data_dir, dataset.image_size, dataset.channels
    )
    count = settings.nll_examples or len(split["image"])
    x = split["image"][:count]
    labels = split["label"][:count] if model_config.model.class_conditional else None
    mesh = mesh_lib.data_mesh()
    schedule = model.schedule
    params = mesh_lib.put_replicated(model.ema_params if settings.use_ema else model.params, mesh)

    @functools.partial(jax.jit, out_shardings=mesh_lib.replicated(mesh))
    def bound(params, xb, seed_start, label):
        key = rng.sample_key(seed_start[0], seed_start[1])
        denoise_fn = build.denoiser(model_config, params, label)
        if T is None:
            out = continuous_bound(denoise_fn, schedule, xb, key, num_draws=settings.nll_draws, clip_x=settings.clip_x)
            return {**out, "terms": jnp.stack([out["decoder"], out["diffusion"]])}
        return vlb_terms(
            denoise_fn, schedule, xb, key, num_timesteps=int(T), model_variance=kind, clip_x=settings.clip_x
        )

    totals, priors, terms = [], [], 0.0
    shown = console.Progress("NLL", len(x), unit="images")
    for start in range(0, len(x), settings.nll_batch_size):  # each batch split over every device of every process
        xb = x[start : start + settings.nll_batch_size]
        lb = None if labels is None else mesh_lib.shard_rows(labels[start : start + len(xb)], mesh)
        seed_start = mesh_lib.replicate(np.asarray([settings.seed, start], np.int32), mesh)
        out = bound(params, mesh_lib.shard_rows(xb, mesh), seed_start, lb)
        out = {k: np.asarray(v)[..., : len(xb)] for k, v in out.items()}  # without the padding rows
        totals.append(out["total"])
        priors.append(out["prior"])
        terms = terms + out["terms"].sum(axis=1)
        shown.update(start + len(xb))
    shown.close()
    total = np.concatenate(totals)
    result = {
        "bits_per_dim": float(total.mean()),
        # over images; in the continuous-time limit it includes the Monte-Carlo error of each image's estimate
        "stderr": float(total.std(ddof=1) / np.sqrt(len(total))) if len(total) > 1 else 0.0,
        "examples": len(total),
        "split": settings.nll_split,
        "bound": "continuous" if T is None else f"{T} steps",
        "num_timesteps": T,
        "model_variance": "small" if T is None else kind,
        "clip_x": bool(settings.clip_x),
        "prior": float(np.concatenate(priors).mean()),
    }
    if T is None:
        result["draws_per_image"] = int(settings.nll_draws)
        result["decoder"], result["diffusion"] = (terms / len(total)).tolist()
    else:  # mean bits/dim of each term, the decoder first (a continuous model's at t_min, then T KLs)
        result["terms"] = (terms / len(total)).tolist()
    return result


def run(config: ml_collections.ConfigDict, directory: str) -> dict:
    """Evaluates ``config.eval.checkpoint`` (default: the newest in ``directory``); returns the results."""
    settings = config.eval
    entries = config_lib.parse_samplers(settings.samplers)
    model = load(settings.checkpoint or directory)
    if settings.ot is not None:  # a wrong expressway: one sentence before the evaluator is built
        model.check_expressway(settings.ot)
    out_dir = workdir.eval_dir(directory, model.directory, model.step)
    tag = os.path.basename(out_dir)
    evaluator = evaluators.make(settings.evaluator, model.config.data, settings)
    ref = reference(evaluator, model.config, settings.reference_split, settings.pr_samples)
    if settings.nll:
        from pdist.data import pipeline

        dataset = model.config.data
        pipeline.check_split(
            pipeline.builder(dataset.name, dataset.data_dir), settings.nll_split, "config.eval.nll_split"
        )
    files.makedirs(out_dir)
    progress = os.path.join(out_dir, "progress.json")
    weights = config_lib.parse_guidance(settings.guidance)
    rows = evaluate_model(model, evaluator, ref, entries, settings, progress, weights)
    result = {
        "checkpoint": model.directory,
        "step": model.step,
        "round": model.metadata.get("round"),
        "evaluator": evaluator.name,
        "evaluator_test_accuracy": getattr(evaluator, "test_accuracy", None),
        "reference_split": settings.reference_split,
        "num_samples": settings.num_samples,
        "rows": rows,
    }
    if settings.nll:
        result["nll"] = nll(model, settings)
    title = f"{tag}: {settings.num_samples} samples x {settings.num_seeds} seeds, {evaluator.name} features"
    table = markdown(rows, title)
    if "nll" in result:
        n = result["nll"]
        clip = "clipped" if n["clip_x"] else "unclipped"
        table += (
            f"\nNLL on {n['split']} ({n['examples']} images, {n['bound']} bound, {n['model_variance']} variance, "
            f"{clip} x-hat): {n['bits_per_dim']:.4f} ± {n['stderr']:.4f} bits/dim\n"
        )
    if jax.process_index() == 0:  # every process holds the same results; one writes them
        files.write_json(os.path.join(out_dir, "eval.json"), result)
        files.write_text(os.path.join(out_dir, "eval.md"), table)
        plot(rows, os.path.join(out_dir, "eval.png"), title)
    writer = events.writer(out_dir, just_logging=jax.process_index() > 0)
    for r in rows:
        writer.write_scalars(r["nfe"], {f"eval/{_sampler(r)}/{m}": r[m]["mean"] for m in _metrics([r])})
    if "nll" in result:
        writer.write_scalars(model.step, {"eval/nll_bits_per_dim": result["nll"]["bits_per_dim"]})
    writer.close()
    console.say(table.rstrip())
    console.produced("report", os.path.join(out_dir, "eval.md"))
    console.produced("table, plot", f"{os.path.join(out_dir, 'eval.json')}, eval.png")
    return result
