"""How long tracing the network takes: pdist's apply (the parameter tree checked once, pdist/models/checked_apply.py)
against Flax's own apply (each parameter's shape re-derived from its initializer), for the configs' networks.

    python bench/trace_time.py [--configs digits,cifar10,imagenet64] [--repeats 7] [--out docs/trace_time.json]

Each entry traces the forward pass at batch 2 (``jax.make_jaxpr`` of a fresh function, so nothing is reused) and
the train step's ``lower`` (trace and lowering to MLIR, which every compiled program pays, persistent cache hit or
not), alternating the two ways, and reports the median seconds. Tracing is Python: the figures are the CPU's.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pdist import teacher  # noqa: E402
from pdist.config import from_file  # noqa: E402
from pdist.models import checked_apply  # noqa: E402
from pdist.runtime import mesh as mesh_lib  # noqa: E402
from pdist.runtime import step as step_lib  # noqa: E402
from pdist.spec import ModelSpec  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def _timed(fn) -> float:
    began = time.perf_counter()
    fn()
    return time.perf_counter() - began


def measure(name: str, repeats: int) -> dict:
    config = from_file(os.path.join(ROOT, "configs", f"{name}.py"))
    config.train.batch_size = 2
    spec = ModelSpec.of(config)
    params = spec.param_shapes()
    shape = (2, config.data.image_size, config.data.image_size, config.data.channels)
    z, t = jax.ShapeDtypeStruct(shape, jnp.float32), jax.ShapeDtypeStruct((2,), jnp.float32)
    label = jax.ShapeDtypeStruct((2,), jnp.int32) if spec.num_classes else None
    phase = teacher.phase_of(config, spec, "/tmp/unused")
    mesh = mesh_lib.data_mesh(jax.devices()[:1])
    step = step_lib.make_train_step(phase.loss, phase.optimizer, ema_decay=config.train.ema_decay)
    state = jax.eval_shape(phase.init_fn)
    batch = {"image": z, "label": label} if label is not None else {"image": z}
    times = {"forward": {"pdist": [], "flax": []}, "train_step_lower": {"pdist": [], "flax": []}}
    for _ in range(repeats):
        for way in ("pdist", "flax"):
            forward = _forward(spec, pdist_apply=way == "pdist")
            times["forward"][way].append(_timed(functools.partial(jax.make_jaxpr(forward), params, z, t, label)))
            compiled = step_lib.compile_step(_fresh(step, shortcut=way == "pdist"), mesh)
            lower = functools.partial(compiled.lower, state, batch, jax.random.key(0), phase.optimizer.args)
            times["train_step_lower"][way].append(_timed(lower))
    return {
        "config": name,
        "parameters": len(jax.tree.leaves(params)),
        **{
            f"{kind}_{way}_s": round(statistics.median(v), 4) for kind, ways in times.items() for way, v in ways.items()
        },
    }


def _forward(spec, pdist_apply: bool):
    """A new function (nothing cached) of the forward pass: pdist's apply, or Flax's (each parameter's initializer
    traced again)."""
    if pdist_apply:
        return lambda p, z, t, y: spec.apply(p, z, t, y, None)
    return lambda p, z, t, y: spec.network.apply(
        {"params": p}, z, spec.noise_input(t), y if spec.num_classes else None, None
    )


def _fresh(step, shortcut: bool):
    """``step`` as a new function (JAX's trace cache does not reuse an earlier trace); without ``shortcut``, with
    Flax's per-parameter check inside pdist's apply too."""

    def run(*args):
        original = checked_apply._SHORTCUT
        checked_apply._SHORTCUT = shortcut and original
        try:
            return step(*args)
        finally:
            checked_apply._SHORTCUT = original

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="digits,cifar10,imagenet64")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rows = [measure(name, args.repeats) for name in args.configs.split(",")]
    print("| config | parameters | forward trace, pdist s | Flax s | train step lower, pdist s | Flax s |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['config']} | {r['parameters']} | {r['forward_pdist_s']:.3f} | {r['forward_flax_s']:.3f} | "
              f"{r['train_step_lower_pdist_s']:.3f} | {r['train_step_lower_flax_s']:.3f} |")  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"jax": jax.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
