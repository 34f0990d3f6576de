"""Data distributions whose denoisers and probability-flow solutions are known.

For Gaussian data ``x ~ N(mu, s^2)`` (per dimension), ``z_t ~ N(alpha mu,
alpha^2 s^2 + sigma^2)`` and the posterior mean is closed form; the
probability-flow ODE maps the standardized value ``u = (z - alpha mu) /
sqrt(alpha^2 s^2 + sigma^2)`` to itself, so the exact sample of every noise draw
is known. For a Gaussian mixture the posterior mean is closed form and the ODE
is solved in float64 by SciPy to tight tolerance. The ODE is written in the
angle ``phi = atan2(sigma, alpha)``, ``dz/dphi = v-hat``, which makes the
reference independent of the schedule except for its end points.

Class-conditional data (:class:`ClassMixture`, one mixture per class) has the
exact conditional denoiser of each class and the exact unconditional one, the
null class of classifier-free guidance: the tests of guidance and guided
distillation compare against them.

The denoisers are frozen dataclasses (hashable), usable directly as
``denoise_fn`` in :func:`pdist.samplers.sample`; tests and ``bench/samplers.py``
measure sampler errors against these exact answers.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from scipy.integrate import solve_ivp

from pdist.diffusion import Prediction
from pdist.schedules import Schedule, time_grid

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class GaussianMixture:
    """Isotropic mixture: ``weights`` [K], ``means`` [K][D], ``stds`` [K].

    A single component with per-dimension stds is :func:`gaussian`.
    """

    weights: tuple[float, ...]
    means: tuple[tuple[float, ...], ...]
    stds: tuple[tuple[float, ...], ...]  # [K][D]

    @property
    def dim(self) -> int:
        return len(self.means[0])

    def sample(self, key: Array, num: int) -> Array:
        k_comp, k_noise = jax.random.split(key)
        comp = jax.random.choice(k_comp, len(self.weights), (num,), p=jnp.asarray(self.weights))
        eps = jax.random.normal(k_noise, (num, self.dim))
        return jnp.asarray(self.means)[comp] + jnp.asarray(self.stds)[comp] * eps

    def posterior(self, z, alpha, sigma, xp=jnp):
        """(E[x | z], E[eps | z]) for z [B, D] at scalars or [B] alpha, sigma."""
        alpha = xp.reshape(xp.asarray(alpha), (-1, 1, 1))
        sigma = xp.reshape(xp.asarray(sigma), (-1, 1, 1))
        means = xp.asarray(self.means)[None]  # [1, K, D]
        var = xp.asarray(self.stds)[None] ** 2  # [1, K, D]
        zk = z[:, None, :] - alpha * means  # [B, K, D]
        tot = alpha**2 * var + sigma**2
        log_lik = -0.5 * xp.sum(zk**2 / tot + xp.log(tot), axis=-1)  # [B, K]
        log_post = log_lik + xp.log(xp.asarray(self.weights))[None]
        log_post = log_post - log_post.max(axis=-1, keepdims=True)
        resp = xp.exp(log_post)
        resp = (resp / resp.sum(axis=-1, keepdims=True))[..., None]
        x_hat = xp.sum(resp * (means + alpha * var / tot * zk), axis=1)
        eps_hat = xp.sum(resp * (sigma / tot * zk), axis=1)
        return x_hat, eps_hat

    def reference_solution(self, z: np.ndarray, phi_start: float, phi_end: float) -> np.ndarray:
        """Solves dz/dphi = v-hat from phi_start to phi_end in float64 (rtol 1e-11)."""
        z = np.asarray(z, np.float64)
        shape = z.shape

        def rhs(phi, y):
            zz = y.reshape(shape)
            alpha, sigma = np.cos(phi), np.sin(phi)
            x_hat, eps_hat = self.posterior(zz, alpha, sigma, xp=np)
            return (alpha * eps_hat - sigma * x_hat).ravel()

        sol = solve_ivp(rhs, (phi_start, phi_end), z.ravel(), method="DOP853", rtol=1e-11, atol=1e-12)
        if not sol.success:
            raise RuntimeError(f"reference ODE solve failed: {sol.message}")
        return sol.y[:, -1].reshape(shape)

    def exact_solution(self, z: np.ndarray, schedule: Schedule, t_start: float = 1.0, t_end: float = 0.0):
        """The probability-flow ODE's image of z from t_start to t_end (float64 numpy).

        Closed form for one component (quantiles are preserved); a fine SciPy
        solve otherwise.
        """
        a0, s0 = (float(np.asarray(v)) for v in schedule.alpha_sigma(t_start))
        a1, s1 = (float(np.asarray(v)) for v in schedule.alpha_sigma(t_end))
        z = np.asarray(z, np.float64)
        if len(self.weights) == 1:
            mu, s = np.asarray(self.means[0]), np.asarray(self.stds[0])
            u = (z - a0 * mu) / np.sqrt(a0**2 * s**2 + s0**2)
            return a1 * mu + np.sqrt(a1**2 * s**2 + s1**2) * u
        return self.reference_solution(z, float(np.arctan2(s0, a0)), float(np.arctan2(s1, a1)))


def exact_sample(data: GaussianMixture, schedule: Schedule, noise, num_steps: int, grid: str = "auto") -> np.ndarray:
    """What an exact solver on this grid returns for ``noise`` (float64 numpy).

    The probability-flow image of the noise from the grid's first time to its
    last; on a schedule ending at clean data (sigma(0) = 0), the image at the
    last noisy time followed by the exact x-hat there, which is how every
    sampler ends (``pdist/samplers/core.py``).
    """
    times = time_grid(schedule, num_steps, grid)
    t_end = times[-2] if schedule.ends_at_data else times[-1]
    z = data.exact_solution(np.asarray(noise), schedule, t_start=times[0], t_end=t_end)
    if schedule.ends_at_data:
        alpha, sigma = (float(np.asarray(v)) for v in schedule.alpha_sigma(t_end))
        z = data.posterior(z, alpha, sigma, xp=np)[0]
    return z


def gaussian(mean, std) -> GaussianMixture:
    """One Gaussian with per-dimension ``mean`` and ``std`` (sequences of length D)."""
    return GaussianMixture((1.0,), (tuple(map(float, mean)),), (tuple(map(float, std)),))


def mixture_2d() -> GaussianMixture:
    """A 2-D mixture of 4 well-separated, unequal components (the tests' and benchmark's)."""
    means = ((-0.6, -0.5), (0.55, -0.45), (0.5, 0.6), (-0.4, 0.5))
    stds = ((0.08, 0.08), (0.15, 0.15), (0.1, 0.1), (0.2, 0.2))
    return GaussianMixture((0.1, 0.2, 0.3, 0.4), means, stds)


@dataclasses.dataclass(frozen=True)
class Denoiser:
    """The exact posterior mean of ``data`` under ``schedule``: ``(z, t) -> x_hat``."""

    data: GaussianMixture
    schedule: Schedule

    def __call__(self, z: Array, t: Array) -> Array:
        alpha, sigma = self.schedule.alpha_sigma(t)
        return self.data.posterior(z, alpha, sigma)[0]


@dataclasses.dataclass(frozen=True)
class ClassMixture:
    """Class-conditional data: ``x | c ~ classes[c]`` with ``p(c) = class_weights[c]``.

    Label ``num_classes`` is the null class: its posterior is the unconditional one, of the mixture of all
    classes (:attr:`unconditional`).
    """

    classes: tuple[GaussianMixture, ...]
    class_weights: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def unconditional(self) -> GaussianMixture:
        """p(x) = sum_c p(c) p(x | c), as one mixture."""
        weights, means, stds = [], [], []
        for p_c, data in zip(self.class_weights, self.classes, strict=True):
            weights += [p_c * w for w in data.weights]
            means += list(data.means)
            stds += list(data.stds)
        return GaussianMixture(tuple(weights), tuple(means), tuple(stds))

    def sample(self, key: Array, num: int) -> tuple[Array, Array]:
        """(x [num, D], label [num])."""
        k_class, k_x = jax.random.split(key)
        label = jax.random.choice(k_class, self.num_classes, (num,), p=jnp.asarray(self.class_weights))
        draws = jnp.stack([data.sample(jax.random.fold_in(k_x, c), num) for c, data in enumerate(self.classes)])
        return draws[label, jnp.arange(num)], label

    def posterior(self, z, alpha, sigma, label, xp=jnp):
        """(E[x | z, c], E[eps | z, c]) per example, for ``label`` [B] in 0..num_classes (the last: unconditional)."""
        parts = [data.posterior(z, alpha, sigma, xp=xp) for data in (*self.classes, self.unconditional)]
        x_all, eps_all = xp.stack([p[0] for p in parts]), xp.stack([p[1] for p in parts])  # [K + 1, B, D]
        rows = xp.arange(z.shape[0])
        return x_all[label, rows], eps_all[label, rows]


@dataclasses.dataclass(frozen=True)
class ClassDenoiser:
    """The exact class-conditional posterior of ``data`` under ``schedule``: ``(z, t, label) -> Prediction``
    (label ``num_classes``: the unconditional one)."""

    data: ClassMixture
    schedule: Schedule

    def __call__(self, z: Array, t: Array, label: Array) -> Prediction:
        alpha, sigma = self.schedule.alpha_sigma(jnp.broadcast_to(t, z.shape[:1]))
        x_hat, eps_hat = self.data.posterior(z, alpha, sigma, label)
        return Prediction(x_hat, eps_hat, None)


def class_mixture_2d() -> ClassMixture:
    """Three overlapping 2-D classes (one of two components), unequal priors: guidance moves samples visibly."""
    c0 = GaussianMixture((0.5, 0.5), ((-0.5, -0.3), (-0.1, 0.5)), ((0.15, 0.15), (0.12, 0.12)))
    c1 = GaussianMixture((1.0,), ((0.45, -0.2),), ((0.2, 0.2),))
    c2 = GaussianMixture((1.0,), ((0.2, 0.45),), ((0.1, 0.1),))
    return ClassMixture((c0, c1, c2), (0.5, 0.3, 0.2))
