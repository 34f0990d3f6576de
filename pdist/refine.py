"""Learning-rate schedules refined from a previous run's gradient norms.

Defazio, Cutkosky, Mehta, Mishchenko, "When, Why and How Much? Adaptive
Learning Rate Scheduling by Refinement" (2023; later "Optimal Linear Decay
Learning Rate Schedules and Further Refinements"), reference code
facebookresearch/adaptive_scheduling. Linear decay is the worst-case optimal
schedule; given the gradient norms ``G_t`` a previous run saw, the schedule

    w_t = 1 / G_t          (Adam, Adam(W): G_t the l1 norm of the gradient)
    w_t = 1 / G_t ** 2     (SGD: G_t the l2 norm)
    eta_t ∝ w_t * sum_{s > t} w_s

does better. With constant norms it is linear decay; norms that fall early
make it warm up by itself. pdist's version (``config.optim.schedule =
"refined"``, ``config.optim.refine_from = WORKDIR``):

1. takes the norm logged in WORKDIR's TensorBoard events (the train step logs
   ``grad_l1`` and ``grad_norm``, each the mean over a log window; a step
   logged twice, as a resumed run logs its windows again, keeps its last
   value), read by :func:`pdist.build.refined_norms`: this module reads no file;
2. maps them onto the new run by fraction of the run (linear interpolation
   over the ``T + 1`` optimizer counts 0..T of a ``T``-step run);
3. median-filters them over 10% of the run, padded as the reference does;
4. applies the formula above, normalized to a maximum of 1 (0 at count T),
   times ``config.optim.learning_rate``. No separate warm-up.

The schedule is a table of ``T + 1`` rates, the optimizer's ``args``
(:mod:`pdist.optim`): data, not constants in the compiled step.
"""

from __future__ import annotations

import numpy as np

from pdist.errors import ConfigError

# the norm each optimizer's weights use
NORM_TAGS = {"adam": "grad_l1", "adamw": "grad_l1", "radam": "grad_l1", "sgd": "grad_norm"}
MIN_POINTS = 10  # logged values a run needs before it can be refined from
FILTER_FRACTION = 0.1  # the median filter's width, as a fraction of the run


def median_filtered(values: np.ndarray, fraction: float = FILTER_FRACTION) -> np.ndarray:
    """A median filter of odd width ``fraction`` of the length, the end padded by reflection (the reference's)."""
    from scipy import ndimage

    width = 2 * (int(fraction * len(values)) // 2) + 1
    pad = 2 * width
    padded = np.pad(values, (0, pad), mode="reflect")
    return ndimage.median_filter(padded, size=width, mode="nearest")[:-pad]


def refined(norms: np.ndarray, optimizer: str) -> np.ndarray:
    """The refined schedule for ``norms`` (one per optimizer count), with a maximum of 1 and 0 at the end."""
    norms = np.asarray(norms, np.float64)
    weights = 1.0 / norms if NORM_TAGS[optimizer] == "grad_l1" else 1.0 / norms**2
    after = np.concatenate([np.cumsum(weights[::-1])[::-1][1:], [0.0]])  # sum of the weights after each count
    schedule = weights * after
    return schedule / schedule.max()


def on_run(steps: np.ndarray, norms: np.ndarray, total_steps: int) -> np.ndarray:
    """Norms logged at ``steps`` of a previous run, interpolated at counts 0..total_steps of a new run by the
    fraction of the run done."""
    return np.interp(np.arange(total_steps + 1) / total_steps, steps / steps[-1], norms)


def multipliers(steps: np.ndarray, norms: np.ndarray, optimizer: str, total_steps: int) -> np.ndarray:
    """The refined multipliers of the learning rate at counts 0..total_steps, from norms logged at ``steps``."""
    return refined(median_filtered(on_run(steps, norms, total_steps)), optimizer)


def check_norms(steps: np.ndarray, norms: np.ndarray, where: str, tag: str) -> None:
    """ConfigError (one sentence) when the logged norms are too few or unusable to refine from."""
    if len(steps) < MIN_POINTS:
        raise ConfigError(
            f"{where} holds {len(steps)} logged values of {tag} (at least {MIN_POINTS} needed): refine from a run "
            f"logged more often (config.train.log_every) or for longer."
        )
    if not np.all(np.isfinite(norms) & (norms > 0)):
        raise ConfigError(f"{where} logged {tag} values that are not positive and finite: refine from a healthy run.")
