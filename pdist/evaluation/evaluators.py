"""The evaluator networks, by name: ``config.eval.evaluator`` is one of :data:`EVALUATORS` or ``auto``.

An evaluator has ``name``, ``cache_key`` (names its cached reference
statistics: network and weights), ``image_shape``, ``num_classes`` and
``outputs(images) -> (features [N, D], probs [N, C])`` on images in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Callable

import ml_collections
import numpy as np

EVALUATORS = ("digits", "inception")  # the embedded digits classifier; the FID Inception-v3


def resolve(choice: str, dataset: str) -> str:
    """The evaluator ``choice`` names; ``auto``: digits for the digits dataset, the FID Inception otherwise."""
    if choice == "auto":
        return "digits" if dataset == "digits" else "inception"
    return choice


def batched(apply: Callable, params, x: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """``apply(params, x) -> (features, probs)`` over ``x`` in batches of ``min(batch, len(x))`` images, the last
    one padded (one compiled program per call size, whatever ``len(x)``)."""
    size = max(1, min(batch, len(x)))
    features, probs = [], []
    for i in range(0, len(x), size):
        part = x[i : i + size]
        f, p = apply(params, np.pad(part, [(0, size - len(part))] + [(0, 0)] * (x.ndim - 1)))
        features.append(np.asarray(f)[: len(part)])
        probs.append(np.asarray(p)[: len(part)])
    return np.concatenate(features), np.concatenate(probs)


def make(choice: str, data: ml_collections.ConfigDict, settings: ml_collections.ConfigDict):
    """The evaluator for ``choice`` on data like ``config.data``, with ``config.eval``'s weights."""
    if resolve(choice, data.name) == "digits":
        from pdist.evaluation.digits import DigitsEvaluator

        return DigitsEvaluator(data_dir=data.data_dir)
    from pdist.evaluation.inception import InceptionEvaluator

    return InceptionEvaluator(settings.inception_weights)
