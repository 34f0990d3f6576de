"""Parity of an imported official Progressive Distillation checkpoint with the release's own outputs.

    python bench/pd_release_parity.py   # writes docs/pd_release_parity.json and prints the table

Reads tests/fixtures/pd_release/ (written by the release's code; see its provenance.json), imports the
checkpoint into a temporary workdir and reports the largest relative error of each quantity.
"""

import json
import os
import tempfile

import jax.numpy as jnp
import numpy as np

import pdist
from pdist import diffusion, samplers
from pdist.interop import importer

ROOT = os.path.join(os.path.dirname(__file__), "..")
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "pd_release")


def rel(a, b):
    return float(np.max(np.abs(np.asarray(a) - b)) / np.max(np.abs(b)))


def main():
    ref = np.load(os.path.join(FIXTURE, "outputs.npz"))
    with tempfile.TemporaryDirectory() as tmp:
        workdir = os.path.join(tmp, "w")
        importer.import_checkpoint(os.path.join(FIXTURE, "checkpoint_1234"), workdir,
                                   source_config=os.path.join(FIXTURE, "tiny_base.py"))  # fmt: skip
        model = pdist.load(workdir)
        z, logsnr, label = (jnp.asarray(ref[k]) for k in ("z", "logsnr", "label"))

        def raw(**network):
            net = model.spec.network.clone(**network)
            return net.apply({"params": model.ema_params}, z, logsnr, label, None, train=False)

        out = raw()
        rows = {"raw output": rel(out, ref["raw"]), "raw output, pdist's embedding": rel(raw(logsnr_input="pdist"),
                                                                                         ref["raw"])}  # fmt: skip
        for m in ("x", "eps", "v"):
            pred = diffusion.predict(out, z, logsnr, parameterization=m, learned_variance=False)
            rows[f"x-hat ({m})"], rows[f"eps-hat ({m})"] = rel(pred.x, ref[f"x_{m}"]), rel(pred.eps, ref[f"eps_{m}"])
        x = samplers.sample(model.denoiser(label=label), model.schedule, z, method="ddim", num_steps=4,
                            grid=model.config.sample.grid, clip_x=True)  # fmt: skip
        rows["4-step DDIM, clipped (x)"] = rel(x, ref["ddim4_x"])
    path = os.path.join(ROOT, "docs", "pd_release_parity.json")
    with open(path, "w") as f:
        json.dump({"command": "python bench/pd_release_parity.py", "max_relative_error": rows}, f, indent=1)
    for k, v in rows.items():
        print(f"{k:40s} {v:.2e}")


if __name__ == "__main__":
    main()
