"""Training throughput (images/s) of the train step and of the distillation update, per config, on the default
JAX device.

python bench/train_step.py                 # digits, cifar10 at ch=32, cifar10 at full width
python bench/train_step.py --quick         # digits only
python bench/train_step.py --peak-tflops=989 --setups=cifar10   # adds model-FLOPs utilization
python bench/train_step.py --setups=cifar10 --variants=float32,bfloat16,bfloat16+remat,float32+accum4
python bench/train_step.py --setups=cifar10 --kinds=teacher,distill --variants=bfloat16
python bench/train_step.py --setups=imagenet64 --variants=bfloat16,bfloat16+remat --batch-size=fit --memory-gib=80

Times ``--steps`` steps after one warm-up (compile) step, on one synthetic
batch already on the device, so the figure is the step alone, not the input.
FLOPs per step come from XLA's cost analysis of the lowered (not yet
optimized) step, which counts every convolution on every backend. Memory:
XLA's temporary buffers of the compiled step (activations and scratch), and
on a GPU the device's peak bytes in use after the timed steps.

A variant is ``float32`` or ``bfloat16`` compute (``config.model.dtype``),
optionally ``+remat`` (``config.model.remat``) and ``+accumK`` (``K``
micro-batches per update, ``config.train.grad_accum_steps``). A kind is
``teacher`` (the config's training step) or ``distill`` (one progressive
distillation update: two DDIM evaluations of the frozen teacher, the
student's forward and backward, Adam and the EMA, in the same train step;
the teacher's forward runs in the variant's compute dtype and is never
differentiated). A ``distill`` row after a ``teacher`` row of the same setup
and variant reports its cost per image as a multiple of that step's.

``--batch-size=fit`` finds the largest per-device batch whose step fits the
device memory (``--memory-gib``, default the device's own limit): XLA's
memory analysis of the step (state and temporary buffers) compiled at
``--fit-from`` and twice that many examples per device gives a line in the
batch; the predicted batch is compiled to check it (shrunk in proportion
while it needs too much), then run, shrinking it by 10% on an out-of-memory
error. Compiling allocates nothing on the device, so a limit larger than
the device's can be asked for. The checked batch is compiled again to run
it: set ``JAX_COMPILATION_CACHE_DIR`` (bench/accelerator.sh does) and that
second compile is a cache hit.
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
from pdist.distillation import DISTILLERS  # noqa: E402
from pdist.distillation.rounds import Round  # noqa: E402
from pdist.runtime import mesh as mesh_lib  # noqa: E402
from pdist.runtime import step as step_lib  # noqa: E402
from pdist.spec import ModelSpec  # noqa: E402

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs")

SETUPS = {
    "digits": ("digits", {}),
    "cifar10_ch32": ("cifar10", {"ch": 32}),
    "cifar10": ("cifar10", {}),
    "imagenet64": ("imagenet64", {}),
}
KINDS = ("teacher", "distill")


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


def setup_config(name: str, variant: str, batch_size: int | None):
    config_name, model_overrides = SETUPS[name]
    config = from_file(os.path.join(CONFIGS, f"{config_name}.py"))
    for k, v in model_overrides.items():
        config.model[k] = v
    apply_variant(config, variant)
    config.train.batch_size = batch_size or config.train.batch_size
    return config


class Bench:
    """The step of one (setup, variant, kind) at one batch size, jitted over the mesh, and its synthetic batch."""

    def __init__(self, config, kind: str):
        self.config = config
        self.mesh = mesh_lib.data_mesh()
        spec = ModelSpec.of(config)
        init_fn, self.optimizer = build.state_init(config, spec)
        if kind == "teacher":
            loss, self.abstract_args = build.loss(config, spec), ()
        else:
            # A middle round of the config's own ladder; the update's cost does not depend on which.
            steps = config.sample.num_steps
            student = ModelSpec.of(DISTILLERS[config.distill.method].student(config))  # its network
            loss = build.distillation_loss(student, config, Round(1, steps // 2, steps, config.train.num_steps))
            self.abstract_args = (jax.eval_shape(init_fn).params,)
        self.init_fn = init_fn
        step = step_lib.make_train_step(
            loss, self.optimizer, ema_decay=config.train.ema_decay, accum_steps=config.train.grad_accum_steps
        )
        self.step = step_lib.compile_step(step, self.mesh)

    def batch(self):
        config, size = self.config, self.config.train.batch_size
        rng = np.random.default_rng(0)
        local = {
            "image": rng.uniform(-1, 1, (size, *ModelSpec.of(config).image_shape)).astype(np.float32),
            "label": rng.integers(0, max(config.data.num_classes, 1), size).astype(np.int32),
        }
        return mesh_lib.global_batch(local, self.mesh)

    def lower(self):
        """The step lowered on abstract arguments: nothing is allocated on the device."""
        state = step_lib.abstract_state(self.init_fn, self.mesh)
        repl, rows = mesh_lib.replicated(self.mesh), mesh_lib.batch_sharded(self.mesh)
        args = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=repl), self.abstract_args)
        size = self.config.train.batch_size
        batch = {
            "image": jax.ShapeDtypeStruct((size, *ModelSpec.of(self.config).image_shape), np.float32, sharding=rows),
            "label": jax.ShapeDtypeStruct((size,), np.int32, sharding=rows),
        }
        return self.step.lower(state, batch, jax.random.key(0), self.optimizer.args, *args)


def memory_bytes(compiled) -> tuple[float, float]:
    """(fixed, temporary) bytes of a compiled step: its arguments (the state, donated into its outputs) and
    XLA's temporary buffers (activations and scratch, which grow with the batch)."""
    m = compiled.memory_analysis()
    if m is None:
        return float("nan"), float("nan")
    fixed = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
    return float(fixed), float(m.temp_size_in_bytes)


def fit_batch(name: str, variant: str, kind: str, memory_gib: float | None, fit_from: int) -> tuple[int, float]:
    """The largest per-device batch (a multiple of 8) whose step needs at most 95% of ``memory_gib`` (default:
    the device's limit) by XLA's memory analysis, and the limit in GiB. The need is fitted as a line in the
    batch through two compiles (``fit_from`` and twice that per device), then checked by compiling the
    predicted batch, which is shrunk in proportion while it needs too much. Nothing is allocated."""
    limit = memory_gib * 2**30 if memory_gib else (jax.devices()[0].memory_stats() or {}).get("bytes_limit")
    if not limit:
        raise SystemExit("This device reports no memory limit; pass --memory-gib to fit a batch to.")
    budget, devices = 0.95 * limit, jax.device_count()

    def need(per_device: int) -> float:
        config = setup_config(name, variant, per_device * devices)
        return sum(memory_bytes(Bench(config, kind).lower().compile()))

    small, large = fit_from, 2 * fit_from
    at_small, at_large = need(small), need(large)
    per_example = (at_large - at_small) / (large - small)
    predicted = max(8, int(large + (budget - at_large) / per_example) // 8 * 8)
    for _ in range(4):
        needed = need(predicted)
        if needed <= budget or predicted == 8:
            break
        predicted = max(8, int(predicted * budget / needed) // 8 * 8)
    return predicted, limit / 2**30


def measure(name: str, batch_size: int | None, steps: int, variant: str = "float32", kind: str = "teacher") -> dict:
    config = setup_config(name, variant, batch_size)
    bench = Bench(config, kind)
    state = step_lib.create_state(bench.init_fn, bench.mesh)
    args = (jax.tree.map(lambda a: a.copy(), state.params),) if kind == "distill" else ()
    params = sum(x.size for x in jax.tree.leaves(state.params))
    batch, key = bench.batch(), jax.random.key(0)
    t0 = time.perf_counter()
    lowered = bench.step.lower(state, batch, key, bench.optimizer.args, *args)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    temp_gib = memory_bytes(compiled)[1] / 2**30
    # FLOPs of the step as written (unoptimized HLO): the same on every backend. The compiled module's count
    # misses the convolutions that the GPU backend hands to cuDNN as custom calls.
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
    state, metrics = compiled(state, batch, key, bench.optimizer.args, *args)
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, batch, key, bench.optimizer.args, *args)
    jax.block_until_ready(metrics)
    sec = (time.perf_counter() - t0) / steps
    stats = jax.devices()[0].memory_stats() or {}
    return {
        "setup": name,
        "variant": variant,
        "kind": kind,
        "temp_gib": temp_gib,
        "peak_gib": stats.get("peak_bytes_in_use", float("nan")) / 2**30,
        "params": params,
        "batch": config.train.batch_size,
        "compile_s": compile_s,
        "step_s": sec,
        "images_per_s": config.train.batch_size / sec,
        "tflops_per_step": flops / 1e12,
    }


def out_of_memory(error: Exception) -> bool:
    return "RESOURCE_EXHAUSTED" in str(error) or "Out of memory" in str(error)


def measure_fitted(name, steps, variant, kind, memory_gib, fit_from) -> dict:
    per_device, limit_gib = fit_batch(name, variant, kind, memory_gib, fit_from)
    for _ in range(4):
        try:
            row = measure(name, per_device * jax.device_count(), steps, variant, kind)
            return {**row, "fit": f"fits {limit_gib:.3g} GiB"}
        except jax.errors.JaxRuntimeError as e:
            if not out_of_memory(e):
                raise
            per_device = max(1, int(per_device * 0.9) // 8 * 8)
    raise SystemExit(f"{name} {variant}: no batch fitted after shrinking to {per_device} per device.")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setups", default="digits,cifar10_ch32,cifar10")
    parser.add_argument("--quick", action="store_true", help="digits only")
    parser.add_argument("--batch-size", default=None, help="global batch; default the config's; fit: the largest")
    parser.add_argument("--memory-gib", type=float, default=None, help="with --batch-size=fit: the memory to fit")
    parser.add_argument("--fit-from", type=int, default=32, help="with --batch-size=fit: the batch to extrapolate")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument(
        "--variants", default="float32", help="comma-separated, e.g. float32,bfloat16+remat,float32+accum4"
    )
    parser.add_argument("--kinds", default="teacher", help="comma-separated: teacher, distill")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak, for model-FLOPs utilization")
    args = parser.parse_args()
    setups = ["digits"] if args.quick else args.setups.split(",")
    kinds = args.kinds.split(",")
    for name in setups:
        if name not in SETUPS:
            raise SystemExit(f"Unknown setup {name!r}; choose from {', '.join(SETUPS)}.")
    for kind in kinds:
        if kind not in KINDS:
            raise SystemExit(f"Unknown kind {kind!r}; choose from {', '.join(KINDS)}.")
    fit = args.batch_size == "fit"
    batch_size = None if fit or args.batch_size is None else int(args.batch_size)
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, jax {jax.__version__}")
    print(
        "| setup | kind | variant | params | batch | compile s | step s | images/s | x teacher step | TFLOP/step "
        "| MFU | XLA temp GiB | peak GiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in setups:
        for variant in args.variants.split(","):
            teacher_rate = None  # the teacher step's images/s: a fitted distill row may have another batch
            for kind in kinds:
                if fit:
                    r = measure_fitted(name, args.steps, variant, kind, args.memory_gib, args.fit_from)
                else:
                    r = measure(name, batch_size, args.steps, variant, kind)
                teacher_rate = r["images_per_s"] if kind == "teacher" else teacher_rate
                ratio = f"{teacher_rate / r['images_per_s']:.2f}" if kind != "teacher" and teacher_rate else ""
                tflops = r["tflops_per_step"]
                mfu = "" if args.peak_tflops is None else f"{tflops / r['step_s'] / args.peak_tflops:.1%}"
                batch = f"{r['batch']} ({r['fit']})" if fit else r["batch"]
                print(
                    f"| {r['setup']} | {kind} | {r['variant']} | {r['params'] / 1e6:.2f}M | {batch} "
                    f"| {r['compile_s']:.1f} | {r['step_s']:.3f} | {r['images_per_s']:.1f} | {ratio} | {tflops:.3f} "
                    f"| {mfu} | {r['temp_gib']:.2f} | {r['peak_gib']:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
