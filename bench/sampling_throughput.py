"""Sampling throughput, the point of distillation: images/s of a config's network sampled with DDIM at
teacher-like and student-like step counts, per batch size and compute dtype, and the sampler's overhead.

python bench/sampling_throughput.py --setup=cifar10 --steps=256,8,4,2,1 --batches=256,1024,2048 \\
    --dtypes=float32,bfloat16 --json=docs/sampling_throughput.json --plot=docs/sampling_throughput.png
python bench/sampling_throughput.py --setup=digits --steps=16,4,1 --batches=64 --repeats=1   # CPU check

A student of progressive distillation is the teacher's network with other
weights, so its sampling cost at N steps is the teacher's network at N DDIM
steps: the weights here are random (initialized, then perturbed so that no
branch is zero), which changes no timing. Each row:

* ``compile s``: the first call of the sampler program minus a later one
  (one program per step count, batch and dtype; parameters are arguments);
* ``wall s``: the best of ``--repeats`` calls of the compiled sampler;
* ``call ms``: one network call on the same batch, timed as a compiled
  chain of ``--chain`` calls (so dispatch is counted on neither side);
* ``overhead``: wall / (NFE x call): the sampler's own cost beyond the
  network (target: at most 1.05).

The 1,024-step rows cost about 4 times the 256-step ones; on an H100 the
CIFAR-10 model's 256 steps at batch 2048 are on the order of a minute in
bfloat16, so size ``--steps`` and ``--batches`` to the time you have.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pdist import samplers  # noqa: E402
from pdist.config import from_file  # noqa: E402
from pdist.spec import ModelSpec  # noqa: E402

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs")


def random_params(config):
    """Initialized parameters with every leaf moved off its initial value (zero-initialized output layers
    would otherwise make the network a constant)."""
    params = ModelSpec.of(config).init_params(jax.random.key(0))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    return jax.tree.unflatten(
        tree, [p + 0.02 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys, strict=True)]
    )


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - began)
    return best


def per_call_seconds(den, noise, chain: int, repeats: int) -> float:
    t = jnp.full(noise.shape[:1], 0.5)

    @jax.jit
    def calls(z):
        return jax.lax.fori_loop(0, chain, lambda i, z: den(z, t).x, z)

    jax.block_until_ready(calls(noise))
    return best_time(lambda: calls(noise), repeats) / chain


def measure(config, params, steps_list, batches, chain, repeats) -> list[dict]:
    den = ModelSpec.of(config).bind(params)
    schedule = ModelSpec.of(config).schedule
    rows = []
    for batch in batches:
        noise = jax.random.normal(jax.random.key(2), (batch, *ModelSpec.of(config).image_shape))
        call = per_call_seconds(den, noise, chain, repeats)
        for steps in steps_list:

            def run(steps=steps, noise=noise):
                return samplers.sample(den, schedule, noise, method="ddim", num_steps=steps)

            began = time.perf_counter()
            jax.block_until_ready(run())
            first = time.perf_counter() - began
            wall = best_time(run, repeats)
            nfe = samplers.nfe("ddim", steps, schedule)
            rows.append({
                "dtype": config.model.dtype, "batch": batch, "steps": steps, "nfe": nfe, "compile_s": first - wall,
                "wall_s": wall, "images_per_s": batch / wall, "call_ms": 1e3 * call, "overhead": wall / (nfe * call),
            })  # fmt: skip
            r = rows[-1]
            print(
                f"| {r['dtype']} | {batch} | {steps} | {nfe} | {r['compile_s']:.1f} | {wall:.3f} "
                f"| {r['images_per_s']:,.0f} | {r['call_ms']:.2f} | {r['overhead']:.3f} |",
                flush=True,
            )
    return rows


def plot(rows: list[dict], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for dtype in sorted({r["dtype"] for r in rows}):
        for batch in sorted({r["batch"] for r in rows}):
            mine = sorted((r["steps"], r["images_per_s"]) for r in rows if r["dtype"] == dtype and r["batch"] == batch)
            ax.plot(*zip(*mine, strict=True), marker="o", label=f"{dtype}, batch {batch}")
    ax.set(xscale="log", yscale="log", xlabel="DDIM steps (= network calls)", ylabel="images/s", title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setup", default="cifar10", help="a file in configs/ (its network and schedule)")
    parser.add_argument("--steps", default="256,8,4,2,1")
    parser.add_argument("--batches", default="256,1024,2048")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--chain", type=int, default=8, help="network calls per timed chain")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", default=None, help="write the rows here")
    parser.add_argument("--plot", default=None, help="images/s against steps, a PNG")
    args = parser.parse_args()
    steps_list = [int(s) for s in args.steps.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    device = jax.devices()[0]
    header = f"{args.setup} on {device.device_kind} x{jax.device_count()}, jax {jax.__version__}"
    print(header)
    print("| dtype | batch | steps | NFE | compile s | wall s | images/s | call ms | overhead |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows, params = [], None
    for dtype in args.dtypes.split(","):
        config = from_file(os.path.join(CONFIGS, f"{args.setup}.py"))
        config.model.dtype = dtype
        params = random_params(config) if params is None else params  # float32 parameters for every dtype
        rows += measure(config, params, steps_list, batches, args.chain, args.repeats)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"setup": args.setup, "device": header, "rows": rows}, f, indent=1)
    if args.plot:
        plot(rows, args.plot, header)
    overheads = np.array([r["overhead"] for r in rows if r["steps"] >= 8])
    if overheads.size:
        print(f"overhead at 8 steps or more: max {overheads.max():.3f}, median {np.median(overheads):.3f}")


if __name__ == "__main__":
    main()
