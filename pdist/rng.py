"""Every random stream in pdist, derived from ``config.seed``; nothing random is stored or drawn elsewhere.

A run is a sequence of phases: phase 0 is teacher training, phase ``r >= 1``
is distillation round ``r``. Keys are never stored in checkpoints; each is
recomputed from the seed, so a resumed run draws what the uninterrupted one
drew.

Stream: derivation (where it is used).

- Network initialization: ``fold_in(key(seed), 0)`` (:func:`init_key`; ``build.state_init``).
- A phase's step key: ``fold_in(key(seed), 1)`` for the teacher, ``fold_in(key(seed), 1000 + r)``
  for round r (:func:`phase_key`).
- One step: ``fold_in(phase key, step)``, split into (timestep sampler, loss) (``runtime.step``).
- One loss call: the loss key split in three: ``t``, ``noise``, the model's dropout (``losses.drawer``).
- Micro-batch j of gradient accumulation: ``t`` and ``noise`` drawn once for the whole batch from the
  loss key; dropout from ``fold_in(loss key, j)`` (``runtime.step``).
- Data order: ``data_seed = seed + 1000 r`` (:func:`data_seed`; teacher r = 0); shuffle seed
  ``data_seed + process``, flips keyed by ``(data_seed * 1000 + process, position)`` (``data.pipeline``).
- A sampled batch: ``fold_in(key(seed), index of its first image)`` split into (noise, sampler)
  (:func:`sample_key`; ``sampling.ImageSampler``).
- An edited batch (``Pretrained.edit``): ``fold_in(key(seed), index of its first image)`` (:func:`sample_key`),
  split into (start noise, steps' noise) by ``editing.ddcm``, (noise, sampler) by ``editing.sdedit``.
- A DPM-OT expressway (``Pretrained.expressway(seed=)``): ``key(seed)`` split into (the targets' noise, the
  solver); solver step k draws its Monte-Carlo points from ``fold_in(solver key, k)`` (``ot.solve``).
- The NLL of a batch: ``fold_in(key(eval.seed), index of its first image)``; level i adds
  ``fold_in(that, i)`` (:func:`sample_key`; ``jobs.evaluate``, ``evaluation.nll``).
- The digits evaluator: its own constants (``evaluation.digits.SEED``), trained once and cached.
- The precision/recall reference subset: ``numpy.random.default_rng(0)`` (``evaluation.score``).

Because the data order depends on the process index, a resumed run sees the
same batches only on the same number of processes.
"""

from __future__ import annotations

import jax

TEACHER = 0  # the phase index of teacher training; distillation round r is phase r


def init_key(seed: int) -> jax.Array:
    """The key the network's initial parameters are drawn from."""
    return jax.random.fold_in(jax.random.key(seed), 0)


def phase_key(seed: int, phase: int) -> jax.Array:
    """The key every step of ``phase`` folds its step number into (teacher: phase 0, round r: phase r)."""
    return jax.random.fold_in(jax.random.key(seed), 1 if phase == TEACHER else 1000 + phase)


def data_seed(seed: int, phase: int) -> int:
    """The seed of ``phase``'s data order (shuffle and flips): each distillation round sees its own order."""
    return seed + 1000 * phase


def sample_key(seed: int, start: int) -> jax.Array:
    """The key of a sampled batch whose first image is number ``start`` (traceable: seed and start may be arrays)."""
    return jax.random.fold_in(jax.random.key(seed), start)
