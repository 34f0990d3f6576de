"""The DPM-OT assignment and solve with the targets split over 4 forced CPU devices: the one-device answers."""

import json

import jax
import numpy as np

from pdist import ot

k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
x, y = jax.random.normal(k1, (500, 16)), np.asarray(jax.random.normal(k2, (103, 16)))  # 103: padded to 104
h = np.asarray(jax.random.normal(k3, (103,)))
mesh = ot.target_mesh()
ys = ot.shard_targets(y, mesh)
one = np.asarray(ot.assign(x, y, h, chunk=16))
split = np.asarray(ot.assign(x, ys, h, chunk=16, mesh=mesh))
h_tied = h.copy()
h_tied[52] = h[51]
tied = np.concatenate([y[:52], y[51:52], y[53:]])  # rows 51 and 52 equal, on devices 1 and 2: a tie
ties = np.asarray(ot.assign(jax.random.normal(k1, (5000, 16)), ot.shard_targets(tied, mesh), h_tied, mesh=mesh))
settings = dict(samples=2_000, batch=1_000, tol=0.0, max_steps=5)
alone = ot.solve(y, jax.random.key(4), **settings)
sharded = ot.solve(y, jax.random.key(4), mesh=mesh, **settings)
print(json.dumps({
    "devices": mesh.size,
    "rows_per_device": [s.data.shape[0] for s in ys.addressable_shards],
    "assign_mismatch": int(np.sum(one != split)),
    "assign_rows": sorted(set(one.tolist()))[-1],
    "ties_to_51": int(np.sum(ties == 51)),
    "ties_to_52": int(np.sum(ties == 52)),
    "solve_max_diff": float(np.max(np.abs(alone.potentials - sharded.potentials))),
    "solve_history_equal": alone.history == sharded.history,
}))  # fmt: skip
