"""One of two processes (launch/local.sh, 2 CPU devices each): train, distill, evaluate and sample together, and
resume a run that one process with one device checkpointed at step 3 (OUT/elastic, written by the test).

``two_processes.py OUT TFDS_DIR`` plus the coordinator flags local.sh appends; each process writes what it
saw under OUT for tests/test_scale.py to compare.
"""

import argparse
import json
import os
import signal
import sys

import numpy as np

parser = argparse.ArgumentParser()
for name in ("out", "tfds", "--coordinator_address"):
    parser.add_argument(name)
parser.add_argument("--num_processes", type=int)
parser.add_argument("--process_id", type=int)
args = parser.parse_args()

from pdist.runtime import multihost  # noqa: E402

assert multihost.initialize(
    "auto", coordinator_address=args.coordinator_address, num_processes=args.num_processes, process_id=args.process_id
)
import jax  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import time  # noqa: E402

from helpers import tiny_config  # noqa: E402

from pdist.data import pipeline  # noqa: E402
from pdist.distillation import recipes  # noqa: E402
from pdist.jobs import distill, evaluate, train  # noqa: E402
from pdist.main import fewer_collections  # noqa: E402
from pdist.pretrained import load  # noqa: E402

fewer_collections()

out, rank = args.out, jax.process_index()
began, seconds = time.time(), {}


def lap(name):
    seconds[name] = round(time.time() - began - sum(seconds.values()), 1)


config = tiny_config(args.tfds)
record = {"processes": jax.process_count(), "devices": jax.device_count(), "local_devices": jax.local_device_count()}

first = next(pipeline.train_batches(config, local_batch_size=8, process_index=rank, process_count=2))
np.savez(f"{out}/first_{rank}.npz", **first)

lap("setup")
state = train.run(config, f"{out}/teacher")
lap("teacher")
np.savez(f"{out}/teacher_{rank}.npz", *[np.asarray(a) for a in jax.tree.leaves(state.params)])
elastic = train.run(config, f"{out}/elastic")  # steps 4 to 6 here, 1 to 3 on one process and device
np.savez(f"{out}/elastic_{rank}.npz", *[np.asarray(a) for a in jax.tree.leaves(elastic.params)])
lap("elastic")

student = recipes.for_distillation(
    tiny_config(args.tfds), start_steps=4, batch_size=16, learning_rate=1e-4, updates_per_round=3,
    updates_last_rounds=3,
)  # fmt: skip
student.distill.final_steps = 2
student.distill.teacher = f"{out}/teacher"
student.distill.fidelity_samples = 6
student.distill.grid_samples = 4
record["rounds"] = distill.run(student, f"{out}/distill")
lap("distill")

scoring = tiny_config(args.tfds)
scoring.mode = "eval"
scoring.eval.samplers = "ddim:2"
scoring.eval.num_samples = 10
scoring.eval.num_seeds = 1
scoring.eval.pr_samples = 10
scoring.eval.is_splits = 1
scoring.eval.batch_size = 6  # batches of 6 and 4 images over 4 devices: padded to 8, and 4
result = evaluate.run(scoring, f"{out}/teacher")
lap("eval")
record["fd"] = result["rows"][0]["fd"]["mean"]
x = load(f"{out}/teacher").sample(10, num_steps=2, seed=3, batch_size=6)
np.save(f"{out}/samples_{rank}.npy", x)
lap("sample")

# Preemption: SIGTERM to process 1 alone as it fetches step 4's batch. Both processes must stop at the same step
# (they agree at log steps) with a complete checkpoint there, and the resumed run must end bit-identical to the
# uninterrupted one (OUT/teacher).
from pdist import data, main  # noqa: E402
from pdist.errors import Preempted  # noqa: E402
from pdist.runtime import preemption  # noqa: E402

real_batches = data.process_batches


def signalled_batches(config_, start, phase):
    for step, batch in enumerate(real_batches(config_, start, phase), start=start + 1):
        if rank == 1 and step == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        yield batch


data.process_batches = signalled_batches
try:
    with preemption.guard():
        train.run(config, f"{out}/preempted")
    record["preempted"] = None
except Preempted as e:
    record["preempted"] = {"status": main.outcome(e)[0], "message": str(e)}
data.process_batches = real_batches
record["preempted_checkpoints"] = sorted(os.listdir(f"{out}/preempted/checkpoints"), key=int)
resumed = train.run(config, f"{out}/preempted")
np.savez(f"{out}/preempted_{rank}.npz", *[np.asarray(a) for a in jax.tree.leaves(resumed.params)])
lap("preempted")
record["seconds"] = seconds
with open(f"{out}/record_{rank}.json", "w") as f:
    json.dump(record, f)
