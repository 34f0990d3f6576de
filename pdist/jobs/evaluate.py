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
The work is :mod:`pdist.evaluation`'s (``quality``, ``split_nll``, ``report``);
this module is its driver.
"""

from __future__ import annotations

import os

import jax
import ml_collections

from pdist import diffusion, vlb
from pdist.errors import ConfigError, check_one_of, check_positive
from pdist.evaluation import evaluators, quality, report
from pdist.evaluation.evaluators import EVALUATORS, resolve
from pdist.evaluation.report import metrics_of, sampler_name
from pdist.evaluation.split_nll import split_nll
from pdist.pretrained import load
from pdist.runtime import console, files, layout


def validate(config: ml_collections.ConfigDict) -> None:
    """``config.eval``: the sampler entries, guidance weights, evaluator and its weights, counts, the NLL's."""
    settings = config.eval
    quality.parse_samplers(settings.samplers)
    quality.parse_guidance(settings.guidance)
    check_one_of(settings.evaluator, ("auto", *EVALUATORS), "eval.evaluator")
    for name in ("num_samples", "num_seeds", "pr_samples", "is_splits", "batch_size", "nll_batch_size"):
        check_positive(settings[name], f"eval.{name}")
    if settings.num_samples < max(4, settings.is_splits):
        raise ConfigError(
            f"config.eval.num_samples={settings.num_samples} is too few; precision/recall need at least 4 samples "
            f"and the Inception Score one per split (config.eval.is_splits={settings.is_splits})."
        )
    if resolve(settings.evaluator, config.data.name) == "inception":
        if not settings.inception_weights:
            raise ConfigError(
                "config.eval.inception_weights is not set; convert the FID Inception weights once with "
                "`python -m pdist.interop.pytorch_fid pt_inception-2015-12-05-6726825d.pth inception.npz` "
                "and pass --config.eval.inception_weights=inception.npz."
            )
        if not files.isfile(settings.inception_weights):
            raise ConfigError(
                f"config.eval.inception_weights={settings.inception_weights!r} is not a file; pass the converted .npz."
            )
    if settings.nll:
        fixed = [v for v in diffusion.VARIANCES if v != "learned"]  # learned-variance models use their own
        check_one_of(settings.nll_variance, fixed, "eval.nll_variance")
        check_one_of(settings.nll_cdf, vlb.CDFS, "eval.nll_cdf")
        T = config.diffusion.num_timesteps
        if T is not None and settings.nll_timesteps not in (None, T):
            raise ConfigError(
                f"config.eval.nll_timesteps={settings.nll_timesteps} differs from the discrete model's T={T}; the "
                "bound of a discrete-time model is over its own levels, so leave config.eval.nll_timesteps at None."
            )
        if settings.nll_timesteps is not None:
            check_positive(settings.nll_timesteps, "eval.nll_timesteps")
        check_positive(settings.nll_draws, "eval.nll_draws")
    shape = (config.data.image_size, config.data.image_size, config.data.channels)
    if resolve(settings.evaluator, config.data.name) == "digits" and shape != (8, 8, 1):
        raise ConfigError(
            f"The digits evaluator scores 8x8x1 images and this model makes {shape[0]}x{shape[1]}x{shape[2]}; "
            "use --config.eval.evaluator=inception with --config.eval.inception_weights=FILE."
        )


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Evaluates ``config.eval.checkpoint`` (default: the newest in ``workdir``); returns the results."""
    settings = config.eval
    entries = quality.parse_samplers(settings.samplers)
    model = load(settings.checkpoint or workdir)
    if settings.ot is not None:  # a wrong expressway: one sentence before the evaluator is built
        model.check_expressway(settings.ot)
    out_dir = layout.eval_dir(workdir, model.directory, model.step)
    tag = os.path.basename(out_dir)
    evaluator = evaluators.make(settings.evaluator, model.config.data, settings)
    ref = quality.reference(evaluator, model.config, settings.reference_split, settings.pr_samples)
    if settings.nll:
        from pdist.data import pipeline

        dataset = model.config.data
        pipeline.check_split(
            pipeline.builder(dataset.name, dataset.data_dir), settings.nll_split, "config.eval.nll_split"
        )
    files.makedirs(out_dir)
    progress = os.path.join(out_dir, "progress.json")
    weights = quality.parse_guidance(settings.guidance)
    rows = quality.evaluate_model(model, evaluator, ref, entries, settings, progress, weights)
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
        result["nll"] = split_nll(model, settings)
    title = f"{tag}: {settings.num_samples} samples x {settings.num_seeds} seeds, {evaluator.name} features"
    table = report.markdown(rows, title)
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
        report.plot(rows, os.path.join(out_dir, "eval.png"), title)
    from pdist.runtime import events  # clu's writers import TensorFlow (pdist.runtime.phase)

    writer = events.writer(out_dir, just_logging=jax.process_index() > 0)
    for r in rows:
        writer.write_scalars(r["nfe"], {f"eval/{sampler_name(r)}/{m}": r[m]["mean"] for m in metrics_of([r])})
    if "nll" in result:
        writer.write_scalars(model.step, {"eval/nll_bits_per_dim": result["nll"]["bits_per_dim"]})
    writer.close()
    console.say(table.rstrip())
    console.produced("report", os.path.join(out_dir, "eval.md"))
    console.produced("table, plot", f"{os.path.join(out_dir, 'eval.json')}, eval.png")
    return result
