"""Sample-quality metrics on classifier outputs and features.

* :func:`inception_score`: ``exp(E_x KL(p(y|x) || p(y)))`` (Salimans et al. 2016),
  over ``splits`` equal parts as the Inception Score protocol does;
* :func:`precision_recall`: the k-nearest-neighbour manifolds of Kynkaanniemi
  et al. (2019), k = 3: precision is the fraction of generated features inside
  some real feature's ball (radius its distance to its k-th nearest real
  neighbour), recall the same with the roles swapped.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def inception_score(probs: np.ndarray, splits: int = 1) -> float:
    """Mean over ``splits`` parts of ``exp(mean_x KL(p(y|x) || mean_x p(y|x)))``; ``probs`` [N, C]."""
    p = np.asarray(probs, np.float64)
    if p.ndim != 2 or len(p) < splits:
        raise ValueError(f"probs must be [N >= splits, classes]; got shape {p.shape} with splits={splits}.")
    scores = []
    for part in np.array_split(p, splits):
        marginal = part.mean(axis=0, keepdims=True)
        kl = np.sum(part * (np.log(np.clip(part, 1e-30, None)) - np.log(np.clip(marginal, 1e-30, None))), axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores))


def _sq_dists(a: jax.Array, b: jax.Array) -> jax.Array:
    """Squared distances between the rows of ``a`` and ``b`` (inside the compiled programs below)."""
    d = jnp.sum(a * a, 1)[:, None] + jnp.sum(b * b, 1)[None, :] - 2.0 * a @ b.T
    return jnp.maximum(d, 0.0)


def _blocks(n: int, block: int):
    return [(i, min(n, i + block)) for i in range(0, n, block)]


def knn_radii(features: np.ndarray, k: int = 3, block: int = 2048) -> np.ndarray:
    """Squared distance from each row to its k-th nearest other row."""
    f = np.asarray(features, np.float32)
    on_device = jnp.asarray(f)  # once; each block's rows go over on their own
    return np.concatenate([np.asarray(_kth_sq_dist(f[i:j], on_device, k)) for i, j in _blocks(len(f), block)])


def _coverage(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, block: int) -> float:
    """Fraction of ``points`` within some ball (centre, squared radius)."""
    c, r = jnp.asarray(centres, jnp.float32), jnp.asarray(radii, jnp.float32)
    p = np.asarray(points, np.float32)
    return sum(int(_count_inside(p[i:j], c, r)) for i, j in _blocks(len(p), block)) / len(p)


@functools.partial(jax.jit, static_argnums=2)
def _kth_sq_dist(rows: jax.Array, features: jax.Array, k: int) -> jax.Array:
    """Each row's k-th smallest squared distance to ``features`` (column 0: the row itself), one program."""
    return jnp.sort(_sq_dists(rows, features), axis=1)[:, k]


@jax.jit
def _count_inside(points: jax.Array, centres: jax.Array, radii: jax.Array) -> jax.Array:
    """How many ``points`` lie within some ball (centre, squared radius), one program."""
    return jnp.sum(jnp.any(_sq_dists(points, centres) <= radii[None, :], axis=1))


def precision_recall(
    real: np.ndarray, fake: np.ndarray, k: int = 3, block: int = 2048, real_radii: np.ndarray | None = None
) -> tuple[float, float]:
    """(precision, recall) of ``fake`` features against ``real`` ones [N, D] (Kynkaanniemi et al. 2019).

    ``real_radii`` (from :func:`knn_radii`) may be passed to reuse them across evaluations.
    """
    if min(len(real), len(fake)) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} real and generated samples.")
    real_radii = knn_radii(real, k, block) if real_radii is None else real_radii
    precision = _coverage(fake, real, real_radii, block)
    recall = _coverage(real, fake, knn_radii(fake, k, block), block)
    return precision, recall
