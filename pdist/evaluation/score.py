"""Scores a set of images against a reference set with an evaluator network.

An evaluator is any object with ``name``, ``cache_key`` (names its cached
reference statistics: network and weights), ``image_shape``, ``num_classes`` and
``outputs(images) -> (features [N, D], probs [N, C])`` on images in [-1, 1]
(:class:`~pdist.evaluation.digits.DigitsEvaluator`, or
:class:`~pdist.evaluation.inception.InceptionEvaluator` for natural images).
The reference side (Gaussian statistics, and the features and k-NN radii that
precision/recall need) is computed once per evaluator and reference set and
may be cached to disk with :meth:`Reference.save`.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from pdist.evaluation.frechet import frechet_distance, gaussian_stats
from pdist.evaluation.metrics import inception_score, knn_radii, precision_recall
from pdist.runtime import files

METRICS = ("fd", "is", "precision", "recall")


@dataclasses.dataclass
class Reference:
    """Statistics of the reference features: mean, covariance, and a subset with k-NN radii for precision/recall."""

    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray
    radii: np.ndarray

    @classmethod
    def from_features(cls, features: np.ndarray, pr_samples: int, k: int = 3, seed: int = 0) -> Reference:
        mu, sigma = gaussian_stats(features)
        if len(features) > pr_samples:
            features = features[np.sort(np.random.default_rng(seed).choice(len(features), pr_samples, replace=False))]
        return cls(mu, sigma, np.asarray(features, np.float32), knn_radii(features, k))

    def save(self, path: str) -> None:
        files.makedirs(os.path.dirname(path) or ".")
        files.save_npz(path, **dataclasses.asdict(self))

    @classmethod
    def load(cls, path: str) -> Reference:
        arrays = files.load_npz(path)
        return cls(**{k.name: arrays[k.name] for k in dataclasses.fields(cls)})


def score(
    evaluator,
    reference: Reference,
    images: np.ndarray,
    *,
    pr_samples: int | None = None,
    is_splits: int = 1,
    labels: np.ndarray | None = None,
) -> dict:
    """``{fd, is, precision, recall, class_histogram}`` of ``images`` [N, H, W, C] in [-1, 1], and with the
    requested classes ``labels`` [N] (of the evaluator's classes) ``accuracy``: the fraction of images its
    classifier assigns to the requested class.

    The Inception Score is the mean over ``is_splits`` equal parts (10 in the usual protocol).
    Precision/recall use the first ``pr_samples`` images (all by default), as many
    as the reference subset, so that both sides' k-NN balls have the same scale.
    """
    features, probs = evaluator.outputs(images)
    pr = features if pr_samples is None else features[:pr_samples]
    precision, recall = precision_recall(reference.features, pr, real_radii=reference.radii)
    out = {
        "fd": frechet_distance(*gaussian_stats(features), reference.mu, reference.sigma),
        "is": inception_score(probs, is_splits),
        "precision": precision,
        "recall": recall,
        "class_histogram": (np.bincount(probs.argmax(1), minlength=probs.shape[1]) / len(probs)).tolist(),
    }
    if labels is not None:
        out["accuracy"] = float(np.mean(probs.argmax(1) == np.asarray(labels)))
    return out
