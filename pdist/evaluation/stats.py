"""Seed variance: a metric over k seeds as mean, standard deviation and a bootstrap interval; and a
subsampling interval for a statistic over items (:func:`subsampling_interval`).

Following Bouthillier et al. (2021), "Accounting for Variance in Machine
Learning Benchmarks": every reported number is a mean over independent seeds
with its spread, and two numbers are only called different when the bootstrap
interval of their difference excludes zero.
"""

from __future__ import annotations

import numpy as np

NUM_BOOTSTRAP = 10_000


def _bootstrap_means(values: np.ndarray, rng: np.random.Generator, num: int) -> np.ndarray:
    idx = rng.integers(0, len(values), (num, len(values)))
    return values[idx].mean(axis=1)


def summarize(values, confidence: float = 0.95, num_bootstrap: int = NUM_BOOTSTRAP, seed: int = 0) -> dict:
    """``{mean, std, low, high, n, values}``: ``std`` with ddof 1 (0 for one seed), [low, high] the
    percentile bootstrap interval of the mean at ``confidence``."""
    v = np.asarray(values, np.float64).ravel()
    if v.size == 0 or not np.all(np.isfinite(v)):
        raise ValueError(f"summarize needs one or more finite values; got {v.tolist()}.")
    means = _bootstrap_means(v, np.random.default_rng(seed), num_bootstrap)
    tail = 50.0 * (1.0 - confidence)
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return {
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
        "low": float(low),
        "high": float(high),
        "n": int(v.size),
        "values": v.tolist(),
    }


def difference_interval(
    a, b, confidence: float = 0.95, num_bootstrap: int = NUM_BOOTSTRAP, seed: int = 0
) -> tuple[float, float]:
    """Bootstrap interval of ``mean(a) - mean(b)``, resampling each side's seeds independently."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    rng = np.random.default_rng(seed)
    diff = _bootstrap_means(a, rng, num_bootstrap) - _bootstrap_means(b, rng, num_bootstrap)
    tail = 50.0 * (1.0 - confidence)
    low, high = np.percentile(diff, [tail, 100.0 - tail])
    return float(low), float(high)


def resolved(a, b, confidence: float = 0.95) -> bool:
    """Whether ``a`` and ``b`` (values over seeds) differ beyond their seed variance."""
    low, high = difference_interval(a, b, confidence)
    return low > 0.0 or high < 0.0


def subsampling_interval(
    statistic, n: int, *, confidence: float = 0.95, draws: int = 200, fraction: float = 0.5, seed: int = 0
) -> tuple[float, float]:
    """An interval for ``statistic(indices)`` over ``n`` items (for example a Frechet distance of features)
    by subsampling without replacement (Politis & Romano 1994).

    A bootstrap that resamples the items with repeats biases a Frechet distance
    upward (a repeated image shrinks the covariance's spread), so its percentile
    interval can miss the point estimate. Here ``draws`` subsets of ``m =
    fraction * n`` distinct items give ``statistic`` values whose spread about
    their mean, scaled by ``sqrt(m / (n - m))`` (the finite-population factor:
    Var(theta_m) ~ s^2 (1/m - 1/n) against Var(theta_n) ~ s^2 / n), is the
    spread of the full statistic; the interval is centered on the full-sample
    value. It covers the statistic's value at this ``n`` (finite-sample bias
    included), not a bias-corrected limit.
    """
    rng = np.random.default_rng(seed)
    m = int(round(fraction * n))
    if not 1 < m < n:
        raise ValueError(f"subsampling needs 1 < fraction * n < n; got n={n}, fraction={fraction}.")
    whole = float(statistic(np.arange(n)))
    values = np.array([statistic(rng.choice(n, m, replace=False)) for _ in range(draws)], np.float64)
    tail = 50.0 * (1.0 - confidence)
    low, high = np.percentile(values - values.mean(), [tail, 100.0 - tail]) * np.sqrt(m / (n - m))
    return whole + float(low), whole + float(high)


def format_summary(s: dict, digits: int = 2) -> str:
    """``mean ± std [low, high]``; just the mean for a single seed."""
    if s["n"] == 1:
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f} [{s['low']:.{digits}f}, {s['high']:.{digits}f}]"
