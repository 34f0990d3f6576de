"""The device mesh and how arrays are laid out on it.

One ``data`` axis over every device of every process: parameters and
optimizer state are replicated, batches are split along their first axis.
Each process contributes its local share of the global batch
(:func:`global_batch`). Arrays every process holds whole (sampler noise
seeds, labels, evaluation images) enter with :func:`replicate` or
:func:`shard_rows`; a program's replicated output reads back on every process
with ``np.asarray``.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from pdist.errors import ConfigError

DATA = "data"


def data_mesh(devices=None) -> Mesh:
    return Mesh(np.asarray(jax.devices() if devices is None else devices), (DATA,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA))


def check_batch_size(global_batch: int, mesh: Mesh, accum_steps: int = 1) -> None:
    """One sentence if the global batch does not split evenly over devices, processes and micro-batches."""
    devices, processes = mesh.devices.size, jax.process_count()
    if global_batch % (devices * accum_steps) or global_batch % processes:
        per = f" and {accum_steps} micro-batches (config.train.grad_accum_steps)" if accum_steps > 1 else ""
        raise ConfigError(
            f"config.train.batch_size={global_batch} must split evenly over the {devices} devices "
            f"({processes} processes){per}; pick a multiple of {devices * accum_steps}."
        )


def global_batch(local: dict, mesh: Mesh) -> dict:
    """Assembles each process's local numpy batch into global arrays sharded over ``data``."""
    sharding = batch_sharded(mesh)
    return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding, a), local)


def replicate(x, mesh: Mesh) -> jax.Array:
    """A host array that every process holds identically, as one global array replicated on ``mesh``."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, replicated(mesh), lambda index: x[index])


def shard_rows(x, mesh: Mesh) -> jax.Array:
    """A host array that every process holds identically, zero-padded to a multiple of the device
    count and split along its first axis over ``mesh``; each process uploads only its devices' rows."""
    x = np.asarray(x)
    x = np.pad(x, [(0, -len(x) % mesh.devices.size)] + [(0, 0)] * (x.ndim - 1))
    return jax.make_array_from_callback(x.shape, batch_sharded(mesh), lambda index: x[index])


def put_replicated(tree, mesh: Mesh):
    """``tree`` replicated on ``mesh`` (a no-op for arrays already laid out so, such as a train state)."""
    return jax.device_put(tree, replicated(mesh))
