"""Evaluator networks' outputs over many images in fixed-size batches (one compiled program per call size)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


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
