"""``python -m pdist.main --config=configs/digits.py --workdir=runs/digits [--config.a.b=value]``.

``config.mode`` picks the job: ``train`` (resumes from the workdir's newest
checkpoint), ``distill`` (progressive distillation of ``config.distill.teacher``,
resuming likewise), ``sample`` (``config.sample.*`` from a checkpoint) or
``eval`` (``config.eval.*``: sample quality, and optionally NLL, of a checkpoint).
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "A file in configs/ returning an ml_collections config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and samples go.")
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
