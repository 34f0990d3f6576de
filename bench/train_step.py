"""Training throughput (images/s) of the train step, per config, on the default JAX device.

python bench/train_step.py                 # digits, cifar10 at ch=32, cifar10 at full width
python bench/train_step.py --quick         # digits only
python bench/train_step.py --peak-tflops=989 --setups=cifar10   # adds model-FLOPs utilization
python bench/train_step.py --setups=cifar10 --variants=float32,bfloat16,bfloat16+remat,float32+accum4

Times ``--steps`` steps after one warm-up (compile) step, on one synthetic
batch already on the device, so the figure is the step alone, not the input.
FLOPs per step come from XLA's cost analysis of the lowered (not yet
optimized) step, which counts every convolution on every backend. Memory:
XLA's temporary buffers of the compiled step (activations and scratch), and
on a GPU the device's peak bytes in use after the timed steps.

A variant is ``float32`` or ``bfloat16`` compute (``config.model.dtype``),
optionally ``+remat`` (``config.model.remat``) and ``+accumK`` (``K``
micro-batches per update, ``config.train.grad_accum_steps``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pdist import build  # noqa: E402
from pdist.config import from_file  # noqa: E402
from pdist.runtime import mesh as mesh_lib  # noqa: E402
from pdist.runtime import step as step_lib  # noqa: E402

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs")

SETUPS = {
    "digits": ("digits", {}),
    "cifar10_ch32": ("cifar10", {"ch": 32}),
    "cifar10": ("cifar10", {}),
}


def apply_variant(config, variant: str) -> None:
    dtype, *options = variant.split("+")
    config.model.dtype = dtype
    for option in options:
        if option == "remat":
            config.model.remat = True
        elif option.startswith("accum"):
            config.train.grad_accum_steps = int(option[len("accum") :])
        else:
            raise SystemExit(f"Unknown variant option {option!r}; use remat or accumK.")


def measure(name: str, batch_size: int | None, steps: int, variant: str = "float32") -> dict:
    config_name, model_overrides = SETUPS[name]
    config = from_file(os.path.join(CONFIGS, f"{config_name}.py"))
    for k, v in model_overrides.items():
        config.model[k] = v
    apply_variant(config, variant)
    batch_size = batch_size or config.train.batch_size
    config.train.batch_size = batch_size
    mesh = mesh_lib.data_mesh()
    init_fn, optimizer = build.state_init(config)
    state = step_lib.create_state(init_fn, mesh)
    params = sum(x.size for x in jax.tree.leaves(state.params))
    step = step_lib.compile_step(
        step_lib.make_train_step(
            build.loss(config),
            optimizer,
            ema_decay=config.train.ema_decay,
            accum_steps=config.train.grad_accum_steps,
        ),
        mesh,
    )
    rng = np.random.default_rng(0)
    local = {
        "image": rng.uniform(-1, 1, (batch_size, *build.image_shape(config))).astype(np.float32),
        "label": rng.integers(0, max(config.data.num_classes, 1), batch_size).astype(np.int32),
    }
    batch = mesh_lib.global_batch(local, mesh)
    key = jax.random.key(0)
    t0 = time.perf_counter()
    lowered = step.lower(state, batch, key, optimizer.args)
    compiled = lowered.compile()
    memory = compiled.memory_analysis()
    temp_gib = memory.temp_size_in_bytes / 2**30 if memory is not None else float("nan")
    compile_s = time.perf_counter() - t0
    # FLOPs of the step as written (unoptimized HLO): the same on every backend. The compiled module's count
    # misses the convolutions that the GPU backend hands to cuDNN as custom calls.
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    state, metrics = step(state, batch, key, optimizer.args)
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch, key, optimizer.args)
    jax.block_until_ready(metrics)
    sec = (time.perf_counter() - t0) / steps
    stats = jax.devices()[0].memory_stats() or {}
    return {
        "setup": name,
        "variant": variant,
        "temp_gib": temp_gib,
        "peak_gib": stats.get("peak_bytes_in_use", float("nan")) / 2**30,
        "params": params,
        "batch": batch_size,
        "compile_s": compile_s,
        "step_s": sec,
        "images_per_s": batch_size / sec,
        "tflops_per_step": flops / 1e12,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setups", default="digits,cifar10_ch32,cifar10")
    parser.add_argument("--quick", action="store_true", help="digits only")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument(
        "--variants", default="float32", help="comma-separated, e.g. float32,bfloat16+remat,float32+accum4"
    )
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak, for model-FLOPs utilization")
    args = parser.parse_args()
    setups = ["digits"] if args.quick else args.setups.split(",")
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, jax {jax.__version__}")
    print(
        "| setup | variant | params | batch | compile s | step s | images/s | TFLOP/step | MFU | XLA temp GiB "
        "| peak GiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in setups:
        for variant in args.variants.split(","):
            r = measure(name, args.batch_size, args.steps, variant)
            mfu = "" if args.peak_tflops is None else f"{r['tflops_per_step'] / r['step_s'] / args.peak_tflops:.1%}"
            print(
                f"| {r['setup']} | {r['variant']} | {r['params'] / 1e6:.2f}M | {r['batch']} | {r['compile_s']:.1f} "
                f"| {r['step_s']:.3f} | {r['images_per_s']:.1f} | {r['tflops_per_step']:.3f} | {mfu} "
                f"| {r['temp_gib']:.2f} | {r['peak_gib']:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
