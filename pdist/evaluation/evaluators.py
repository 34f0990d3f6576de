"""The evaluator networks, by name: ``config.eval.evaluator`` is one of :data:`EVALUATORS` or ``auto``.

An evaluator has ``name``, ``cache_key`` (names its cached reference
statistics: network and weights), ``image_shape``, ``num_classes`` and
``outputs(images) -> (features [N, D], probs [N, C])`` on images in [-1, 1].
"""

from __future__ import annotations

import ml_collections

EVALUATORS = ("digits", "inception")  # the embedded digits classifier; the FID Inception-v3


def resolve(choice: str, dataset: str) -> str:
    """The evaluator ``choice`` names; ``auto``: digits for the digits dataset, the FID Inception otherwise."""
    if choice == "auto":
        return "digits" if dataset == "digits" else "inception"
    return choice


def make(choice: str, data: ml_collections.ConfigDict, settings: ml_collections.ConfigDict):
    """The evaluator for ``choice`` on data like ``config.data``, with ``config.eval``'s weights."""
    if resolve(choice, data.name) == "digits":
        from pdist.evaluation.digits import DigitsEvaluator

        return DigitsEvaluator(data_dir=data.data_dir)
    from pdist.evaluation.inception import InceptionEvaluator

    return InceptionEvaluator(settings.inception_weights)
