"""A gs:// workdir end to end in one process (tests/test_cloud.py's server): a teacher trained, resumed and
evaluated in the bucket, a student distilled from it into the bucket, both loaded and sampled from the bucket and
from a local copy of it; prints one JSON line. The command line's runs go through ``pdist.main``'s parse and run
in this process (tests/helpers.py's ``run_in_process``): one interpreter, and the resumed run reuses the first
run's compiled step. Run with the server's variables in the environment.

Usage: cloud_workflow.py BUCKET LOCAL_COPY TFDS_DIR
"""

import contextlib
import io
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import fsspec  # noqa: E402
import numpy as np  # noqa: E402
from helpers import SMALL_MODEL, run_in_process  # noqa: E402

import pdist  # noqa: E402
from pdist.errors import InputError  # noqa: E402
from pdist.runtime import events, files, layout  # noqa: E402

bucket, local, tfds_dir = sys.argv[1:]
teacher, student = f"gs://{bucket}/teacher", f"gs://{bucket}/student"
out = {"printed": []}


def main(*args, config="configs/digits.py"):
    """One ``python -m pdist.main`` run; what it printed goes to ``out["printed"]``."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status, message, _ = run_in_process(*args, config=config)
    assert status == 0, printed.getvalue()[-2000:] + message
    out["printed"].append(printed.getvalue())


model = [f"--config.model.{k}={v}" for k, v in SMALL_MODEL.items()]
train = [*model, f"--workdir={teacher}", f"--config.data.data_dir={tfds_dir}", "--config.train.batch_size=32",
         "--config.train.log_every=2", "--config.train.checkpoint_every=2", "--config.train.sample_every=4",
         "--config.train.num_grid_samples=4", "--config.sample.num_steps=2", "--config.sample.num_samples=4"]  # fmt: skip
main(*train, "--config.train.num_steps=4")
main(*train, "--config.train.num_steps=6")  # resumes from the bucket
main(*model, f"--workdir={teacher}", "--config.mode=eval", f"--config.data.data_dir={tfds_dir}",
     "--config.eval.samplers=ddim:2", "--config.eval.num_samples=32", "--config.eval.num_seeds=1",
     "--config.eval.pr_samples=32")  # fmt: skip
main(*model, f"--workdir={student}", f"--config.distill.teacher={teacher}", f"--config.data.data_dir={tfds_dir}",
     "--config.distill.start_steps=4", "--config.distill.final_steps=2", "--config.distill.updates_per_round=2",
     "--config.distill.updates_last_rounds=2", "--config.distill.fidelity_samples=4", "--config.train.batch_size=32",
     "--config.train.log_every=2", "--config.train.checkpoint_every=2", config="configs/digits_distill.py")  # fmt: skip

fsspec.filesystem("gs").get(f"gs://{bucket}/", local, recursive=True)
for name in ("teacher", "student"):
    remote, copy = pdist.load(f"gs://{bucket}/{name}"), pdist.load(f"{local}/{name}")
    a, b = (model.sample(8, method="ddim", num_steps=2, seed=3) for model in (remote, copy))
    out[name] = {"step": remote.step, "directory": remote.directory, "max_abs": float(np.abs(a).max()),
                 "same_as_copy": bool(np.array_equal(a, b)) and remote.step == copy.step}  # fmt: skip
steps, losses = events.scalars(teacher, "loss")
out["loss_steps"] = steps.tolist()
out["losses_match_copy"] = bool(np.array_equal(losses, events.scalars(f"{local}/teacher", "loss")[1]))
# An interrupted write on the object store leaves the object as it was; a complete one replaces it whole.
target = f"gs://{bucket}/atomic.json"
files.write_json(target, {"version": 1})
try:
    with files.atomic(target, "w") as f:
        f.write('{"version": 2, "half')
        raise KeyboardInterrupt
except KeyboardInterrupt:
    pass
out["kept_after_interrupt"] = files.read_json(target)
files.write_json(target, {"version": 3})
out["replaced"] = files.read_json(target)
# Workdirs that cannot serve: one sentence each (the command line prints it and exits with status 2).
out["refused"] = {}
for path in (f"gs://{bucket}-missing/run", target, "s3://bucket/run"):
    try:
        layout.check_writable(path)
    except InputError as e:
        out["refused"][path] = str(e)
layout.check_writable(f"gs://{bucket}/new/run")  # a folder not there yet is fine: it is created
print(json.dumps(out))
