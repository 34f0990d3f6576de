"""Noise schedules: t in [0, 1] -> (alpha, sigma, logsnr), and sampling time grids.

Every schedule is variance preserving, ``z_t = alpha_t x + sigma_t eps`` with
``alpha^2 + sigma^2 = 1``, and is defined by its log signal-to-noise ratio
``logsnr(t) = log(alpha_t^2 / sigma_t^2)``, decreasing in t. ``alpha`` and
``sigma`` are derived from it as ``sqrt(sigmoid(+-logsnr))``, so the identity
holds to float precision everywhere, including logsnr = +inf (clean data).

Continuous schedules accept any t. Discrete schedules (T steps) are tables of
``log alphabar_i`` at ``t_i = i / T`` for i = 0..T (``alphabar_0 = 1``: t = 0 is
clean data), linearly interpolated in between so that samplers needing
intermediate times (a pseudo Runge-Kutta half step) still work.

Schedules are frozen, hashable dataclasses: they are static arguments of the
compiled samplers and losses.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from pdist.diffusion import alpha_sigma_from_logsnr

Array = jax.Array


class Schedule(abc.ABC):
    """Base class: subclasses define ``logsnr(t)`` and ``num_timesteps``."""

    num_timesteps: int | None = None  # None: continuous time
    # The lowest time a continuous-time model is trained and evaluated at (logSNR(t_min) is finite). 0 where
    # logSNR(0) is finite already (a clipped schedule); discrete models train on levels i / T >= 1 / T anyway.
    t_min: float = 0.0

    @abc.abstractmethod
    def logsnr(self, t) -> Array:
        """log(alpha_t^2 / sigma_t^2), float32, shape of ``t``."""

    def alpha_sigma(self, t) -> tuple[Array, Array]:
        """Returns ``(alpha_t, sigma_t)``; shapes follow ``t``."""
        return alpha_sigma_from_logsnr(self.logsnr(t))

    def alpha(self, t) -> Array:
        return self.alpha_sigma(t)[0]

    def sigma(self, t) -> Array:
        return self.alpha_sigma(t)[1]

    @property
    def ends_at_data(self) -> bool:
        """Whether t = 0 is exactly clean data (sigma(0) = 0, logsnr(0) = +inf), as for discrete schedules."""
        with jax.ensure_compile_time_eval():
            return bool(np.isposinf(np.asarray(self.logsnr(0.0))))


@dataclasses.dataclass(frozen=True)
class CosineLogSNR(Schedule):
    """Progressive Distillation cosine (Salimans & Ho 2022, Sec. 2 / App. D).

    ``logsnr(t) = -2 log tan(a t + b)`` with ``a, b`` chosen so that
    ``logsnr(0) = logsnr_max`` and ``logsnr(1) = logsnr_min`` exactly; in between
    it is the unclipped cosine schedule ``alpha = cos(a t + b)``.
    """

    logsnr_min: float = -20.0
    logsnr_max: float = 20.0

    def __post_init__(self):
        if not self.logsnr_min < self.logsnr_max:
            raise ValueError(
                f"CosineLogSNR needs logsnr_min < logsnr_max, got "
                f"[{self.logsnr_min}, {self.logsnr_max}]; swap or widen them."
            )

    @property
    def _ab(self) -> tuple[float, float]:
        b = math.atan(math.exp(-0.5 * self.logsnr_max))
        a = math.atan(math.exp(-0.5 * self.logsnr_min)) - b
        return a, b

    def logsnr(self, t) -> Array:
        # On the noisy half use the complementary angle pi/2 - (a t + b) = a (1 - t) + c,
        # so float32 keeps its precision where tan(a t + b) -> inf.
        a, b = self._ab
        c = math.atan(math.exp(0.5 * self.logsnr_min))
        t = jnp.asarray(t, jnp.float32)
        low_noise = -2.0 * jnp.log(jnp.tan(a * t + b))
        high_noise = 2.0 * jnp.log(jnp.tan(a * (1.0 - t) + c))
        return jnp.where(a * t + b < 0.25 * math.pi, low_noise, high_noise)


@dataclasses.dataclass(frozen=True)
class LinearVP(Schedule):
    """Continuous-time linear VP schedule (Song et al. 2021, the limit of Ho's betas).

    ``log alphabar(t) = -(beta_min t + (beta_max - beta_min) t^2 / 2)``.
    ``logsnr(0) = +inf``: training draws t from ``[t_min, 1]`` with Song et
    al.'s ``t_min = 1e-5`` (logSNR 13.8 at the defaults), where U[0, 1] would
    now and then draw t = 0 exactly and a NaN loss.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    t_min: float = 1e-5

    def logsnr(self, t) -> Array:
        t = jnp.asarray(t, jnp.float32)
        log_ab = -(self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2)
        return log_ab - jnp.log(-jnp.expm1(log_ab))


class DiscreteSchedule(Schedule):
    """A T-step table of ``log alphabar``; subclasses give ``betas`` (length T)."""

    @abc.abstractmethod
    def betas_np(self) -> np.ndarray:
        """float64 [T]: beta_1 .. beta_T."""

    @functools.cached_property
    def log_alphabar_np(self) -> np.ndarray:
        """float64 [T + 1]: ``log alphabar_i`` for i = 0..T, with ``log alphabar_0 = 0``."""
        return np.concatenate([[0.0], np.cumsum(np.log1p(-self.betas_np()))])

    @property
    def betas(self) -> np.ndarray:
        return self.betas_np()

    def level(self, t) -> Array:
        """The (fractional) level ``T t`` of times ``t`` in [0, 1], snapped onto a level within float error of
        it. XLA may evaluate ``T t`` once per fusion, with and without fused multiply-adds (``(t - 1/T) * T`` as
        42.99999 in one place and 43.00001 in another); unsnapped, a table lookup could land a whole level off,
        and a network given the level (OpenAI's time step) would see 999.99994 for 1000."""
        T = self.num_timesteps
        pos = jnp.clip(jnp.asarray(t, jnp.float32), 0.0, 1.0) * T
        nearest = jnp.round(pos)
        return jnp.where(jnp.abs(pos - nearest) < 1e-5 * T, nearest, pos)

    def logsnr(self, t) -> Array:
        T = self.num_timesteps
        table = jnp.asarray(self.log_alphabar_np, jnp.float32)
        pos = self.level(t)
        i = jnp.clip(jnp.floor(pos), 0, T - 1).astype(jnp.int32)
        frac = pos - i
        log_ab = table[i] + frac * (table[i + 1] - table[i])
        return log_ab - jnp.log(-jnp.expm1(log_ab))


@dataclasses.dataclass(frozen=True)
class LinearBetas(DiscreteSchedule):
    """Ho et al. (2020) linear betas, ``beta_i`` from ``beta_start`` to ``beta_end``.

    The endpoints are given for T = 1000 and rescaled by 1000 / T so that any T
    describes the same process (Improved DDPM, Sec. 3.2 code convention).
    """

    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def __post_init__(self):
        _check_num_timesteps(self.num_timesteps)

    def betas_np(self) -> np.ndarray:
        scale = 1000.0 / self.num_timesteps
        return np.linspace(scale * self.beta_start, scale * self.beta_end, self.num_timesteps)


@dataclasses.dataclass(frozen=True)
class CosineBetas(DiscreteSchedule):
    """Improved-DDPM cosine (Nichol & Dhariwal 2021, Eq. 17).

    ``alphabar(i) = f(i) / f(0)``, ``f(i) = cos^2(((i / T + s) / (1 + s)) pi / 2)``,
    betas ``1 - alphabar(i) / alphabar(i - 1)`` clipped to ``max_beta``.
    """

    num_timesteps: int = 4000
    s: float = 0.008
    max_beta: float = 0.999

    def __post_init__(self):
        _check_num_timesteps(self.num_timesteps)

    def betas_np(self) -> np.ndarray:
        i = np.arange(self.num_timesteps + 1, dtype=np.float64)
        f = np.cos((i / self.num_timesteps + self.s) / (1 + self.s) * np.pi / 2) ** 2
        return np.minimum(1.0 - f[1:] / f[:-1], self.max_beta)


def _check_num_timesteps(num_timesteps):
    if not (isinstance(num_timesteps, int) and num_timesteps >= 1):
        raise ValueError(
            f"num_timesteps must be a positive integer, got {num_timesteps!r}; "
            "set it to the number of discrete diffusion steps T (e.g. 1000)."
        )


SCHEDULES = {
    "cosine_logsnr": CosineLogSNR,
    "linear_vp": LinearVP,
    "linear": LinearBetas,
    "cosine": CosineBetas,
}


def is_discrete(name: str) -> bool:
    """Whether the schedule ``name`` has T levels (and needs ``num_timesteps``)."""
    return issubclass(SCHEDULES[name], DiscreteSchedule)


def get_schedule(name: str, **kwargs) -> Schedule:
    """Builds a schedule by name (``SCHEDULES`` keys) with its keyword arguments."""
    if name not in SCHEDULES:
        raise ValueError(f"Unknown schedule {name!r}; choose one of {sorted(SCHEDULES)}.")
    return SCHEDULES[name](**kwargs)


# --------------------------------------------------------------------------
# Time grids for N sampling steps.


class _GridKinds(tuple):
    """The grid kinds (a tuple of their names) whose ``in`` also accepts a ``leading`` kind with diffusers'
    ``steps_offset`` K written ``leading+K`` (``leading_dpm+K``)."""

    def __contains__(self, kind) -> bool:
        if not isinstance(kind, str):
            return False
        base, _, offset = kind.partition("+")
        return tuple.__contains__(self, kind) or (base in _OFFSET_KINDS and offset.isdigit())


# diffusers' spacings (Lin et al. 2024, Table 2, as its schedulers compute them): DDIMScheduler, DDPMScheduler
# and PNDMScheduler space N levels; DPMSolverMultistepScheduler spaces N + 1 and leaves out the lowest
_OFFSET_KINDS = ("leading", "leading_dpm")
GRIDS = _GridKinds(
    ("auto", "uniform", "logsnr", "respaced", "ddim_stride", "leading", "trailing", "linspace", "leading_dpm",
     "linspace_dpm")
)  # fmt: skip


def _diffusers_levels(kind: str, top: int, num_steps: int) -> np.ndarray:
    """The levels (diffusers' time step + 1), largest first, of a diffusers spacing of ``num_steps`` steps over
    levels 1..``top`` (``leading+K``: steps_offset K)."""
    base, _, offset = kind.partition("+")
    offset = int(offset or 0)
    if base == "trailing":  # round(arange(T, 0, -T / N)) - 1, as diffusers computes it
        return np.round(np.arange(top, 0, -top / num_steps)).astype(np.int64)
    n = num_steps + 1 if base.endswith("_dpm") else num_steps  # DPM-Solver spaces N + 1 and drops the lowest
    if base.startswith("linspace"):
        steps = np.round(np.linspace(0, top - 1, n)).astype(np.int64)
    else:  # leading: a stride of top // n from 0, plus the offset
        steps = np.arange(n, dtype=np.int64) * (top // n) + offset
    return (steps[::-1][:num_steps] + 1).astype(np.int64)


def resolve_grid(kind: str, schedule: Schedule) -> str:
    """The grid ``kind`` names on ``schedule``: ``auto`` is ``respaced`` on a discrete schedule (Improved DDPM's
    protocol: every step on a trained level, down to level 1) and ``uniform`` on a continuous one."""
    if kind not in GRIDS:
        raise ValueError(f"Unknown time grid {kind!r}; choose one of {list(GRIDS)} (leading+K: steps_offset K).")
    if kind == "auto":
        return "uniform" if schedule.num_timesteps is None else "respaced"
    return kind


def start_time(schedule: Schedule, t_start: float = 1.0) -> float:
    """The time a sampler started at ``t_start`` begins from: ``t_start`` itself on a continuous schedule, the
    nearest of a discrete schedule's levels ``i / T`` (at least level 1) on a discrete one. Noise an image to
    this time (``alpha x + sigma eps``) to continue it with a sampler from ``t_start`` (SDEdit)."""
    if not (isinstance(t_start, (int, float, np.floating)) and 0.0 < float(t_start) <= 1.0):
        raise ValueError(f"t_start={t_start!r} must be a time in (0, 1] (1: pure noise).")
    T = schedule.num_timesteps
    if T is None:
        return float(t_start)
    return max(1, int(round(float(t_start) * T))) / T


def time_grid(schedule: Schedule, num_steps: int, kind: str = "auto", t_start: float = 1.0) -> np.ndarray:
    """The N + 1 times ``t_0 = start > ... > t_N = 0`` of an N-step sampler.

    ``t_start`` < 1 starts the grid at :func:`start_time` (SDEdit, editing, any sampler continued from a
    noised image); every kind then spans ``[0, start]`` as it spans ``[0, 1]``.

    kinds (:func:`resolve_grid`: ``auto`` is ``respaced`` on a discrete schedule, else ``uniform``):
      * ``uniform``: ``t_i = start (1 - i / N)`` (Progressive Distillation's student grid;
        on a discrete schedule it needs T divisible by N to land on its levels).
      * ``logsnr`` (continuous only): uniform in logSNR between logSNR(start) and
        logSNR(0) (DPM-Solver's time steps). Solvers whose error is measured in logSNR
        need it: on the clipped cosine the uniform grid's k-th step from t = 1
        spans log((k+1)/k) in logSNR/2 whatever N is, which caps DPM-Solver++ 2M
        at first order (docs/benchmarks.md).
      * ``respaced`` (discrete only): Improved DDPM's respacing, N levels evenly
        spaced over 1..L (L = start T, T at t_start = 1) and rounded, largest first, then clean data.
      * ``ddim_stride`` (discrete only): DDIM's constant stride c = L // N, levels
        1, 1 + c, ..., 1 + (N - 1) c, largest first, then clean data (diffusers' ``leading``).
      * diffusers' spacings (discrete only), named as its schedulers name them, level i being diffusers' time
        step i - 1: ``leading`` (DDIM's stride; ``leading+K`` adds its ``steps_offset`` K: levels K + 1,
        K + 1 + c, ...), ``trailing`` (levels round(L - k L / N), k < N: the last at L / N) and ``linspace``
        (levels round(k (L - 1) / (N - 1)) + 1, down to level 1: ``respaced`` up to float ties), as
        ``DDIMScheduler``, ``DDPMScheduler`` and ``PNDMScheduler`` space them; ``leading_dpm`` and
        ``linspace_dpm`` as ``DPMSolverMultistepScheduler`` does: the same over N + 1 levels, the lowest left
        out (its last step goes to clean data from there).

    Returns float64 numpy [N + 1], decreasing, ending at 0.
    """
    if not (isinstance(num_steps, (int, np.integer)) and num_steps >= 1):
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}.")
    kind = resolve_grid(kind, schedule)
    start = start_time(schedule, t_start)
    if kind == "uniform":
        return start * (1.0 - np.arange(num_steps + 1, dtype=np.float64) / num_steps)
    T = schedule.num_timesteps
    if kind == "logsnr":
        if T is not None:
            raise ValueError(
                "The 'logsnr' grid puts steps between a discrete model's levels; use 'respaced' for a discrete "
                "schedule."
            )
        return _invert_logsnr(schedule, num_steps, start).copy()
    if T is None:
        raise ValueError(f"The {kind!r} grid needs a discrete schedule; use grid='uniform' with a continuous schedule.")
    top = int(round(start * T))
    if num_steps > top:
        what = f"the schedule's T={T}" if top == T else f"the {top} levels below t_start={t_start:g} (T={T})"
        raise ValueError(f"num_steps={num_steps} exceeds {what}; use at most {top} steps.")
    if kind == "respaced":
        stride = (top - 1) / (num_steps - 1) if num_steps > 1 else 0.0
        levels = np.round(np.arange(num_steps) * stride).astype(np.int64) + 1
        if num_steps == 1:
            levels = np.array([top])
        levels = levels[::-1]
    else:
        levels = _diffusers_levels("leading" if kind == "ddim_stride" else kind, top, num_steps)
        if levels[0] > top or len(levels) != num_steps or np.any(np.diff(levels) >= 0):
            raise ValueError(
                f"The {kind!r} grid of {num_steps} steps does not fit the {top} levels below t={start:g} (T={T}): "
                "use fewer steps or a smaller steps_offset."
            )
    return np.concatenate([levels / T, [0.0]])


def times_at_logsnr(schedule: Schedule, logsnr, low: float | None = None, high: float = 1.0, iterations: int = 60):
    """The times in ``[low, high]`` (``low`` default ``schedule.t_min``) where ``schedule.logsnr`` takes the
    values ``logsnr`` (any shape), by bisection in float32: traceable, for the NLL's levels and the logSNR
    grid alike."""
    lo = jnp.full(jnp.shape(logsnr), schedule.t_min if low is None else low, jnp.float32)
    hi = jnp.full(jnp.shape(logsnr), high, jnp.float32)
    logsnr = jnp.asarray(logsnr, jnp.float32)

    def halve(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        above = schedule.logsnr(mid) > logsnr  # logsnr decreases in t: the target lies later
        return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

    lo, hi = jax.lax.fori_loop(0, iterations, halve, (lo, hi))
    return 0.5 * (lo + hi)


def times_at_sigma(schedule: Schedule, sigmas) -> np.ndarray:
    """The times where the variance-exploding noise level ``sigma_t / alpha_t = exp(-logsnr / 2)`` of
    ``schedule`` takes the values ``sigmas`` (Karras et al. 2022's sigma; float64 array of float32 times),
    clipped to the schedule's range; on a discrete schedule, the nearest level, at least 1 (its t = 0 is
    clean data). Deterministic: the same sigma gives the same time in every call."""
    sigmas = np.asarray(sigmas, np.float64)
    with jax.ensure_compile_time_eval():
        times = np.asarray(times_at_logsnr(schedule, -2.0 * np.log(sigmas), 0.0, 1.0), np.float64)
    if isinstance(schedule, DiscreteSchedule):
        T = schedule.num_timesteps
        return np.clip(np.round(times * T), 1, T) / T
    return times


@functools.lru_cache(maxsize=64)
def boundary_time(schedule: Schedule, sigma_min: float) -> float:
    """The clean end of a consistency model's time range: :func:`times_at_sigma` at ``sigma_min`` (a float32
    value)."""
    return float(np.float32(times_at_sigma(schedule, [sigma_min])[0]))


@functools.lru_cache(maxsize=64)
def _invert_logsnr(schedule: Schedule, num_steps: int, start: float = 1.0) -> np.ndarray:
    """Times whose logsnr is uniform between logsnr(start) and logsnr(0) (:func:`times_at_logsnr`; cached per
    schedule, N and start)."""
    with jax.ensure_compile_time_eval():
        ends = np.asarray(schedule.logsnr(jnp.array([start, 0.0])), np.float64)
        if not np.all(np.isfinite(ends)):
            raise ValueError(
                "The 'logsnr' grid needs a schedule with finite logSNR at both ends (a clipped one such as "
                "CosineLogSNR); use grid='uniform' here."
            )
        targets = np.linspace(ends[0], ends[1], num_steps + 1)[1:-1]
        inner = np.asarray(times_at_logsnr(schedule, targets, 0.0, start), np.float64)
    return np.concatenate([[start], inner, [0.0]])
