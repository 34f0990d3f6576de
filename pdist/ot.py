"""The optimal-transport expressway (DPM-OT; Li et al., ICCV 2023, code cognaclee/DPM-OT).

A semi-discrete optimal-transport map from the prior N(0, I) onto N targets ``y_i = alpha_t' x_i + sigma_t'
eps_i``, latents of data (or of the model's own samples) at an intermediate time t'. For the squared-distance
cost the map is the gradient of the convex Brenier potential ``u_h(x) = max_i <x, y_i> + h_i``:

    T(x) = y_{argmax_i <x, y_i> + h_i}

and the potentials h minimize the convex energy ``E(h) = E_x[u_h(x)] - mean(h)``, whose gradient is each
cell's mass under the prior minus 1/N. :func:`solve` runs the reference's stochastic descent on it (Adam on
Monte-Carlo cell masses from batches of about 10 N prior samples, the potentials kept at mean zero, the
batch doubled and the rate cut by 0.8 when the gradient norm stops improving, stop at a gradient norm below
8e-4 with no empty cell). Sampling maps the noise to ``T(noise)`` at t' and continues with any sampler from
t' (``samplers.sample(..., t_start=t')``): about 10 evaluations instead of the whole reverse process.

What the expressway does and does not buy: ``T`` sends every noise vector to one of the N stored targets
exactly, so once every cell holds mass 1/N the samples at t' are the uniform mixture over the stored
targets, whatever the partition. The transport plan decides which noise reaches which target, not the
distribution of the samples; a uniformly random assignment gives the same distribution
(:func:`random_assignment`, the benchmark's ablation). The samples are the stored latents denoised from
t': close to the data they were made from when t' is small (a memorization check belongs in every
comparison).

What the reference does (cognaclee/DPM-OT: NCSN score networks sampled by annealed Langevin dynamics), and
where pdist differs:

* Targets: its ``test`` mode runs the *test split's* images forward to the latents at the chosen step and
  stores them; they are the targets. pdist's are ``alpha_t' x + sigma_t' eps`` of the images it is given
  (:meth:`pdist.pretrained.Pretrained.expressway`; bench/ot.py takes the train split, or the model's own
  samples, and keeps the test split for scoring). On a discrete schedule they are noised at the level a
  sampler started at t' begins from (:func:`pdist.schedules.start_time`), as SDEdit's start is.
* Source: its solver's Monte-Carlo points and the points its FID path maps (``fast_fid``, ``fine_tune``)
  are both drawn from the uniform cube [0, 1)^D (``torch.rand``), so the map is solved for, and applied
  to, uniform points. pdist solves for and maps the sampler's prior N(0, I) (:func:`normal_source`).
* Solver: the same descent, Adam without bias correction (:func:`solve`), the same stopping rule, sample
  doubling and rate cut; the reference counts empty cells only every 50 steps, pdist at every step.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pdist import diffusion
from pdist.schedules import Schedule, start_time

Array = jax.Array


def check_time(t: float) -> None:
    if not 0.0 < t < 1.0:
        raise ValueError(f"The expressway's time t'={t} must be in (0, 1): 1 is pure noise, 0 the data.")


def targets_from(schedule: Schedule, x, key: Array, t: float) -> np.ndarray:
    """``alpha_s x + sigma_s eps`` of images ``x`` [N, ...], flattened to [N, D] (float32 numpy), at the time
    ``s`` a sampler started at ``t`` begins from (:func:`pdist.schedules.start_time`: ``t`` itself on a
    continuous schedule, the nearest level on a discrete one)."""
    check_time(t)
    x = jnp.asarray(x, jnp.float32).reshape(len(x), -1)
    s = jnp.float32(start_time(schedule, t))
    return np.asarray(diffusion.diffuse(x, jax.random.normal(key, x.shape, jnp.float32), schedule.logsnr(s)))


def _best(x: Array, targets: Array, potentials: Array, chunk: int) -> tuple[Array, Array]:
    """For each row of ``x`` [B, D], the largest score ``<x, y_i> + h_i`` over ``targets`` and its index: the
    targets in chunks of ``chunk`` rows (one [B, chunk] score block at a time)."""
    n = targets.shape[0]
    chunk = min(chunk, n)
    pad = -n % chunk
    y = jnp.pad(targets, ((0, pad), (0, 0))).reshape(-1, chunk, targets.shape[1])
    h = jnp.pad(potentials, (0, pad), constant_values=-jnp.inf).reshape(-1, chunk)

    def block(best, inputs):
        y_c, h_c, start = inputs
        scores = x @ y_c.T + h_c[None, :]
        idx = jnp.argmax(scores, axis=1)
        val = jnp.take_along_axis(scores, idx[:, None], axis=1)[:, 0]
        better = val > best[0]  # ties keep the lower index, as one argmax over all N would
        return (jnp.where(better, val, best[0]), jnp.where(better, idx + start, best[1])), None

    init = (jnp.full((x.shape[0],), -jnp.inf, x.dtype), jnp.zeros((x.shape[0],), jnp.int32))
    starts = jnp.arange(y.shape[0], dtype=jnp.int32) * chunk
    return jax.lax.scan(block, init, (y, h, starts))[0]


TARGETS = "targets"  # the mesh axis a sharded solve splits the targets over


def target_mesh(devices=None) -> Mesh:
    """A mesh of ``devices`` (default: ``jax.devices()``) whose one axis splits the targets. Tested with several
    devices in one process (tests/scripts/four_devices.py); a solve over several processes is not."""
    return Mesh(np.asarray(jax.devices() if devices is None else devices), (TARGETS,))


def shard_targets(targets, mesh: Mesh) -> Array:
    """``targets`` [N, D] split by rows over ``mesh``, padded with zero rows to a multiple of its size (their
    potentials are -inf in :func:`assign`: they never win). Every process passes the same full array."""
    targets = np.asarray(targets, np.float32)
    targets = np.pad(targets, ((0, -len(targets) % mesh.size), (0, 0)))
    rows = NamedSharding(mesh, PartitionSpec(TARGETS))
    return jax.make_array_from_callback(targets.shape, rows, lambda index: targets[index])


@functools.partial(jax.jit, static_argnames=("chunk", "mesh"))
def assign(x: Array, targets: Array, potentials: Array, chunk: int = 4096, mesh: Mesh | None = None) -> Array:
    """``argmax_i <x, y_i> + h_i`` for each row of ``x`` [B, D], the lowest index on ties. The targets go in
    chunks of ``chunk`` rows, so N is bounded by the targets' memory, not N times B. With ``mesh``
    (:func:`target_mesh`; ``targets`` from :func:`shard_targets`, ``potentials`` the N real ones), each device
    scores ``x`` against its rows and the devices' best (score, index) pairs are gathered: memory and work per
    device are 1 / devices of one device's, and the answer is the one-device answer."""
    if mesh is None:
        return _best(x, targets, potentials, chunk)[1]
    potentials = jnp.pad(potentials, (0, targets.shape[0] - potentials.shape[0]), constant_values=-jnp.inf)

    def local(x, y, h):
        val, idx = _best(x, y, h, chunk)
        idx = idx + jax.lax.axis_index(TARGETS) * y.shape[0]
        vals, idxs = jax.lax.all_gather(val, TARGETS), jax.lax.all_gather(idx, TARGETS)  # [devices, B]
        first = jnp.argmax(vals, axis=0)  # the first device on ties: the lowest index
        return jnp.take_along_axis(idxs, first[None], axis=0)[0]

    specs = (PartitionSpec(), PartitionSpec(TARGETS), PartitionSpec(TARGETS))
    return jax.shard_map(local, mesh=mesh, in_specs=specs, out_specs=PartitionSpec(), check_vma=False)(
        x, targets, potentials
    )


def normal_source(key: Array, n: int, dim: int) -> Array:
    """The prior: ``n`` standard-normal points in ``dim`` dimensions."""
    return jax.random.normal(key, (n, dim), jnp.float32)


@functools.partial(jax.jit, static_argnames=("source", "batch", "num_batches", "chunk", "mesh"))
def cell_masses(
    key, targets, potentials, *, source, batch: int, num_batches: int, chunk: int = 4096, mesh: Mesh | None = None
) -> Array:
    """Each cell's Monte-Carlo mass under ``source(key, n, dim)``: ``num_batches`` batches of ``batch``.
    ``potentials`` [N]; with ``mesh``, ``targets`` is :func:`shard_targets`' padded split (the masses are the
    N real cells'; every device draws the same points and scores them against its rows)."""
    n, dim = potentials.shape[0], targets.shape[1]

    def one(counts, k):
        index = assign(source(k, batch, dim), targets, potentials, chunk=chunk, mesh=mesh)  # never a padded row
        return counts + jnp.bincount(index, length=n), None

    counts, _ = jax.lax.scan(one, jnp.zeros((n,), jnp.int32), jax.random.split(key, num_batches))
    return counts / (batch * num_batches)


@dataclasses.dataclass
class Solution:
    potentials: np.ndarray
    steps: int
    grad_norm: float  # of the last step: ||masses - 1/N||
    empty_cells: int
    converged: bool
    history: list[float]  # the gradient norm at every step


# The reference's Adam (cognaclee/DPM-OT, ot_utils/optimal_transport.py, train_ot): moments m <- 0.9 m + 0.1 g
# and v <- 0.999 v + 0.001 g^2 from zero, step -lr m / (sqrt(v) + 1e-8), with no bias correction. optax.adam
# always corrects the bias (m / (1 - 0.9^k), v / (1 - 0.999^k)), which makes its steps 2 to 6.5 times smaller
# over the first few hundred steps at the same rate, so the update is written here, not taken from optax.
_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8


@jax.jit
def _update(h, moments, masses, lr):
    """One step of the reference's Adam on the dual's gradient ``masses - 1/N``, h kept at mean zero;
    (h, moments, norm, empty)."""
    grad = masses - 1.0 / h.shape[0]
    m, v = moments
    m = _BETA1 * m + (1.0 - _BETA1) * grad
    v = _BETA2 * v + (1.0 - _BETA2) * grad * grad
    h = h - lr * m / (jnp.sqrt(v) + _EPS)
    return h - jnp.mean(h), (m, v), jnp.linalg.norm(grad), jnp.sum(masses == 0)


def solve(
    targets,
    key: Array,
    *,
    lr: float = 0.1,
    samples: int | None = None,
    batch: int = 10_000,
    tol: float = 8e-4,
    max_steps: int = 10_000,
    patience: int = 50,
    source: Callable = normal_source,
    chunk: int = 4096,
    mesh: Mesh | None = None,
    init=None,
) -> Solution:
    """Potentials h of the semi-discrete OT from ``source`` (the prior) to the uniform measure on ``targets``
    [N, D], by the reference's stochastic descent: its Adam (rate ``lr``, no bias correction, as the
    reference's ``train_ot`` writes it) on the gradient ``masses - 1/N``,
    ``samples`` (default 10 N) Monte-Carlo points a step in batches of ``batch``, h kept at mean zero;
    after ``patience`` steps without a better gradient norm the samples double and the rate is cut by 0.8
    (three times at most). Stops at a gradient norm below ``tol`` with no empty cell, or ``max_steps``.
    ``mesh`` (:func:`target_mesh`) splits the targets over its devices (:func:`assign`): the same steps and
    potentials as on one device. ``init``: potentials to start from (an earlier solve's, to refine it with
    more samples; default zeros).

    The gradient is a Monte-Carlo estimate: with M points a step, its norm cannot fall much below the noise's,
    ``sqrt((1 - 1/N) / M)`` (:func:`noise_floor`), so the reference's 8e-4 needs M of about 2 million points
    or more whatever N is (10 N points: 0.0082 at N = 1,497, 0.0014 at N = 50,000)."""
    n = len(targets)
    if mesh is None:
        targets = jnp.asarray(targets, jnp.float32)
    else:
        targets = shard_targets(targets, mesh)
    batch = min(batch, max(samples or 10 * n, 1))
    num_batches = max(1, -(-(samples or 10 * n) // batch))
    h = jnp.zeros((n,), jnp.float32) if init is None else jnp.asarray(init, jnp.float32) - float(np.mean(init))
    rate = lr
    moments = (jnp.zeros_like(h), jnp.zeros_like(h))

    best, bad, doublings, history = np.inf, 0, 0, []
    for step in range(1, max_steps + 1):
        masses = cell_masses(
            jax.random.fold_in(key, step), targets, h, source=source, batch=batch, num_batches=num_batches,
            chunk=chunk, mesh=mesh,
        )  # fmt: skip
        h_next, moments, norm, empty = _update(h, moments, masses, jnp.float32(rate))
        norm, empty = float(norm), int(empty)
        history.append(norm)
        if norm < tol and empty == 0:
            return Solution(np.asarray(h), step, norm, empty, True, history)
        h = h_next
        if norm < best:
            best, bad = norm, 0
        else:
            bad += 1
        if bad > patience and doublings < 3:
            num_batches, rate, bad, best, doublings = 2 * num_batches, 0.8 * rate, 0, np.inf, doublings + 1
    return Solution(np.asarray(h), max_steps, norm, empty, False, history)


def noise_floor(n: int, samples: int) -> float:
    """The expected norm of the Monte-Carlo error of N cell masses of 1/N each estimated from ``samples``
    points (multinomial counts): ``sqrt((1 - 1/N) / samples)``; a solve's gradient norm stays above it."""
    return float(np.sqrt((1.0 - 1.0 / n) / samples))


def random_assignment(key: Array, n: int, num: int) -> Array:
    """The ablation: each of ``num`` samples gets a target drawn uniformly from the N, whatever its noise."""
    return jax.random.randint(key, (num,), 0, n)


def on_expressway(noise: Array, targets: Array, potentials: Array, chunk: int = 4096) -> Array:
    """``T(noise)``: each noise image's target, [B, *shape] at the expressway's time (``targets`` [N, D],
    ``potentials`` [N])."""
    flat = jnp.asarray(noise, jnp.float32).reshape(noise.shape[0], -1)
    targets = jnp.asarray(targets)
    return targets[assign(flat, targets, jnp.asarray(potentials), chunk=chunk)].reshape(noise.shape)


def sample(denoise_fn: Callable, schedule: Schedule, way, noise: Array, **sampler) -> Array:
    """DPM-OT sampling: ``noise`` [B, ...] mapped to ``T(noise)`` at ``way.t``, then ``samplers.sample`` from
    there (``way``: a :class:`pdist.expressway.Expressway`; ``sampler``: ``method``, ``num_steps``, ``key``,
    options)."""
    from pdist import samplers

    if tuple(noise.shape[1:]) != tuple(way.shape):
        raise ValueError(f"The expressway maps images of shape {way.shape}; the noise has shape {noise.shape[1:]}.")
    return samplers.sample(
        denoise_fn, schedule, on_expressway(noise, way.targets, way.potentials), t_start=way.t, **sampler
    )
