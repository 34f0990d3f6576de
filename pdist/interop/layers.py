"""PyTorch layers' tensors as Flax parameters, for the formats whose networks are PyTorch modules (OpenAI's
state dicts, diffusers' safetensors), and a state dict that records which tensors a mapping read."""

from __future__ import annotations

import numpy as np


def conv(w: np.ndarray, b: np.ndarray) -> dict:
    """A PyTorch conv's (out, in, kh, kw) or 1-D (out, in, 1) weight as a Flax kernel (kh, kw, in, out)."""
    w = np.asarray(w, np.float32)
    if w.ndim == 3:
        w = w[..., None]
    return {"kernel": np.transpose(w, (2, 3, 1, 0)), "bias": np.asarray(b, np.float32)}


def dense(w, b) -> dict:
    """A PyTorch Linear's (out, in) weight as a Flax Dense kernel (in, out)."""
    return {"kernel": np.asarray(w, np.float32).T, "bias": np.asarray(b, np.float32)}


def group_norm(sd: dict, name: str) -> dict:
    """A PyTorch GroupNorm ``name``'s weight and bias as Flax's scale and bias."""
    return {"scale": np.asarray(sd[f"{name}.weight"], np.float32), "bias": np.asarray(sd[f"{name}.bias"], np.float32)}


def res_block(sd: dict, norm1: str, conv1: str, emb: str, norm2: str, conv2: str, skip: str) -> dict:
    """A PyTorch residual block (norm, conv, the embedding's projection, norm, conv, and a 1x1 shortcut when
    ``skip`` is in ``sd``), its layers named as the format names them, as pdist's ``ResBlock``."""
    out = {
        "GroupNorm_0": group_norm(sd, norm1),
        "Conv_0": conv(sd[f"{conv1}.weight"], sd[f"{conv1}.bias"]),
        "Dense_0": dense(sd[f"{emb}.weight"], sd[f"{emb}.bias"]),
        "GroupNorm_1": group_norm(sd, norm2),
        "Conv_1": conv(sd[f"{conv2}.weight"], sd[f"{conv2}.bias"]),
    }
    if f"{skip}.weight" in sd:
        out["Conv_2"] = conv(sd[f"{skip}.weight"], sd[f"{skip}.bias"])
    return out


def unconv(kernel, bias, name: str) -> dict:
    """A Flax conv kernel (kh, kw, in, out) and bias as PyTorch's ``name.weight`` (out, in, kh, kw) and ``.bias``."""
    return {f"{name}.weight": np.ascontiguousarray(np.transpose(np.asarray(kernel, np.float32), (3, 2, 0, 1))),
            f"{name}.bias": np.asarray(bias, np.float32)}  # fmt: skip


def unlinear(kernel, bias, name: str) -> dict:
    """A Flax Dense kernel (in, out) and bias as PyTorch's Linear ``name.weight`` (out, in) and ``.bias``."""
    return {f"{name}.weight": np.ascontiguousarray(np.asarray(kernel, np.float32).T),
            f"{name}.bias": np.asarray(bias, np.float32).reshape(-1)}  # fmt: skip


def unnorm(norm: dict, name: str) -> dict:
    """Flax's GroupNorm scale and bias as PyTorch's ``name.weight`` and ``.bias``."""
    return {f"{name}.weight": np.asarray(norm["scale"], np.float32).reshape(-1),
            f"{name}.bias": np.asarray(norm["bias"], np.float32).reshape(-1)}  # fmt: skip


def map_tensors(sd: Tracked, mapping, missing: str, unused: str) -> dict:
    """``mapping()``'s parameters from the tensors of ``sd``, all of them used: InputError ``missing`` (with
    ``{name}``) for a tensor the mapping needs and ``sd`` lacks, ``unused`` (with ``{name}`` and ``{count}``) for
    one left over."""
    from pdist.errors import InputError

    try:
        params = mapping()
    except KeyError as e:
        raise InputError(missing.format(name=repr(e.args[0]))) from None
    left = sorted(set(sd) - sd.read)
    if left:
        raise InputError(unused.format(name=repr(left[0]), count=len(left)))
    return params


class Tracked(dict):
    """A state dict that records which names were read."""

    def __init__(self, *args):
        super().__init__(*args)
        self.read: set[str] = set()

    def __getitem__(self, name):
        self.read.add(name)
        return super().__getitem__(name)
