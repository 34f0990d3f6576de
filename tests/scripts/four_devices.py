"""Three train steps on 1 device and on 4 forced CPU devices: the same parameters, one trace per mesh."""

import json
import os
import sys

import chex
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from helpers import config_file  # noqa: E402

from pdist import build, losses  # noqa: E402
from pdist.runtime import mesh as mesh_lib  # noqa: E402
from pdist.runtime import step as step_lib  # noqa: E402
from pdist.spec import ModelSpec  # noqa: E402

config = config_file("digits")
config.model.ch = 8
config.model.head_dim = 16
config.model.dropout = 0.0
rng = np.random.default_rng(0)
batch = {
    "image": rng.uniform(-1, 1, (16, 8, 8, 1)).astype(np.float32),
    "label": rng.integers(0, 10, 16).astype(np.int32),
}
results = {}
for n in (1, 4):
    chex.clear_trace_counter()  # chex counts per function code; each mesh builds its own loss
    mesh = mesh_lib.data_mesh(jax.devices()[:n])
    init_fn, optimizer = build.state_init(config, ModelSpec.of(config))
    state = step_lib.create_state(init_fn, mesh)
    loss = build.loss(config, ModelSpec.of(config))
    traced = losses.Loss(chex.assert_max_traces(loss.fn, n=1), loss.draw)  # raises on a second trace
    step = step_lib.compile_step(step_lib.make_train_step(traced, optimizer, ema_decay=0.9), mesh)
    for _ in range(3):
        state, _ = step(state, mesh_lib.global_batch(batch, mesh), jax.random.key(1), optimizer.args)
    results[n] = [np.asarray(a) for a in jax.tree.leaves(state.params)]
    assert len(state.params["Conv_0"]["kernel"].sharding.device_set) == n
err = max(float(np.max(np.abs(a - b))) for a, b in zip(results[1], results[4], strict=True))
print(json.dumps({"devices": jax.device_count(), "max_err": err}))
