"""The device mesh and how arrays are laid out on it.

One ``data`` axis over every device of every process: parameters and
optimizer state are replicated, batches are split along their first axis.
Each process contributes its local share of the global batch.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA = "data"


def data_mesh(devices=None) -> Mesh:
    return Mesh(np.asarray(jax.devices() if devices is None else devices), (DATA,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA))


def check_batch_size(global_batch: int, mesh: Mesh) -> None:
    """One sentence if the global batch does not split evenly over devices and processes."""
    devices, processes = mesh.devices.size, jax.process_count()
    if global_batch % devices or global_batch % processes:
        raise ValueError(
            f"config.train.batch_size={global_batch} must be divisible by the {devices} devices "
            f"({processes} processes); pick a multiple of {devices}."
        )


def global_batch(local: dict, mesh: Mesh) -> dict:
    """Assembles each process's local numpy batch into global arrays sharded over ``data``."""
    sharding = batch_sharded(mesh)
    return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding, a), local)
