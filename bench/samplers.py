"""Sampler benchmark: error against exact answers versus NFE, and the sampler's overhead.

    python bench/samplers.py            # full table and plot (docs/samplers_error_vs_nfe.png)
    python bench/samplers.py --quick    # a small table in a few seconds per method
    python bench/samplers.py --options  # part 3 only: each method option against the reference's choice

Part 1: for every deterministic method, RMS error of the final sample against
the exact answer (Gaussian: closed-form flow; 2-D mixture: float64 SciPy
solve), on the PD cosine (uniform and logSNR grids) and Ho's linear betas
(respaced grid).
Part 2: overhead ratio = wall time of ``sample(...)`` with a small MLP denoiser
divided by NFE x the time of one compiled denoiser call on the same batch
(measured as a compiled chain of calls, so dispatch is not counted either way).
Part 3: the method options where pdist's default and the reference code differ
(``plms`` warm-up, ``dpmpp_2m``'s first-order last step), same errors as part 1.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from pdist import oracles, samplers  # noqa: E402
from pdist import schedules as sc  # noqa: E402

DETERMINISTIC = ["ddim", "euler", "heun", "dpmpp_2m", "prk", "plms", "spndm", "fpndm"]
SETUPS = {
    "cosine/uniform": (sc.CosineLogSNR(), "uniform"),
    "cosine/logsnr": (sc.CosineLogSNR(), "logsnr"),
    "linear/respaced": (sc.LinearBetas(1000), "respaced"),
}
ORACLES = {"gaussian": oracles.gaussian([0.3, -0.2, 0.1, 0.0], [0.5, 0.2, 0.5, 0.8]), "mixture": oracles.mixture_2d()}
# (method, option, pdist's default, the reference's choice)
OPTIONS = [
    ("plms", "warmup", "ramp", "improved_euler"),  # LDM / diffusers PLMS: a pseudo improved-Euler first step
    ("dpmpp_2m", "lower_order_final", "always", "below_15"),  # DPM-Solver / diffusers: first order last step < 15
]


def _error(den, schedule, grid, noise, n, ref, method, **options):
    """(NFE, RMS error, median error) of ``method``'s final samples against the exact answer ``ref``."""
    out = samplers.sample(den, schedule, noise, method=method, num_steps=n, grid=grid, **options)
    err = np.linalg.norm(np.asarray(out) - ref, axis=1)
    return samplers.nfe(method, n, schedule, **options), float(np.sqrt(np.mean(err**2))), float(np.median(err))


def _cases(steps, batch):
    """Every (oracle, setup, step count) with its ``error(method, **options)`` (:func:`_error`)."""
    for oname, data in ORACLES.items():
        noise = jax.random.normal(jax.random.key(0), (batch, data.dim))
        for sname, (schedule, grid) in SETUPS.items():
            den = oracles.Denoiser(data, schedule)
            for n in steps:
                ref = oracles.exact_sample(data, schedule, noise, n, grid)
                yield oname, sname, n, functools.partial(_error, den, schedule, grid, noise, n, ref)


def error_table(steps, batch):
    return [(o, s, m, n, *error(m)) for o, s, n, error in _cases(steps, batch) for m in DETERMINISTIC]


def options_table(steps, batch):
    """RMS error against the exact answer of each option value, per oracle, schedule/grid and step count."""
    rows = []
    for oname, sname, n, error in _cases(steps, batch):
        for method, option, ours, theirs in OPTIONS:
            (nfe_a, a, _), (nfe_b, b, _) = (error(method, **{option: value}) for value in (ours, theirs))
            rows.append((oname, sname, method, n, nfe_a, a, nfe_b, b))
    return rows


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(ORACLES), len(SETUPS), figsize=(16, 8.5), sharex=True, squeeze=False)
    for i, oname in enumerate(ORACLES):
        for j, sname in enumerate(SETUPS):
            ax = axes[i, j]
            for m in DETERMINISTIC:
                pts = sorted((r[4], r[5]) for r in rows if r[0] == oname and r[1] == sname and r[2] == m)
                ax.loglog(*zip(*pts, strict=True), marker="o", ms=3, label=m)
            ax.set_title(f"{oname}, {sname}")
            ax.set_xlabel("NFE")
            ax.set_ylabel("RMS error vs exact")
            ax.grid(True, which="both", alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


class MLP:
    """A small time-conditioned MLP denoiser with fixed random weights."""

    def __init__(self, dim, width, schedule):
        keys = jax.random.split(jax.random.key(1), 3)
        self.schedule = schedule
        self.params = [
            (jax.random.normal(keys[0], (dim + 1, width)) / np.sqrt(dim + 1), jnp.zeros(width)),
            (jax.random.normal(keys[1], (width, width)) / np.sqrt(width), jnp.zeros(width)),
            (jax.random.normal(keys[2], (width, dim)) / np.sqrt(width), jnp.zeros(dim)),
        ]

    def __call__(self, z, t):
        h = jnp.concatenate([z, self.schedule.logsnr(t)[:, None] / 20.0], -1)
        for w, b in self.params[:-1]:
            h = jax.nn.gelu(h @ w + b)
        w, b = self.params[-1]
        return jnp.tanh(h @ w + b)


def _best_time(fn, repeats):
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def overhead_table(num_steps, batch, dim, width, repeats):
    schedule = sc.CosineLogSNR()
    den = MLP(dim, width, schedule)
    noise = jax.random.normal(jax.random.key(2), (batch, dim))
    t = jnp.full((batch,), 0.5)
    chain = 64

    @jax.jit
    def calls(z):
        return jax.lax.fori_loop(0, chain, lambda i, z: den(z, t), z)

    per_call = _best_time(lambda: calls(noise).block_until_ready(), repeats) / chain
    rows = []
    for m in samplers.SAMPLERS:
        key = jax.random.key(3)

        def run(m=m, key=key):
            return samplers.sample(den, schedule, noise, method=m, num_steps=num_steps, key=key).block_until_ready()

        wall = _best_time(run, repeats)
        n = samplers.nfe(m, num_steps, schedule)
        rows.append((m, num_steps, n, wall, per_call, wall / (n * per_call)))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few step counts, small batches")
    default_plot = os.path.join(os.path.dirname(__file__), "..", "docs", "samplers_error_vs_nfe.png")
    parser.add_argument("--plot", default=default_plot)
    parser.add_argument("--options", action="store_true", help="only part 3, the method options")
    args = parser.parse_args()
    steps = [5, 10, 20] if args.quick else [4, 8, 16, 32, 64, 128]
    machine = f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, {jax.devices()[0].platform}"
    print(f"# pdist sampler benchmark ({machine})\n")
    if args.options:
        print("## Method options: pdist's default against the reference code's choice (RMS error vs exact)\n")
        print("| oracle | schedule/grid | method | steps | NFE | default | NFE | reference | reference / default |")
        print("|---|---|---|---:|---:|---:|---:|---:|---:|")
        for o, s, m, n, nfe_a, a, nfe_b, b in options_table([5, 8, 10, 12, 14, 16, 20, 32, 64], 256):
            print(f"| {o} | {s} | {m} | {n} | {nfe_a} | {a:.2e} | {nfe_b} | {b:.2e} | {b / a:.2f} |")
        return
    print("## Error against the exact answer (RMS and median over samples)\n")
    print("| oracle | schedule/grid | method | steps | NFE | RMS error | median error |")
    print("|---|---|---|---:|---:|---:|---:|")
    rows = error_table(steps, 64 if args.quick else 256)
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]} | {r[5]:.2e} | {r[6]:.2e} |")
    if not args.quick:
        plot(rows, args.plot)
        print(f"\nplot: {os.path.normpath(args.plot)}")
    print("\n## Sampler overhead: wall time / (NFE x one compiled denoiser call)\n")
    batch, dim, width = (256, 64, 256) if args.quick else (1024, 64, 512)
    print(f"MLP denoiser {dim}->{width}->{width}->{dim}, batch {batch}, PD cosine schedule\n")
    print("| method | steps | NFE | sample wall (ms) | one call (ms) | overhead ratio |")
    print("|---|---:|---:|---:|---:|---:|")
    for m, n, nfe, wall, call, ratio in overhead_table(50, batch, dim, width, 3 if args.quick else 7):
        print(f"| {m} | {n} | {nfe} | {wall * 1e3:.1f} | {call * 1e3:.3f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
