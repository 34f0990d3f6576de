"""Evaluation: metrics (Frechet distance, Inception Score, precision/recall, NLL bound), seed statistics,
evaluator networks (the embedded digits classifier, the FID Inception-v3) and scoring against a reference."""

from pdist.evaluation.digits import DigitsEvaluator
from pdist.evaluation.frechet import frechet_distance, gaussian_stats

__all__ = ["DigitsEvaluator", "frechet_distance", "gaussian_stats"]
