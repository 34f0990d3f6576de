"""Classifier-free guidance (Ho & Salimans, 2022): one network trained with its label sometimes replaced by a
learned null class, sampled as a blend of its conditional and unconditional predictions.

A class-conditional network has ``num_classes + 1`` label embeddings; the last, :func:`null_label`, is the
null class. Training with ``config.train.label_dropout = p`` replaces each example's label by it with
probability ``p`` (:func:`drop_labels`, drawn once per batch with the loss's other randomness).

The guided prediction at weight ``w`` (Meng et al., 2023's form; ``w = 0`` is the conditional model):

    x-hat = (1 + w) x-hat(z, c) - w x-hat(z, null)

:func:`blend` applies it to x-hat and eps-hat alike. At fixed ``(z, t)`` the parameterizations are affine in
each other (``eps = (z - alpha x) / sigma``, ``v = alpha eps - sigma x``), and the weights ``1 + w`` and
``-w`` sum to 1, so blending x-hat, eps-hat or v-hat gives the same guided prediction, consistent
(``z = alpha x + sigma eps``) like each of its parts: the space is not a choice. Clipping x-hat (the
samplers' ``clip_x``) happens after the blend; a learned variance is the conditional branch's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from pdist.diffusion import Prediction, bcast

Array = jax.Array


def null_label(num_classes: int) -> int:
    """The null class's label: the embedding after the ``num_classes`` real ones."""
    return num_classes


def drop_labels(label: Array, key: Array, p: float, num_classes: int) -> Array:
    """``label`` [B] with each entry replaced by the null class with probability ``p``."""
    dropped = jax.random.bernoulli(key, p, label.shape)
    return jnp.where(dropped, null_label(num_classes), label)


def blend(cond: Prediction, uncond: Prediction, w: Array) -> Prediction:
    """``(1 + w) cond - w uncond`` for x-hat and eps-hat; ``w`` a scalar or per example [B]."""
    w = bcast(jnp.asarray(w, cond.x.dtype), cond.x)
    mix = lambda a, b: (1 + w) * a - w * b  # noqa: E731
    return Prediction(mix(cond.x, uncond.x), mix(cond.eps, uncond.eps), cond.var_frac)


def doubled(z: Array, t: Array, label: Array, num_classes: int) -> tuple[Array, Array, Array]:
    """The one batch of twice the size that evaluates the conditional and unconditional predictions in one
    network call: ``([z, z], [t, t], [label, null])``."""
    null = jnp.full_like(label, null_label(num_classes))
    t = jnp.broadcast_to(t, label.shape)
    return jnp.concatenate([z, z]), jnp.concatenate([t, t]), jnp.concatenate([label, null])


def split(pred: Prediction) -> tuple[Prediction, Prediction]:
    """The conditional and unconditional halves of a prediction on a :func:`doubled` batch."""
    half = pred.x.shape[0] // 2
    first = Prediction(*(None if a is None else a[:half] for a in pred))
    second = Prediction(*(None if a is None else a[half:] for a in pred))
    return first, second


class WeightPrior(NamedTuple):
    """How guided distillation draws a guidance weight per example: ``low`` with probability ``at_low``, else
    ``U[low, high]`` (Meng et al. 2023: ``U[0, 4]``, ``at_low = 0``). Mass at the low end (the unguided model
    at ``low = 0``) holds the student to the teacher where the Frechet distance is smallest and a leak of guidance
    costs the most; with ``at_low = 0`` the draw is the uniform one, key for key."""

    low: float
    high: float
    at_low: float = 0.0

    def draw(self, key: Array, n: int) -> Array:
        w = jax.random.uniform(key, (n,), minval=self.low, maxval=self.high)
        if self.at_low > 0:
            w = jnp.where(jax.random.bernoulli(jax.random.fold_in(key, 1), self.at_low, (n,)), self.low, w)
        return w


def guided(predict: Callable[[Array, Array, Array], Prediction], z: Array, t: Array, label: Array, w, num_classes: int):
    """The guided prediction at weight ``w`` (a scalar or [B]) of ``predict(z, t, label) -> Prediction``: one
    call on the :func:`doubled` batch, :func:`split` and :func:`blend`."""
    cond, uncond = split(predict(*doubled(z, t, label, num_classes)))
    return blend(cond, uncond, w)
