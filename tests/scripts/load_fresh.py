"""``pdist.load`` in a fresh process, importing no training code: ``load_fresh.py WORKDIR STEP``."""

import json
import sys

import numpy as np

import pdist

model = pdist.load(sys.argv[1])
x = model.sample(16, method="ddim", num_steps=8, seed=3)
y = model.sample(16, method="ddim", num_steps=8, seed=3)
assert model.step == int(sys.argv[2]) and x.shape == (16, 8, 8, 1) and np.array_equal(x, y)
training = [
    m for m in ("pdist.jobs.train", "pdist.jobs.distill", "pdist.runtime.phase", "tensorflow") if m in sys.modules
]
print(json.dumps({"max_abs": float(np.abs(x).max()), "training_modules": training}))
