"""Loads and samples a teacher and its student from gs:// workdirs (tests/test_cloud.py's server), then from a
local copy of the bucket; prints one JSON line. Run with the server's variables in the environment.

Usage: cloud_load.py BUCKET LOCAL_COPY
"""

import json
import sys

import fsspec
import numpy as np

import pdist
from pdist.errors import InputError
from pdist.runtime import events, files, layout

bucket, local = sys.argv[1:]
fsspec.filesystem("gs").get(f"gs://{bucket}/", local, recursive=True)
out = {}
for name in ("teacher", "student"):
    remote, copy = pdist.load(f"gs://{bucket}/{name}"), pdist.load(f"{local}/{name}")
    a, b = (model.sample(8, method="ddim", num_steps=2, seed=3) for model in (remote, copy))
    out[name] = {"step": remote.step, "directory": remote.directory, "max_abs": float(np.abs(a).max()),
                 "same_as_copy": bool(np.array_equal(a, b)) and remote.step == copy.step}  # fmt: skip
steps, losses = events.scalars(f"gs://{bucket}/teacher", "loss")
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
