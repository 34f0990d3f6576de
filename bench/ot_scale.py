"""DPM-OT at the issue's scale: N targets of dimension D (default 50,000 x 3,072, CIFAR-10's latents) split over
the devices (``pdist.ot.target_mesh``), one solver step's Monte-Carlo cell masses timed, and the cost of a step
at the reference's 10 N points and at the 2 million points the 8e-4 stopping rule needs (``ot.noise_floor``).

The targets are Gaussian latents (what ``alpha x + sigma eps`` of images looks like to the timing: the
assignment's cost and memory do not depend on the values). Reports the targets' bytes per device, the score
block's bytes (points per batch x ``--chunk``), the seconds per batch of points (median of ``--repeats`` after
a compile), the points per second, the seconds a step takes at 10 N and at 2M points, and the peak memory (the
device's allocator where it reports one, else the process's resident set).

    python bench/ot_scale.py                                   # on whatever devices there are
    python bench/ot_scale.py --num-targets=5000 --batch=2000   # a CPU-sized check
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from pdist import ot


def peak_gib() -> tuple[float, str]:
    stats = [d.memory_stats() or {} for d in jax.local_devices()]
    peaks = [s.get("peak_bytes_in_use") for s in stats if s.get("peak_bytes_in_use")]
    if peaks:
        return max(peaks) / 2**30, "device peak"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "process RSS"  # kilobytes on Linux


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-targets", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=3072)
    parser.add_argument("--batch", type=int, default=10_000, help="Monte-Carlo points per batch")
    parser.add_argument("--chunk", type=int, default=4096, help="targets per score block")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    n, d = args.num_targets, args.dim
    mesh = ot.target_mesh()
    rng = np.random.default_rng(0)
    targets = rng.standard_normal((n, d), dtype=np.float32)
    y = ot.shard_targets(targets, mesh)
    del targets
    h = jnp.zeros((n,), jnp.float32)

    def step(key):
        return ot.cell_masses(
            key, y, h, source=ot.normal_source, batch=args.batch, num_batches=1, chunk=args.chunk, mesh=mesh
        ).block_until_ready()

    began = time.perf_counter()
    masses = step(jax.random.key(0))
    compile_s = time.perf_counter() - began
    times = []
    for r in range(args.repeats):
        began = time.perf_counter()
        step(jax.random.key(r + 1))
        times.append(time.perf_counter() - began)
    per_batch = float(np.median(times))
    rate = args.batch / per_batch
    peak, peak_kind = peak_gib()
    rows_per_device = -(-n // mesh.size)
    device = f"{mesh.size} x {jax.devices()[0].device_kind}"
    print(f"device: {device}, {platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, "
          f"{time.strftime('%Y-%m-%d')}")  # fmt: skip
    print(
        "| N | D | devices | targets per device (GiB) | score block (GiB) | points a batch | compile + first (s) | "
        "s a batch | points/s | s a step at 10 N | s a step at 2M points | peak GiB |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {n:,} | {d:,} | {mesh.size} | {rows_per_device * d * 4 / 2**30:.2f} | "
        f"{args.batch * min(args.chunk, rows_per_device) * 4 / 2**30:.2f} | {args.batch:,} | {compile_s:.1f} | "
        f"{per_batch:.3f} | {rate:,.0f} | {10 * n / rate:.1f} | {2e6 / rate:.1f} | {peak:.2f} ({peak_kind}) |"
    )
    assert abs(float(jnp.sum(masses)) - 1.0) < 1e-5  # every point found a cell
    print(f"noise floor of the gradient norm: {ot.noise_floor(n, 10 * n):.2e} at 10 N points, "
          f"{ot.noise_floor(n, 2_000_000):.2e} at 2M (the reference stops below 8e-4)")  # fmt: skip


if __name__ == "__main__":
    main()
