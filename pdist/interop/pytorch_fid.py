"""Converts the distributed FID Inception weights to the .npz that pdist's Flax network loads.

python -m pdist.interop.pytorch_fid pt_inception-2015-12-05-6726825d.pth inception.npz

The input is pytorch-fid's weight file (a PyTorch state dict of the
2015-12-05 TF Inception graph, torchvision names), read without PyTorch and
as untrusted input by :mod:`pdist.interop.torch_file` (either of PyTorch's
formats; nothing in the file can run code). An .npz of the same state dict
(name -> array, no pickles) is accepted too. Torch layouts become Flax ones:
convolution kernels OIHW -> HWIO, linear weights transposed, batch-norm
``weight/bias/running_mean/running_var`` -> ``scale/bias`` and ``mean/var``.
"""

from __future__ import annotations

import sys

import numpy as np
from flax import traverse_util

from pdist.errors import InputError
from pdist.interop import torch_file
from pdist.runtime import files


def from_state_dict(state: dict[str, np.ndarray]) -> dict:
    """Flax ``{"params", "batch_stats"}`` of the FID Inception from a torchvision-named state dict."""
    flat = {}
    for name, value in state.items():
        *path, leaf = name.split(".")
        value = np.asarray(value)
        if leaf == "num_batches_tracked":
            continue
        if path[-1] == "conv" and leaf == "weight":
            flat[("params", *path, "kernel")] = value.transpose(2, 3, 1, 0).astype(np.float32)
        elif path[-1] == "bn":
            collection, new = {
                "weight": ("params", "scale"),
                "bias": ("params", "bias"),
                "running_mean": ("batch_stats", "mean"),
                "running_var": ("batch_stats", "var"),
            }[leaf]
            flat[(collection, *path, new)] = value.astype(np.float32)
        elif path == ["fc"]:
            flat[("params", "fc", "kernel" if leaf == "weight" else "bias")] = (
                value.T if leaf == "weight" else value
            ).astype(np.float32)
        else:
            raise ValueError(f"Unexpected entry {name!r} in the Inception state dict; is this the FID Inception file?")
    return traverse_util.unflatten_dict(flat)


def to_state_dict(variables: dict) -> dict[str, np.ndarray]:
    """The inverse of :func:`from_state_dict` (torch layouts and names)."""
    state = {}
    for (_, *path, leaf), value in traverse_util.flatten_dict(variables).items():
        value = np.asarray(value)
        if path[-1] == "conv":
            state[".".join(path + ["weight"])] = value.transpose(3, 2, 0, 1)
        elif path[-1] == "bn":
            torch_leaf = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}[leaf]
            state[".".join(path + [torch_leaf])] = value
        else:  # fc
            state[f"fc.{'weight' if leaf == 'kernel' else 'bias'}"] = value.T if leaf == "kernel" else value
    return state


def check_shapes(variables: dict) -> None:
    """One sentence if ``variables`` do not have the FID Inception's shapes."""
    import jax

    from pdist.evaluation.inception import SIZE, FIDInceptionV3

    expected = jax.eval_shape(FIDInceptionV3().init, jax.random.key(0), jax.ShapeDtypeStruct((1, SIZE, SIZE, 3), "f4"))
    want = {k: v.shape for k, v in traverse_util.flatten_dict(expected).items()}
    got = {k: np.shape(v) for k, v in traverse_util.flatten_dict(variables).items()}
    if want != got:
        differ = sorted("/".join(k) for k in set(want) ^ set(got) | {k for k in want if got.get(k) != want[k]})
        raise ValueError(
            f"The weights do not match the FID Inception-v3 ({len(differ)} entries differ, e.g. {differ[:3]}); "
            "pass pytorch-fid's pt_inception-2015-12-05 file."
        )


def save_npz(variables: dict, path: str) -> None:
    flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(variables).items()}
    files.save_npz(path, **flat)


def convert(source: str, target: str) -> None:
    if source.endswith(".npz"):
        with np.load(source, allow_pickle=False) as f:
            state = {k: f[k] for k in f.files}
    else:
        state = torch_file.read_state_dict(source)
    variables = from_state_dict(state)
    check_shapes(variables)
    save_npz(variables, target)


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    try:
        convert(argv[1], argv[2])
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError, KeyError) as e:
        print(f"error: could not convert {argv[1]!r} ({type(e).__name__}: {e}).", file=sys.stderr)
        return 2
    print(f"wrote {argv[2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
