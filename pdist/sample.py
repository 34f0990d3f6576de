"""Sampling images from network parameters, and the ``--config.mode=sample`` command.

:class:`ImageSampler` compiles one program per (method, steps, clip) and takes
the parameters as an argument, so the same compiled sampler serves every
checkpoint and every EMA snapshot during training.
"""

from __future__ import annotations

import logging
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from pdist import build, files, images, parallel, preemption, samplers


class ImageSampler:
    """``sampler(params, n, method=..., num_steps=..., seed=...) -> [n, H, W, C]`` numpy in [-1, 1].

    Each batch is split over every device of every process (the last batch
    zero-padded to a multiple of the device count) and gathered back, so every
    process returns all ``n`` images; in a multi-process run every process must
    make the same call. The noise is drawn from ``(seed, batch start)`` inside
    the program before the split, so deterministic samplers give the same
    images on any number of devices and processes.
    """

    def __init__(self, config: ml_collections.ConfigDict, mesh=None):
        self.config = config
        self.schedule = build.schedule(config)
        self.shape = build.image_shape(config)
        self.num_classes = config.data.num_classes if config.model.class_conditional else 0
        self.mesh = parallel.data_mesh() if mesh is None else mesh
        self._compiled = {}

    def _program(self, method: str, num_steps: int, clip_x: bool, n: int):
        k = (method, num_steps, clip_x, n)
        if k not in self._compiled:
            pad = -n % self.mesh.devices.size

            def run(params, seed_start, label):
                key = jax.random.fold_in(jax.random.key(seed_start[0]), seed_start[1])
                k_noise, k_sample = jax.random.split(key)
                noise = jax.random.normal(k_noise, (n, *self.shape), jnp.float32)
                noise = jnp.pad(noise, [(0, pad)] + [(0, 0)] * len(self.shape))
                noise = jax.lax.with_sharding_constraint(noise, parallel.batch_sharded(self.mesh))
                denoise_fn = build.denoiser(self.config, params, label)
                x = samplers.sample(
                    denoise_fn, self.schedule, noise, method=method, num_steps=num_steps, key=k_sample, clip_x=clip_x
                )
                return x[:n]

            self._compiled[k] = jax.jit(run, out_shardings=parallel.replicated(self.mesh))
        return self._compiled[k]

    def __call__(
        self,
        params,
        num_samples: int,
        *,
        method: str = "ddim",
        num_steps: int = 128,
        seed: int = 0,
        clip_x: bool = True,
        labels=None,
        batch_size: int = 256,
        log_every_seconds: float | None = None,
    ) -> np.ndarray:
        """``log_every_seconds``: log progress (images, images/s, ETA) at most this often."""
        samplers.nfe(method, num_steps, self.schedule)  # unknown method: one sentence, before compiling
        if labels is None and self.num_classes:
            labels = np.arange(num_samples) % self.num_classes
        params = parallel.put_replicated(params, self.mesh)
        out, began, logged = [], time.time(), time.time()
        for start in range(0, num_samples, batch_size):
            n = min(batch_size, num_samples - start)
            label = (
                None
                if labels is None
                else parallel.shard_rows(np.asarray(labels[start : start + n], np.int32), self.mesh)
            )
            seed_start = parallel.replicate(np.asarray([seed, start], np.int32), self.mesh)
            out.append(np.asarray(self._program(method, num_steps, clip_x, n)(params, seed_start, label)))
            preemption.check("sampling")
            done = start + n
            if log_every_seconds is not None and (time.time() - logged >= log_every_seconds or done == num_samples):
                logged, rate = time.time(), done / max(time.time() - began, 1e-9)
                logging.info(
                    "%s:%d generated %d/%d (%.1f images/s, ETA %.0fs)",
                    method,
                    num_steps,
                    done,
                    num_samples,
                    rate,
                    (num_samples - done) / rate,
                )
        return np.concatenate(out)


def write_samples(directory: str, name: str, x: np.ndarray, labels=None) -> tuple[str, str]:
    """Writes ``name.png`` (a grid) and ``name.npz`` (uint8 images, float samples, labels); returns the paths."""
    os.makedirs(directory, exist_ok=True)
    png, npz = os.path.join(directory, f"{name}.png"), os.path.join(directory, f"{name}.npz")
    scale = max(1, 256 // x.shape[1] // 4)
    images.save_png(png, images.grid(x[:256]), scale=scale)
    extra = {} if labels is None else {"labels": np.asarray(labels)}
    files.save_npz(npz, images=images.to_uint8(x), samples=x, **extra)
    return png, npz


def run(config: ml_collections.ConfigDict, workdir: str) -> tuple[str, str]:
    """``--config.mode=sample``: samples ``config.sample`` from a checkpoint; writes a PNG grid and an npz."""
    from pdist import pretrained

    s = config.sample
    model = pretrained.load(s.checkpoint or workdir)
    x = model.sample(
        s.num_samples, method=s.method, num_steps=s.num_steps, seed=s.seed, clip_x=s.clip_x, use_ema=s.use_ema
    )
    name = f"samples_{s.method}_{s.num_steps}_step{model.step}"
    png, npz = write_samples(os.path.join(workdir, "samples"), name, x)
    logging.info("Wrote %s and %s", png, npz)
    return png, npz
