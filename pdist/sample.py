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

from pdist import build, images, parallel, samplers


class ImageSampler:
    """``sampler(params, n, method=..., num_steps=..., seed=...) -> [n, H, W, C]`` numpy in [-1, 1].

    With several local devices (one process), each batch is split over all of
    them (the last batch padded); the initial noise is drawn before the split,
    so deterministic samplers give the same images on any device count.
    """

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.schedule = build.schedule(config)
        self.shape = build.image_shape(config)
        self.num_classes = config.data.num_classes if config.model.class_conditional else 0
        self._compiled = {}
        single_process = jax.process_count() == 1
        self.mesh = parallel.data_mesh(jax.local_devices()) if single_process and jax.local_device_count() > 1 else None

    def _program(self, method: str, num_steps: int, clip_x: bool):
        k = (method, num_steps, clip_x)
        if k not in self._compiled:

            def run(params, noise, key, label):
                denoise_fn = build.denoiser(self.config, params, label)
                return samplers.sample(
                    denoise_fn, self.schedule, noise, method=method, num_steps=num_steps, key=key, clip_x=clip_x
                )

            self._compiled[k] = jax.jit(run)
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
        program = self._program(method, num_steps, clip_x)
        devices = 1 if self.mesh is None else self.mesh.devices.size
        if self.mesh is not None:
            params = jax.device_put(params, parallel.replicated(self.mesh))
        key = jax.random.key(seed)
        out, began, logged = [], time.time(), time.time()
        for start in range(0, num_samples, batch_size):
            n = min(batch_size, num_samples - start)
            k_noise, k_sample = jax.random.split(jax.random.fold_in(key, start))
            noise = jax.random.normal(k_noise, (n, *self.shape), jnp.float32)
            label = None if labels is None else jnp.asarray(labels[start : start + n], jnp.int32)
            if self.mesh is not None:  # pad to a multiple of the device count, then split the batch
                pad = -n % devices
                noise = jnp.concatenate([noise, jnp.zeros((pad, *self.shape), noise.dtype)])
                label = None if label is None else jnp.concatenate([label, jnp.zeros((pad,), label.dtype)])
                noise, label = jax.device_put((noise, label), parallel.batch_sharded(self.mesh))
            out.append(np.asarray(program(params, noise, k_sample, label))[:n])
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
    np.savez(npz, images=images.to_uint8(x), samples=x, **extra)
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
