"""Sample quality of a model: the sampler entries ``config.eval`` names, cached reference statistics, and
:func:`evaluate_model` (every sampler and guidance weight over seeds, resumable).

A row per (method, steps, grid, guidance weight) holds the per-seed scores
(:func:`pdist.evaluation.score.score`) and their summaries over seeds
(:func:`pdist.evaluation.stats.summarize`); :mod:`pdist.evaluation.report`
renders the rows.
"""

from __future__ import annotations

import itertools
import logging
import time

import jax
import ml_collections
import numpy as np

from pdist import samplers, schedules
from pdist.errors import ConfigError
from pdist.evaluation import stats
from pdist.evaluation.report import brief, metrics_of
from pdist.evaluation.score import Reference, score
from pdist.runtime import console, files, preemption
from pdist.sampling import Sampling


def parse_samplers(spec: str) -> list[tuple[str, int, str | None]]:
    """``"ddim:8,ddpm:50:respaced"`` -> ``[("ddim", 8, None), ("ddpm", 50, "respaced")]`` (None: the model's
    ``config.sample.grid``); one sentence on a malformed entry."""
    entries = []
    for item in str(spec).split(","):
        parts = item.strip().split(":")
        method, steps, grid = parts[0], parts[1] if len(parts) > 1 else "", parts[2:]
        if (
            method not in samplers.SAMPLERS
            or not steps.isdigit()
            or int(steps) < 1
            or len(grid) > 1
            or (grid and grid[0] not in schedules.GRIDS)
        ):
            raise ConfigError(
                f"config.eval.samplers entry {item.strip()!r} is not method:steps or method:steps:grid with a method "
                f"in {sorted(samplers.SAMPLERS)}, a positive step count and a grid in {list(schedules.GRIDS)} "
                "(e.g. 'ddim:8,ddpm:50:respaced')."
            )
        entries.append((method, int(steps), grid[0] if grid else None))
    return entries


def parse_guidance(spec: str) -> list[float | None]:
    """``"0,1,2.5"`` -> ``[0.0, 1.0, 2.5]``; ``""`` -> ``[None]`` (unguided); one sentence on a bad entry."""
    if not str(spec).strip():
        return [None]
    try:
        return [float(item) for item in str(spec).split(",")]
    except ValueError:
        raise ConfigError(
            f"config.eval.guidance={spec!r} is not a comma-separated list of guidance weights (e.g. '0,1,2,4')."
        ) from None


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
    labels = model.spec.default_labels(settings.num_samples)  # the classes model.sample draws
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
            preemption.raise_if_stopped(f"evaluation ({name})", sync=True)
            sampling = Sampling(method, steps, grid, settings.clip_x, w, settings.batch_size, seed, expressway,
                                settings.get("clip_keeps_eps", False))  # fmt: skip
            x = model.sample(settings.num_samples, sampling, use_ema=settings.use_ema, progress=f"sampling {name}")
            kwargs = dict(pr_samples=settings.pr_samples, is_splits=settings.is_splits, labels=labels)
            per_seed.append(score(evaluator, ref, x, **kwargs))
            console.say(f"{method}:{steps}{guided} seed {seed}: {brief(per_seed[-1])}")
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
            "call_batch": model.spec.call_batch(w),
            "seeds": list(range(settings.seed, settings.seed + settings.num_seeds)),
            "per_seed": per_seed,
            "seconds": time.time() - began,
        }
        row.update({m: stats.summarize([s[m] for s in per_seed]) for m in metrics_of(per_seed)})
        row["class_histogram"] = np.mean([s["class_histogram"] for s in per_seed], axis=0).tolist()
        rows.append(row)
    return rows
