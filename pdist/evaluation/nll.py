"""Negative log-likelihood in bits/dim: the full variational bound over a T-step grid.

The Improved-DDPM protocol (Nichol & Dhariwal 2021, Sec. 3): for each test
image, every level ``i = 1..T`` of the grid ``t_i = i / T`` contributes one
term, evaluated at its own noisy ``z_{t_i} ~ q(z_{t_i} | x)``:

* ``L_i = KL(q(z_{i-1} | z_i, x) || p(z_{i-1} | z_i))`` for ``i >= 2``;
* ``L_1 = -log p(x | z_1)``, the 256-bin discretized Gaussian decoder;
* ``L_prior = KL(q(z_1 | x) || N(0, I))`` at ``t = 1``.

Discrete-time models are evaluated on their own T; continuous-time models on
any chosen T (the bound tightens as T grows). ``p``'s variance is the learned
one when the model has it, else ``small`` (beta-tilde) or ``large`` (beta).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from pdist import diffusion, vlb
from pdist.diffusion import Prediction
from pdist.schedules import Schedule

Array = jax.Array


def vlb_terms(
    denoise_fn: Callable, schedule: Schedule, x: Array, key: Array, *, num_timesteps: int, model_variance: str = "small"
) -> dict:
    """The bound for a batch ``x`` [B, ...] in bits/dim.

    Returns ``prior`` [B], ``terms`` [T, B] (row ``i - 1`` is level ``i``; row 0 the
    decoder) and ``total`` [B] = prior + the sum of the terms. ``denoise_fn(z, t)``
    returns x-hat or a :class:`~pdist.diffusion.Prediction`; the noise at level i is
    drawn from ``fold_in(key, i)``. Traceable: jit it with the parameters as an argument.
    """
    T, batch = int(num_timesteps), x.shape[0]

    def level(_, i):
        t = jnp.full((batch,), i, jnp.float32) / T
        logsnr = schedule.logsnr(t)
        eps = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
        z = diffusion.diffuse(x, eps, logsnr)
        out = denoise_fn(z, t)
        pred = out if isinstance(out, Prediction) else diffusion.from_x(out, z, logsnr)
        tr, log_beta_tilde, is_decoder = vlb.step_transition(schedule, t, T)
        log_var = vlb.model_log_variance(model_variance, tr, log_beta_tilde, is_decoder, pred.var_frac, x)
        return None, vlb.vlb_term_bpd(x, z, pred, tr, log_var, is_decoder)

    _, terms = jax.lax.scan(level, None, jnp.arange(1, T + 1))
    prior = vlb.prior_bpd(x, schedule.logsnr(jnp.ones((batch,), jnp.float32)))
    return {"prior": prior, "terms": terms, "total": prior + terms.sum(axis=0)}
