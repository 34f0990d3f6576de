"""Joining a multi-process run: ``jax.distributed.initialize`` when the environment asks for it.

Every host runs the same ``python -m pdist.main ...``. Whether to join a
multi-controller run is decided before JAX touches a device:

* ``on``: always (a Cloud TPU VM slice, where JAX reads the workers from the
  metadata server; or any cluster JAX detects by itself);
* ``off``: never (one process);
* ``auto`` (the default): when a coordinator is given (``--coordinator_address``
  or ``JAX_COORDINATOR_ADDRESS``), inside a SLURM step with more than one task,
  or on a TPU pod whose worker list is in the environment (GKE, queued
  resources).

Addresses, counts and ids left unset are filled in by JAX's own cluster
detection (SLURM: one process per task, each task's GPU from ``SLURM_LOCALID``
unless ``JAX_LOCAL_DEVICE_IDS`` says otherwise). On CPU the collectives are
gloo's, so several CPU processes (the tests, ``launch/local.sh``) reduce across
each other like hosts of a pod.
"""

from __future__ import annotations

import logging
import os

MODES = ("auto", "on", "off")


def requested(mode: str, coordinator_address: str | None = None, environ=None) -> bool:
    """Whether ``mode`` and the environment ask for a multi-process run."""
    if mode not in MODES:
        raise ValueError(f"--distributed={mode!r} is not valid; choose one of {list(MODES)}.")
    if mode != "auto":
        return mode == "on"
    env = os.environ if environ is None else environ
    if coordinator_address or env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    if "SLURM_STEP_NODELIST" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return True
    hosts = env.get("TPU_WORKER_HOSTNAMES") or env.get("TPU_PROCESS_ADDRESSES") or ""
    return "," in hosts or bool(env.get("MEGASCALE_COORDINATOR_ADDRESS"))


def initialize(
    mode: str = "auto",
    *,
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Joins the run if :func:`requested`; returns whether it did. Call before anything uses a device."""
    if not requested(mode, coordinator_address):
        return False
    import jax

    # Only the CPU backend reads this; it gives CPU processes real cross-process collectives.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )
    logging.info(
        "Joined a %d-process run as process %d (%d local of %d devices).",
        jax.process_count(),
        jax.process_index(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True
