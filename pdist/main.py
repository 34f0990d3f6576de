"""``python -m pdist.main --config=configs/digits.py --workdir=runs/digits [--config.a.b=value]``.

``config.mode`` picks the job: ``train`` (resumes from the workdir's newest
checkpoint), ``distill`` (progressive distillation of ``config.distill.teacher``,
resuming likewise), ``sample`` (``config.sample.*`` from a checkpoint) or
``eval`` (``config.eval.*``: sample quality, and optionally NLL, of a checkpoint).

The same command runs on every host of a multi-process run; ``--distributed``,
``--coordinator_address``, ``--num_processes`` and ``--process_id`` say how
to join it (:mod:`pdist.distributed`; ``launch/`` has the scripts).
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "A file in configs/ returning an ml_collections config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and samples go.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"], "Join a multi-process run (jax.distributed); see pdist.distributed."
)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run (default: from the cluster).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (default: from the cluster).")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietOrbax:
    """Drops Orbax's per-save INFO chatter from the log; its warnings and errors still show."""

    def filter(self, record) -> bool:
        return record.levelno > 20 or "/orbax/" not in record.pathname


def main(argv):
    logging.get_absl_handler().addFilter(_QuietOrbax())
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments {argv[1:]}; options are --config, --workdir and --config.*.")
    from pdist import config as config_lib

    config = _CONFIG.value
    try:
        config_lib.validate(config)
    except ValueError as e:
        sys.exit(f"error: {e}")
    from pdist import distributed

    distributed.initialize(
        _DISTRIBUTED.value,
        coordinator_address=_COORDINATOR.value,
        num_processes=_NUM_PROCESSES.value,
        process_id=_PROCESS_ID.value,
    )
    import jax

    logging.info("JAX %s, %d process(es), devices: %s", jax.__version__, jax.process_count(), jax.devices())
    from pdist.checkpoint import CheckpointNotFoundError
    from pdist.data import DatasetUnavailableError
    from pdist.distill import TeacherMismatchError

    try:
        if config.mode == "sample":
            from pdist import sample

            sample.run(config, _WORKDIR.value)
        elif config.mode == "eval":
            from pdist import evaluate

            evaluate.run(config, _WORKDIR.value)
        elif config.mode == "distill":
            from pdist import distill

            distill.distill(config, _WORKDIR.value)
        else:
            from pdist import train

            train.train_and_evaluate(config, _WORKDIR.value)
    except (DatasetUnavailableError, CheckpointNotFoundError, TeacherMismatchError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)
