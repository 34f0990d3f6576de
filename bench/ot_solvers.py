"""pdist's semi-discrete OT solver (the DPM-OT reference's Adam descent) against OTT-JAX's SemidiscreteSolver.

Both solve the same dual from the normal prior to the uniform measure on N targets, at equal Monte-Carlo
budget per step and the same number of steps; each result is scored by pdist's ``cell_masses`` on fresh prior
samples (the largest |mass - 1/N| times N, empty cells) and, on the 2-D product grid, by the share of points
assigned as the product of the 1-D quantile maps (the exact answer). OTT-JAX's squared-Euclidean potential
g converts to pdist's Brenier form as h = (g - |y|^2) / 2; its default potential EMA (0.99) is kept (with 0
its returned potential stays at the initial zeros). Both start from h = -|y|^2 / 2 in effect (g = 0, the
Voronoi partition) for OTT, h = 0 for pdist; on the symmetric grid the Voronoi partition is already close to
the answer, so the digits problem is the one that tells the solvers apart. Needs ``pip install ott-jax``.

    python bench/ot_solvers.py --data-dir ~/tensorflow_datasets --teacher runs/digits
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy.stats import norm

from pdist import ot


def score(targets, h, grid: bool) -> dict:
    targets, h = jnp.asarray(targets, jnp.float32), jnp.asarray(h, jnp.float32)
    masses = np.asarray(
        ot.cell_masses(jax.random.key(99), targets, h, source=ot.normal_source, batch=50_000, num_batches=20)
    )
    out = {"max_mass_error_xN": float(np.max(np.abs(masses * len(targets) - 1))), "empty": int(np.sum(masses == 0))}
    if grid:
        x = jax.random.normal(jax.random.key(98), (1_000_000, 2))
        q = np.searchsorted(norm.ppf(np.arange(1, 4) / 4), np.asarray(x))
        out["agreement"] = float(np.mean(np.asarray(ot.assign(x, targets, h)) == 4 * q[:, 0] + q[:, 1]))
    return out


def with_pdist(targets, steps: int, lr: float) -> tuple[np.ndarray, float, int]:
    began = time.time()
    sol = ot.solve(targets, jax.random.key(0), lr=lr, max_steps=steps, tol=0.0)  # run all steps
    return sol.potentials, time.time() - began, sol.steps


def refined(targets, steps: int, samples: int, max_steps: int) -> tuple[np.ndarray, float, int, dict]:
    """The reference's solve for ``steps`` steps, then refined from its potentials with ``samples`` points a
    step (Adam at 0.01, no doubling) until the reference's stopping rule holds (gradient norm below 8e-4, no
    empty cell) or ``max_steps``: a converged solve, with the gradient norm's Monte-Carlo floor beside it."""
    began = time.time()
    first = ot.solve(targets, jax.random.key(0), lr=0.1, max_steps=steps, tol=0.0)
    sol = ot.solve(targets, jax.random.key(1), lr=0.01, samples=samples, batch=min(samples, 2**16), tol=8e-4,
                   max_steps=max_steps, patience=max_steps, init=first.potentials)  # fmt: skip
    info = {"converged": sol.converged, "grad_norm": sol.grad_norm, "floor": ot.noise_floor(len(targets), samples),
            "refine_steps": sol.steps, "first_grad_norm": first.grad_norm}  # fmt: skip
    print(json.dumps({"refine_history": sol.history}), flush=True)
    return sol.potentials, time.time() - began, steps + sol.steps, info


def with_ott(targets, steps: int, lr: float, epsilon: float, relative: bool = False) -> tuple[np.ndarray, float, int]:
    """OTT-JAX's solver; ``relative``: ``epsilon`` is a fraction of the mean cost (entropic, epsilon > 0)."""
    from ott.geometry import semidiscrete_pointcloud as sdpc
    from ott.problems.linear import semidiscrete_linear_problem as sdlp
    from ott.solvers.linear import semidiscrete

    y = jnp.asarray(targets, jnp.float32)
    geom = sdpc.SemidiscretePointCloud(
        lambda rng, shape, dtype=None: jax.random.normal(rng, shape), y, epsilon=epsilon,
        relative_epsilon="mean" if relative else None,
    )  # fmt: skip
    solver = semidiscrete.SemidiscreteSolver(
        num_iterations=steps, batch_size=10 * len(y), optimizer=optax.adam(lr), error_eval_every=steps,
        threshold=0.0,
    )  # fmt: skip
    began = time.time()
    out = jax.block_until_ready(solver(jax.random.key(0), sdlp.SemidiscreteLinearProblem(geom)))
    g = np.asarray(out.g)
    h = (g - np.sum(np.asarray(y) ** 2, axis=1)) / 2.0  # argmin |x - y|^2 - g  =  argmax <x, y> + h
    return h, time.time() - began, int(out.it) if out.it is not None else steps


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--refine-samples", type=int, default=2**22, help="points a step of the refined solve")
    parser.add_argument("--refine-steps", type=int, default=60, help="at most, for the refined solve; 0: none")
    parser.add_argument("--out", default="docs/ot_solvers")
    args = parser.parse_args()

    g = np.linspace(-1.0, 1.0, 4)
    problems = [("2-D product grid 4x4 (N = 16)", np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2), True)]
    if args.teacher:
        import pdist
        from pdist.data import pipeline

        model = pdist.load(args.teacher)
        train = pipeline.load_split("digits", "train", args.data_dir, 8, 1)["image"]
        y = ot.targets_from(model.schedule, train, jax.random.key(0), 0.4)
        problems.append((f"digits train latents at t' = 0.4 (N = {len(y)}, D = {y.shape[1]})", y, False))
    rows = []
    for name, y, grid in problems:
        for solver, run in (  # OTT's g moves h by half its step (and optax's Adam corrects the bias; pdist's not)
            ("pdist (the reference's Adam, no bias correction, lr 0.1)", lambda y=y: with_pdist(y, args.steps, 0.1)),
            ("pdist, lr 0.05", lambda y=y: with_pdist(y, args.steps, 0.05)),
            ("OTT-JAX SemidiscreteSolver, epsilon 0, Adam lr 0.2", lambda y=y: with_ott(y, args.steps, 0.2, 0.0)),
            ("OTT-JAX SemidiscreteSolver, epsilon 0, Adam lr 0.1", lambda y=y: with_ott(y, args.steps, 0.1, 0.0)),
            ("OTT-JAX SemidiscreteSolver, epsilon 0, Adam lr 0.01", lambda y=y: with_ott(y, args.steps, 0.01, 0.0)),
            *(  # entropic: the dual of the regularized problem, its potentials then used for the hard map
                (
                    f"OTT-JAX entropic, epsilon {e:g} x mean cost, Adam lr 0.2",
                    lambda y=y, e=e: with_ott(y, args.steps, 0.2, e, relative=True),
                )
                for e in (1e-3, 1e-2)
            ),
        ):
            h, seconds, steps = run()
            row = {"problem": name, "solver": solver, "steps": steps, "seconds": seconds, **score(y, h, grid)}
            rows.append(row)
            print(json.dumps(row), flush=True)
        if args.refine_steps and not grid:
            h, seconds, steps, info = refined(y, args.steps, args.refine_samples, args.refine_steps)
            solver = f"pdist, then refined at {args.refine_samples:,} points a step, Adam lr 0.01, to 8e-4"
            row = {"problem": name, "solver": solver, "steps": steps, "seconds": seconds, **info, **score(y, h, grid)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    meta = f"{platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, {time.strftime('%Y-%m-%d')}"
    with open(args.out + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    lines = [f"# Semi-discrete OT solvers ({meta})", "", "| problem | solver | steps | seconds | max mass error x N | "
             "empty cells | product-map agreement |", "|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        agree = f"{r['agreement']:.4f}" if "agreement" in r else ""
        lines.append(
            f"| {r['problem']} | {r['solver']} | {r['steps']} | {r['seconds']:.1f} | {r['max_mass_error_xN']:.3f} | "
            f"{r['empty']} | {agree} |"
        )
    for r in (r for r in rows if "converged" in r):
        lines += [
            "",
            f"Refined solve on {r['problem']}: the first solve's last gradient norm {r['first_grad_norm']:.2e}; "
            f"refined for {r['refine_steps']} steps, gradient norm {r['grad_norm']:.2e} (Monte-Carlo floor "
            f"{r['floor']:.2e}), converged by the reference's rule: {r['converged']}.",
        ]
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
