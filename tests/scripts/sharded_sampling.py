"""Sampling split over 4 forced devices gives the images one device gives (batches padded to the device count)."""

import json

import jax
import numpy as np

from pdist.config import base_config
from pdist.runtime import mesh as mesh_lib
from pdist.sampling import ImageSampler, Sampling
from pdist.spec import ModelSpec

config = base_config()
config.model.ch, config.model.num_res_blocks = 8, 1
params = ModelSpec.of(config).init_params(jax.random.key(0))
sampler = ImageSampler(ModelSpec.of(config))
how = Sampling(method="ddim", num_steps=4, seed=5, batch_size=6)
split = sampler(params, 10, how)  # batches of 6 and 4, padded to 8, 4
single = ImageSampler(ModelSpec.of(config), mesh=mesh_lib.data_mesh(jax.devices()[:1]))(params, 10, how)
print(json.dumps({"devices": sampler.mesh.devices.size, "err": float(np.abs(split - single).max()),
                  "shape": list(split.shape)}))  # fmt: skip
