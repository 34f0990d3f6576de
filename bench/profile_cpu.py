"""Where the compiled forward and train step spend their time: a ``jax.profiler`` trace of each, summed by XLA
operation (each fusion, convolution, dot or copy of the optimized program is one event of XLA's CPU runtime).

    python bench/profile_cpu.py [--layout cifar10] [--batch 32] [--calls 5] [--top 15] [--out docs/profile_cpu.json]

The network is bench/vs_pytorch_cpu.py's layout with random weights; the train step is pdist's own
(bench/train_step.py's ``Bench``). Each program runs once to compile, then ``--calls`` times inside the trace; the
table gives each operation kind's share of the time the runtime spent in operations (a kind: the operation's name
without its number, e.g. ``convolution``, ``loop_add_fusion``), its milliseconds per call and its count per call.
The trace is read with TensorFlow's copy of the XSpace protocol buffer (TensorFlow is already a pdist dependency).
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import sys
import tempfile

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from bench.vs_pytorch_cpu import PdistSide, layout_config, write_workdir  # noqa: E402
from pdist.spec import ModelSpec  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def op_times(trace_dir: str) -> dict[str, list[float]]:
    """Every XLA operation event in the trace: name -> durations in ms."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    (path,) = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    out = collections.defaultdict(list)
    for plane in space.planes:
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                out[names.get(event.metadata_id, "?")].append(event.duration_ps / 1e9)
    return out


def kind(name: str) -> str:
    return re.sub(r"[._]\d+$", "", name.split(":")[0])


def profile(fn, calls: int, trace_dir: str) -> dict:
    jax.block_until_ready(fn())  # compile
    with jax.profiler.trace(trace_dir):
        for _ in range(calls):
            jax.block_until_ready(fn())
    events = op_times(trace_dir)
    # XLA's operations: the events named like HLO instructions (fusions, convolutions, ...), not Python or the
    # runtime's own spans
    hlo = {n: d for n, d in events.items() if re.match(r"^[a-z_\-]+(\.\d+)?$", n) and not n.startswith("thunk")}
    kinds = collections.defaultdict(lambda: [0.0, 0])
    for name, durations in hlo.items():
        kinds[kind(name)][0] += sum(durations)
        kinds[kind(name)][1] += len(durations)
    total = sum(v[0] for v in kinds.values())
    rows = sorted(kinds.items(), key=lambda kv: -kv[1][0])
    return {
        "ms per call in operations": total / calls,
        "kinds": [
            {"kind": k, "share": v[0] / total, "ms per call": v[0] / calls, "count per call": v[1] / calls}
            for k, v in rows
        ],
        "spans": {n: sum(d) / calls for n, d in sorted(events.items(), key=lambda kv: -sum(kv[1]))[:10]},
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--layout", default="cifar10")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "profile_cpu.json"))
    args = parser.parse_args()
    config = layout_config(args.layout)
    spec = ModelSpec.of(config)
    result = {"layout": args.layout, "batch": args.batch, "jax": jax.__version__, "programs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        params = write_workdir(config, os.path.join(tmp, "w"))
        side = PdistSide(config, params)
        x = np.asarray(jax.random.normal(jax.random.key(0), (args.batch, *spec.image_shape)), np.float32)
        for name in ("forward", "train"):
            fn = side.case(name, x, 0.6)
            result["programs"][name] = profile(fn, args.calls, os.path.join(tmp, name))
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    for name, p in result["programs"].items():
        print(
            f"\n{args.layout} {name}, batch {args.batch}: {p['ms per call in operations']:.1f} ms per call in XLA ops"
        )
        print("| operation kind | share | ms per call | count per call |\n|---|---:|---:|---:|")
        for r in p["kinds"][: args.top]:
            print(f"| {r['kind']} | {100 * r['share']:.1f}% | {r['ms per call']:.2f} | {r['count per call']:.0f} |")


if __name__ == "__main__":
    sys.exit(main())
