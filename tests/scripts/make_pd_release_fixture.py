"""Writes tests/fixtures/pd_release/ with the official Progressive Distillation code (run once; not in CI).

    python tests/scripts/make_pd_release_fixture.py PATH_TO_DIFFUSION_DISTILLATION_CHECKOUT

PATH is the folder holding the release's ``diffusion_distillation`` package (unet.py, dpm.py,
schedules.py, utils.py of google-research/google-research); it is put on sys.path and never copied here.
A tiny class-conditional CIFAR-shaped UNet of the release, with every weight random (the layers its code
initializes to zero too), is saved as the release saves its TrainState (``flax.serialization.to_bytes``),
with GroupNorm parameters in the (1, 1, 1, C) shape older Flax wrote, next to a config file in the
release's style and the release's own outputs: the raw network output, x-hat and eps-hat of
``dpm.Model._run_model`` for each mean type, and DDIM samples of ``dpm.Model.sample_loop`` with clipping.
"""

import json
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, sys.argv[1])
from diffusion_distillation import dpm, schedules, unet  # noqa: E402

OUT = "tests/fixtures/pd_release"
ARGS = dict(ch=32, emb_ch=64, ch_mult=(1, 1), num_res_blocks=1, attn_resolutions=(16,), num_heads=1,
            dropout=0.1, logsnr_input_type="inv_cos", resblock_resample=True)  # fmt: skip
SEED = 0


def main():
    net = unet.UNet(num_classes=10, out_ch=3, **ARGS)
    key = jax.random.PRNGKey(SEED)
    x0 = jnp.zeros((1, 32, 32, 3)), jnp.zeros((1,)), jnp.zeros((1,), jnp.int32)
    params = net.init(key, *x0, train=False)["params"]
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(SEED + 1), len(leaves))
    leaves = [0.2 * jax.random.normal(k, v.shape) for k, v in zip(keys, leaves, strict=True)]  # zero-init layers too
    params = flax.core.unfreeze(jax.tree.unflatten(tree, leaves))

    def old_norms(tree):  # GroupNorm scale/bias as older Flax wrote them
        return {k: (old_norms(v) if isinstance(v, dict) else
                    (np.asarray(v).reshape(1, 1, 1, -1) if ("norm" in path_of[id(v)]) else np.asarray(v)))
                for k, v in tree.items()}  # fmt: skip

    path_of = {}
    for path, v in jax.tree_util.tree_flatten_with_path(params)[0]:
        path_of[id(v)] = "/".join(p.key for p in path)
    saved = old_norms(params)
    state = {"step": 1234, "optimizer": None, "ema_params": saved, "num_sample_steps": 0}
    with open(f"{OUT}/checkpoint_1234", "wb") as f:
        f.write(flax.serialization.to_bytes(state))

    rng = np.random.default_rng(SEED)
    z = rng.standard_normal((2, 32, 32, 3)).astype(np.float32)
    logsnr = np.array([-3.0, 12.0], np.float32)
    y = np.array([3, 9], np.int32)
    model_fn = lambda z_, l_: net.apply({"params": params}, z_, l_, jnp.asarray(y), train=False)  # noqa: E731
    out = {"z": z, "logsnr": logsnr, "label": y, "raw": np.asarray(model_fn(jnp.asarray(z), jnp.asarray(logsnr)))}
    schedule = schedules.get_logsnr_schedule("cosine", logsnr_min=-20.0, logsnr_max=20.0)
    for mean_type in ("x", "eps", "v"):
        m = dpm.Model(model_fn, mean_type=mean_type, logvar_type="fixed_large", logvar_coeff=0.0)
        pred = m._run_model(z=jnp.asarray(z), logsnr=jnp.asarray(logsnr), model_fn=model_fn, clip_x=False)
        out[f"x_{mean_type}"], out[f"eps_{mean_type}"] = np.asarray(pred["model_x"]), np.asarray(pred["model_eps"])
        samples = m.sample_loop(rng=key, init_x=jnp.asarray(z), num_steps=4, logsnr_schedule_fn=schedule,
                                sampler="ddim", clip_x=True)  # fmt: skip
        out[f"ddim4_{mean_type}"] = np.asarray(samples)
    np.savez(f"{OUT}/outputs.npz", **out)
    versions = {n: __import__(n).__version__ for n in ("jax", "flax", "numpy")}
    with open(f"{OUT}/provenance.json", "w") as f:
        json.dump({"peer": "google-research/google-research diffusion_distillation",
                   "files": {"unet.py": "30adf0ec5f35f9609c2f1d896005e184195d9146",
                             "dpm.py": "1d4d2f1aa6f2883a790d2ae46a6ee8ab150d8f31",
                             "schedules.py": "4c4299485319ed72ef782020c81784be5468924e",
                             "utils.py": "30adf0ec5f35f9609c2f1d896005e184195d9146"},
                   "generator": "tests/scripts/make_pd_release_fixture.py", "seed": SEED, "versions": versions,
                   "network": {**ARGS, "num_classes": 10, "out_ch": 3},
                   "weights": "every leaf N(0, 0.2^2), the release's zero-initialized layers included"},
                  f, indent=1)  # fmt: skip


if __name__ == "__main__":
    main()
