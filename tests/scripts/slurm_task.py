"""One task of a 2-task SLURM step: joins the run from the SLURM variables alone."""

import json

import numpy as np

from pdist.runtime import multihost

assert multihost.initialize("auto")  # no flags: the SLURM variables say how to join
import jax  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

ids = multihost_utils.process_allgather(np.asarray([jax.process_index()]))
print(json.dumps({"processes": jax.process_count(), "ids": np.asarray(ids).ravel().tolist()}))
