"""The NLL bound of a model on a data split, in bits/dim, each batch split over every device of every process
(the bounds themselves are :mod:`pdist.evaluation.nll`'s)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pdist import rng
from pdist.runtime import console
from pdist.runtime import mesh as mesh_lib


def split_nll(model, settings: ml_collections.ConfigDict) -> dict:
    """The bound in bits/dim on ``settings.nll_examples`` images of ``settings.nll_split``, with its terms.

    A discrete model's T-step bound over its own levels; for a continuous model the T-step bound of
    ``settings.nll_timesteps`` or, when that is None, the continuous-time limit (``pdist.evaluation.nll``).
    x-hat is clipped to [-1, 1] when ``settings.clip_x`` (Improved DDPM's default).
    """
    from pdist.data import pipeline
    from pdist.evaluation.nll import continuous_bound, vlb_terms

    model_config = model.config
    T = settings.nll_timesteps or model_config.diffusion.num_timesteps
    kind = "learned" if model.spec.learned_variance else settings.nll_variance
    dataset = model_config.data
    split = pipeline.load_split(
        dataset.name, settings.nll_split, dataset.data_dir, dataset.image_size, dataset.channels
    )
    count = settings.nll_examples or len(split["image"])
    x = split["image"][:count]
    labels = split["label"][:count] if model.spec.num_classes else None
    mesh = mesh_lib.data_mesh()
    schedule = model.schedule
    params = mesh_lib.put_replicated(model.ema_params if settings.use_ema else model.params, mesh)

    @functools.partial(jax.jit, out_shardings=mesh_lib.replicated(mesh))
    def bound(params, xb, seed_start, label):
        key = rng.sample_key(seed_start[0], seed_start[1])
        denoise_fn = model.spec.bind(params, label)
        if T is None:
            out = continuous_bound(
                denoise_fn,
                schedule,
                xb,
                key,
                num_draws=settings.nll_draws,
                clip_x=settings.clip_x,
                cdf=settings.nll_cdf,
            )
            return {**out, "terms": jnp.stack([out["decoder"], out["diffusion"]])}
        return vlb_terms(
            denoise_fn,
            schedule,
            xb,
            key,
            num_timesteps=int(T),
            model_variance=kind,
            clip_x=settings.clip_x,
            cdf=settings.nll_cdf,
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
        "cdf": settings.nll_cdf,
        "prior": float(np.concatenate(priors).mean()),
    }
    if T is None:
        result["draws_per_image"] = int(settings.nll_draws)
        result["decoder"], result["diffusion"] = (terms / len(total)).tolist()
    else:  # mean bits/dim of each term, the decoder first (a continuous model's at t_min, then T KLs)
        result["terms"] = (terms / len(total)).tolist()
    return result
