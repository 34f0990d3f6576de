"""Samplers: ``sample(denoise_fn, schedule, noise, *, method, num_steps, key, **options)``.

``denoise_fn(z, t) -> x_hat`` (``t`` of shape [batch]) may be any JAX function:
a trained network, an analytic posterior mean, ... It may also return a
:class:`~pdist.diffusion.Prediction` (x-hat, eps-hat and, for ``ddpm`` with
``variance='learned'``, ``var_frac``).

A denoiser that carries arrays, such as the network's parameters, is a pytree
callable: a ``jax.tree_util.Partial(fn, params, ...)`` (what
``pdist.load(path).denoiser()`` returns). Its arrays are arguments of the
compiled program, never constants baked into it, so one compiled sampler
serves every parameter set of the same shapes. Any other callable (a plain
function, a frozen dataclass) is part of the program's identity: equal
callables share a compiled program.

Each method is one compiled program (``lax.scan``, no Python loop over steps);
the time grid is an argument of that program, so its size does not grow with
``num_steps`` and it traces once per (shape, num_steps). ``nfe(method,
num_steps, schedule)`` reports the number of denoiser evaluations.

Options common to all methods: ``grid`` (``auto``, ``uniform``, ``logsnr``,
``respaced``, ``ddim_stride``; see :func:`pdist.schedules.time_grid`: ``auto``
is ``respaced`` on a discrete schedule, ``uniform`` on a continuous one) and
``clip_x`` (clip x-hat to [-1, 1]). Sampler options: ``ddpm(variance='small'|'large'|'learned')``,
``ddim(eta=0.0)``, ``consistency`` (multistep consistency sampling:
``z_s = alpha_s x-hat + sigma_s xi``), ``plms(warmup='ramp'|'improved_euler')``,
``dpmpp_2m(lower_order_final='always'|'below_15')``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from pdist.samplers import ancestral, ode, pndm
from pdist.samplers.core import Predictor
from pdist.schedules import Schedule, time_grid

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Sampler:
    """A sampler: its function, its options with defaults, when it needs a key, and its cost.

    ``nfe(n, ends_at_data, options)``: evaluations for n steps of the method itself (the
    final DDIM step onto clean data of a discrete schedule adds one;
    ``samplers/core.py``). ``ends_on_x``: the method's last step returns x-hat
    on every schedule, not only on one that ends at clean data (ancestral DDPM:
    its ``large`` variance would otherwise add noise of the size of the last
    step's beta onto the samples).
    """

    run: Callable
    options: tuple[tuple[str, object], ...]
    needs_key: Callable[[dict], bool]  # of the resolved options
    nfe: Callable[[int, bool, dict], int]
    ends_on_x: bool = False


def _never(options: dict) -> bool:
    return False


def _plms_nfe(n: int, at_data: bool, options: dict) -> int:
    return n + 1 if options["warmup"] == "improved_euler" and n else n


SAMPLERS: dict[str, Sampler] = {
    "ddpm": Sampler(ancestral.ddpm, (("variance", "small"),), lambda o: True, lambda n, *_: n, ends_on_x=True),
    "ddim": Sampler(ancestral.ddim, (("eta", 0.0),), lambda o: o["eta"] > 0, lambda n, *_: n),
    "consistency": Sampler(ancestral.consistency, (), lambda o: True, lambda n, *_: n, ends_on_x=True),
    "euler": Sampler(ode.euler, (), _never, lambda n, *_: n),
    "heun": Sampler(ode.heun, (), _never, lambda n, at_data, _: 2 * n if at_data else max(2 * n - 1, 0)),
    "dpmpp_2m": Sampler(ode.dpmpp_2m, (("lower_order_final", "always"),), _never, lambda n, *_: n),
    "prk": Sampler(pndm.prk, (), _never, lambda n, *_: 4 * n),
    "plms": Sampler(pndm.plms, (("warmup", "ramp"), ("blend", "auto")), _never, _plms_nfe),
    "spndm": Sampler(pndm.spndm, (), _never, lambda n, *_: n + 1 if n else 0),
    "fpndm": Sampler(pndm.fpndm, (), _never, lambda n, *_: 4 * min(3, n) + max(n - 3, 0)),
}


def nfe(method: str, num_steps: int, schedule: Schedule, **options) -> int:
    """Number of denoiser evaluations of ``method`` with ``num_steps`` steps and ``options``."""
    m = _method(method)
    data_step = int(schedule.ends_at_data)
    return m.nfe(num_steps - data_step, schedule.ends_at_data, _options(method, m, options)) + data_step


def sample(
    denoise_fn: Callable,
    schedule: Schedule,
    noise: Array,
    *,
    method: str,
    num_steps: int,
    key: Array | None = None,
    grid: str = "auto",
    clip_x: bool = False,
    clip_keeps_eps: bool = False,
    t_start: float = 1.0,
    **options,
) -> Array:
    """Runs ``method`` for ``num_steps`` steps from ``noise`` (z at t = 1) to t = 0.

    ``t_start`` < 1: ``noise`` is z at ``schedules.start_time(schedule, t_start)`` (t_start itself, or the
    nearest level of a discrete schedule), such as ``alpha x + sigma eps`` of an image (SDEdit,
    :mod:`pdist.editing`), and the ``num_steps`` steps span ``[0, start]`` on the same kind of grid.

    ``clip_keeps_eps``: clipping keeps the network's eps-hat (diffusers' ``clip_sample``) instead of
    recomputing it from the clipped x-hat.

    Returns the final sample, the shape of ``noise``. ``key`` is required by the
    stochastic methods (``ddpm``, ``ddim`` with ``eta > 0``, ``consistency``).
    """
    m = _method(method)
    allowed = _options(method, m, options)
    if m.needs_key(allowed) and key is None:
        raise ValueError(f"Sampler {method!r} is stochastic here; pass key=jax.random.key(seed).")
    times = jnp.asarray(time_grid(schedule, num_steps, grid, t_start), jnp.float32)
    if key is None:
        key = jax.random.key(0)  # unused by deterministic methods
    options = tuple(sorted(allowed.items()))
    return _run(as_pytree(denoise_fn), schedule, method, (clip_x, clip_keeps_eps), options, times, noise, key)


def as_pytree(denoise_fn: Callable) -> Callable:
    """``denoise_fn`` as a pytree whose leaves are arrays: a callable pytree (a ``Partial`` carrying
    parameters) as it is, any other callable wrapped in a leafless ``Partial``."""
    leaves = jax.tree.leaves(denoise_fn)
    if all(isinstance(leaf, (jax.Array, np.ndarray)) for leaf in leaves):
        return denoise_fn
    return Partial(denoise_fn)


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _run(denoise_fn, schedule, method, clip, options, times, noise, key):
    ev = Predictor(denoise_fn, schedule, *clip)
    m = SAMPLERS[method]
    if not (ev.ends_at_data or m.ends_on_x):
        return m.run(ev, times, noise, key, **dict(options))
    z = m.run(ev, times[:-1], noise, key, **dict(options))
    return ev(z, times[-2]).x  # the last step returns x-hat (on clean data: DDIM's step onto t = 0 is x-hat)


def _options(method: str, m: Sampler, options: dict) -> dict:
    """``m``'s options with their defaults, updated by ``options``; one sentence on an unknown one."""
    allowed = dict(m.options)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"Unknown option(s) {unknown} for sampler {method!r}; it accepts "
            f"{sorted(allowed) or 'no options'} besides grid, clip_x and clip_keeps_eps."
        )
    return {**allowed, **options}


def _method(method: str) -> Sampler:
    if method not in SAMPLERS:
        raise ValueError(f"Unknown sampler {method!r}; choose one of {sorted(SAMPLERS)}.")
    return SAMPLERS[method]
