"""pdist's UNet against diffusers' UNet2DModel holding the same weights: forward, DDIM sampling and the train step,
timed in one run, alternating between the two, on whatever device each side sees (the CPU here).

    python bench/vs_pytorch_cpu.py --torch_python /path/to/venv/bin/python [--layouts digits cifar10]
        [--rounds 3] [--threads 2]      # prints the table and writes docs/vs_pytorch_cpu.json

``--torch_python``: a Python with torch and diffusers (pdist never imports PyTorch). Each layout is a pdist
network with random weights (the digits config's diffusion: v-parameterization on the continuous logSNR cosine,
"snr_plus_one" weighting, Adam, EMA 0.99) exported by ``pdist.interop.exporter`` to a diffusers folder, which the
PyTorch side loads as its ``UNet2DModel``; the outputs of both on the same input are compared before anything is
timed (the largest difference relative to the largest value is in the table). Layouts:

* ``digits``: 8x8x1, channels 32/64, one residual block a level, attention at 4x4 (the digits config's network
  at twice its width: diffusers' GroupNorm needs multiples of 32 channels);
* ``cifar10``: 32x32x3, channels 64/128/128, two residual blocks a level, attention at 16x16 with heads of 64
  channels (the issue's layout; the CIFAR-10 config's own network resamples in residual blocks, which the
  exporter does not write yet).

Cases: one forward pass; DDIM (eta 0) with 10 and 50 steps from the same noise on the same grid (the PyTorch
side's loop is given pdist's grid: the network's time input, alpha and sigma at each step, so both run the same
arithmetic; their samples are compared too); the train step (pdist's own: loss, gradients, global-norm clipping,
Adam, the EMA; PyTorch: the v-loss at random times, backward, ``clip_grad_norm_``, ``Adam(foreach)``, an EMA by
``_foreach_lerp_``). Each figure is a median over ``--rounds`` rounds; in each round every case runs on pdist's
side and then on PyTorch's, each as many calls as fill ``--min_seconds``. "First call" is pdist's compile and
first run, and PyTorch's first (warm-up) call.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from bench.train_step import Bench  # noqa: E402
from pdist import build, samplers, schedules  # noqa: E402
from pdist.config import from_file  # noqa: E402
from pdist.interop import exporter  # noqa: E402
from pdist.runtime import mesh as mesh_lib  # noqa: E402
from pdist.runtime import step as step_lib  # noqa: E402
from pdist.runtime.checkpoint import save_once  # noqa: E402
from pdist.spec import ModelSpec  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")

LAYOUTS = {
    "digits": dict(image_size=8, channels=1, ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                   head_dim=32),
    "cifar10": dict(image_size=32, channels=3, ch=64, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
                    head_dim=64),
}  # fmt: skip
# (case, batches) per layout: DDIM at the batches where a round stays under a few minutes on 2 cores
CASES = {
    "digits": [("forward", (8, 32, 128)), ("ddim10", (8, 32, 128)), ("ddim50", (8, 32)), ("train", (8, 32, 128))],
    "cifar10": [("forward", (8, 32, 128)), ("ddim10", (8, 32)), ("ddim50", (8,)), ("train", (8, 32, 128))],
}

TORCH_SIDE = r"""
import json, os, sys, time
import numpy as np, torch
from diffusers import UNet2DModel
torch.set_num_threads(int(sys.argv[1]))
nets = {}
def respond(obj):
    sys.stdout.write(json.dumps(obj) + "\n"); sys.stdout.flush()
def timed(fn, min_seconds):
    calls, began = 0, time.perf_counter()
    while True:
        fn(); calls += 1
        spent = time.perf_counter() - began
        if spent >= min_seconds:
            return spent / calls
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "load":
        unet = UNet2DModel.from_pretrained(os.path.join(cmd["folder"], "unet")).float()
        a = np.load(cmd["inputs"])
        with torch.no_grad():
            out = unet.eval()(torch.from_numpy(a["x"][:8]), torch.from_numpy(a["timesteps"])).sample.numpy()
        opt = torch.optim.Adam(unet.parameters(), lr=1e-4, foreach=True)
        ema = [p.detach().clone() for p in unet.parameters()]
        nets[cmd["layout"]] = (unet, opt, ema, a)
        np.save(cmd["out"], out)
        respond({"parameters": sum(p.numel() for p in unet.parameters()), "torch": torch.__version__})
        continue
    unet, opt, ema, a = nets[cmd["layout"]]
    b, shape = cmd["batch"], tuple(int(s) for s in a["x"].shape[1:])
    x = torch.from_numpy(np.resize(a["x"], (b, *shape)))
    if cmd["op"] == "forward":
        unet.eval()
        t = torch.full((b,), float(a["timesteps"][0]))
        def fn():
            with torch.no_grad():
                unet(x, t).sample
    elif cmd["op"].startswith("ddim"):
        unet.eval()
        n = int(cmd["op"][4:])
        grid = a[f"grid_{n}"]  # rows: network time input, alpha_t, sigma_t, alpha_s, sigma_s
        def fn():
            z = x
            with torch.no_grad():
                for tin, at, st, as_, ss in grid:
                    v = unet(z, torch.full((b,), float(tin))).sample
                    xh, eh = at * z - st * v, st * z + at * v
                    z = as_ * xh + ss * eh
            fn.z = z
    else:
        unet.train()
        def fn():
            data = x
            t = torch.rand(b)
            alpha = torch.cos(0.5 * torch.pi * t)[:, None, None, None]
            sigma = torch.sin(0.5 * torch.pi * t)[:, None, None, None]
            noise = torch.randn_like(data)
            z = alpha * data + sigma * noise
            v = alpha * noise - sigma * data
            loss = ((unet(z, 1000 * t).sample - v) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0, foreach=True)
            opt.step()
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach() for p in unet.parameters()], 0.01)
    began = time.perf_counter(); fn(); first = time.perf_counter() - began
    result = {"first": first, "per_call": timed(fn, cmd["min_seconds"])}
    if cmd["op"].startswith("ddim"):
        np.save(cmd["out"], fn.z.numpy())
    respond(result)
"""


def layout_config(name: str):
    config = from_file(os.path.join(ROOT, "configs", "digits.py"))
    spec = dict(LAYOUTS[name])
    config.data.image_size, config.data.channels = spec.pop("image_size"), spec.pop("channels")
    config.model.update(spec)
    return config


def write_workdir(config, path: str):
    """A workdir holding ``config``'s network with random weights (every layer, the zero-initialized ones too)."""
    init_fn, _ = build.state_init(config, ModelSpec.of(config))
    state = jax.jit(init_fn)()
    flat, unravel = jax.flatten_util.ravel_pytree(state.params)  # one draw for every leaf: one generator compiled
    params = unravel(flat + 0.05 * jax.random.normal(jax.random.key(3), flat.shape))
    state = state.replace(params=params, ema_params=params)
    save_once(os.path.join(path, "checkpoints"), 0, state, {"config": json.loads(config.to_json()), "step": 0,
                                                             "sampling_steps": 8})  # fmt: skip
    return params


def ddim_grid(config, spec, n: int) -> np.ndarray:
    """pdist's DDIM grid of ``n`` steps as rows (network time input, alpha_t, sigma_t, alpha_s, sigma_s)."""
    times = np.asarray(schedules.time_grid(spec.schedule, n, config.sample.grid), np.float64)
    tin = exporter.network_timesteps(config, spec.schedule, times[:-1])
    alpha, sigma = (np.asarray(a, np.float64) for a in spec.schedule.alpha_sigma(jnp.asarray(times, jnp.float32)))
    return np.stack([tin, alpha[:-1], sigma[:-1], alpha[1:], sigma[1:]], axis=1).astype(np.float32)


def timed(fn, min_seconds: float) -> float:
    calls, began = 0, time.perf_counter()
    while True:
        jax.block_until_ready(fn())
        calls += 1
        spent = time.perf_counter() - began
        if spent >= min_seconds:
            return spent / calls


class PdistSide:
    def __init__(self, config, params):
        self.config, self.spec, self.params = config, ModelSpec.of(config), params
        self.apply = jax.jit(lambda p, x, t: self.spec.apply(p, x, t, None, None))
        self.trains = {}

    def case(self, op: str, x: np.ndarray, t: float):
        b = len(x)
        if op == "forward":
            xs, ts = jnp.asarray(x), jnp.full((b,), t, jnp.float32)
            return lambda: self.apply(self.params, xs, ts)
        if op.startswith("ddim"):
            n, noise = int(op[4:]), jnp.asarray(x)
            return lambda: samplers.sample(self.spec.bind(self.params), self.spec.schedule, noise, method="ddim",
                                           num_steps=n, grid=self.config.sample.grid, clip_x=False)  # fmt: skip
        if b not in self.trains:
            config = self.config.copy_and_resolve_references()
            config.train.batch_size = b
            bench = Bench(config, "teacher")
            state = step_lib.create_state(bench.init_fn, bench.mesh)
            repl = mesh_lib.replicated(bench.mesh)  # as the step returns it: one program; copies (it donates)
            params, ema = (jax.device_put(jax.tree.map(jnp.copy, self.params), repl) for _ in range(2))
            self.trains[b] = [bench, state.replace(params=params, ema_params=ema), bench.batch()]
        bench, _, batch = self.trains[b]
        key = jax.random.key(0)

        def step():
            self.trains[b][1], metrics = bench.step(self.trains[b][1], batch, key, bench.optimizer.args)
            return metrics

        return step


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--torch_python", required=True)
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--min_seconds", type=float, default=1.0)
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "vs_pytorch_cpu.json"))
    args = parser.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    torch_side = subprocess.Popen([args.torch_python, "-c", TORCH_SIDE, str(args.threads)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, env=env)  # fmt: skip

    def ask(**cmd):
        torch_side.stdin.write(json.dumps(cmd) + "\n")
        torch_side.stdin.flush()
        line = torch_side.stdout.readline()
        if not line:
            raise SystemExit("The PyTorch side stopped; its error is above.")
        return json.loads(line)

    rows, layouts = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        sides = {}
        for name in args.layouts:
            config = layout_config(name)
            spec = ModelSpec.of(config)
            workdir, folder = os.path.join(tmp, name), os.path.join(tmp, f"{name}_diffusers")
            params = write_workdir(config, workdir)
            exporter.export(workdir, folder)
            x = np.asarray(jax.random.normal(jax.random.key(0), (128, *spec.image_shape)), np.float32)
            t = 0.6
            grids = {f"grid_{n}": ddim_grid(config, spec, n) for n in (10, 50)}
            inputs, out = os.path.join(tmp, f"{name}_inputs.npz"), os.path.join(tmp, f"{name}_out.npy")
            timesteps = exporter.network_timesteps(config, spec.schedule, np.full((8,), t))
            np.savez(inputs, x=np.ascontiguousarray(np.moveaxis(x, -1, 1)), timesteps=timesteps.astype(np.float32),
                     **grids)  # fmt: skip
            made = ask(op="load", layout=name, folder=folder, inputs=inputs, out=out)
            side = PdistSide(config, params)
            ours = np.asarray(side.apply(params, jnp.asarray(x[:8]), jnp.full((8,), t, jnp.float32)))
            theirs = np.moveaxis(np.load(out)[:8], 1, -1)
            diff = float(np.abs(ours - theirs).max() / np.abs(theirs).max())
            assert diff < 1e-4, (name, diff)
            n_params = sum(p.size for p in jax.tree.leaves(params))
            assert n_params == made["parameters"], (n_params, made["parameters"])
            layouts[name] = {"parameters": n_params, "forward difference, relative": diff, **LAYOUTS[name]}
            sides[name] = (side, x, t, inputs)
            print(f"{name}: {n_params:,} parameters each, outputs agree to {diff:.1e} (relative)", flush=True)

        figures = {}
        for r in range(args.rounds):
            for name in args.layouts:
                side, x, t, _ = sides[name]
                for op, batches in CASES[name]:
                    for b in batches:
                        fn = side.case(op, x[:b], t)
                        began = time.perf_counter()
                        result = fn()
                        jax.block_until_ready(result)
                        first = time.perf_counter() - began
                        ours = timed(fn, args.min_seconds)
                        out = os.path.join(tmp, "theirs.npy")
                        theirs = ask(op=op, layout=name, batch=b, min_seconds=args.min_seconds, out=out)
                        entry = figures.setdefault((name, op, b), {"pdist": [], "torch": [], "diff": None})
                        entry["pdist"].append(ours)
                        entry["torch"].append(theirs["per_call"])
                        if r == 0:
                            entry["pdist first"], entry["torch first"] = first, theirs["first"]
                            if op.startswith("ddim"):
                                ref = np.moveaxis(np.load(out), 1, -1)
                                entry["diff"] = float(np.abs(np.asarray(result) - ref).max() / np.abs(ref).max())
                        print(f"round {r + 1} {name} {op} batch {b}: pdist {b / ours:.2f} img/s, torch "
                              f"{b / theirs['per_call']:.2f} img/s", flush=True)  # fmt: skip
    torch_side.stdin.close()
    torch_side.wait()
    for (name, op, b), e in figures.items():
        ours, theirs = float(np.median(e["pdist"])), float(np.median(e["torch"]))
        rows.append({
            "layout": name, "case": op, "batch": b,
            "pdist images/s": b / ours, "torch images/s": b / theirs, "ratio": theirs / ours,
            "pdist first call s": e["pdist first"], "torch first call s": e["torch first"],
            "pdist seconds per call (rounds)": e["pdist"], "torch seconds per call (rounds)": e["torch"],
            "sample difference, relative": e["diff"],
        })  # fmt: skip
    result = {
        "command": "python bench/vs_pytorch_cpu.py --torch_python PY "
        + f"--layouts {' '.join(args.layouts)} --rounds {args.rounds} --threads {args.threads}",
        "date": time.strftime("%Y-%m-%d"),
        "device": jax.devices()[0].device_kind,
        "cores": os.cpu_count(),
        "threads": args.threads,
        "jax": jax.__version__,
        "torch": made["torch"],
        "layouts": layouts,
        "rows": rows,
    }  # fmt: skip
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print(markdown(result))


def markdown(result: dict) -> str:
    lines = [
        "| layout | case | batch | pdist img/s | PyTorch img/s | ratio | pdist first call | PyTorch first call |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['layout']} | {r['case']} | {r['batch']} | {r['pdist images/s']:.1f} | {r['torch images/s']:.1f} "
            f"| {r['ratio']:.2f} | {r['pdist first call s']:.1f} s | {r['torch first call s']:.2f} s |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
