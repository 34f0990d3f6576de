"""Evaluation: feature-space distances and the embedded digits evaluator."""

from pdist.evaluation.digits import DigitsEvaluator
from pdist.evaluation.frechet import frechet_distance, gaussian_stats

__all__ = ["DigitsEvaluator", "frechet_distance", "gaussian_stats"]
