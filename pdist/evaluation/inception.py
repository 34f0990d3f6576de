"""The FID Inception-v3 in Flax, and the evaluator built on it.

The network behind FID and the Inception Score: the Inception-v3 graph of
2015-12-05 that TF-GAN and pytorch-fid use (2048-d pool features, 1008-way
logits). It differs from the ImageNet Inception-v3 of torchvision in three
places, all kept here: average pools inside the Mixed blocks exclude padding
from the count (``count_include_pad=False``), the last block (``Mixed_7c``)
pools with a max instead of an average, and the classifier has 1008 outputs.
Module names follow torchvision's (``Mixed_5b/branch1x1/conv``) so that the
converter (:mod:`pdist.interop.pytorch_fid`) maps the distributed weights by name.

Inputs are images in [-1, 1]; :class:`InceptionEvaluator` quantizes them to
8 bits as saved images are, repeats grey images to three channels and resizes
them to 299x299 bilinearly (half-pixel centres, as pytorch-fid does).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from pdist.evaluation import batching
from pdist.runtime import files

NUM_FEATURES, NUM_LOGITS, SIZE = 2048, 1008, 299


class BasicConv(nn.Module):
    """Convolution without bias, batch norm (inference statistics, eps 1e-3), ReLU."""

    features: int
    kernel: tuple[int, int]
    strides: int = 1
    padding: str = "SAME"

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(self.features, self.kernel, self.strides, padding=self.padding, use_bias=False, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


def _avg_pool(x):
    return nn.avg_pool(x, (3, 3), (1, 1), padding="SAME", count_include_pad=False)


def _max_pool(x, strides: int = 2, padding: str = "VALID"):
    return nn.max_pool(x, (3, 3), (strides, strides), padding=padding)


class InceptionA(nn.Module):
    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv(64, (1, 1), name="branch1x1")(x)
        b5 = BasicConv(48, (1, 1), name="branch5x5_1")(x)
        b5 = BasicConv(64, (5, 5), name="branch5x5_2")(b5)
        b3 = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
        b3 = BasicConv(96, (3, 3), name="branch3x3dbl_2")(b3)
        b3 = BasicConv(96, (3, 3), name="branch3x3dbl_3")(b3)
        bp = BasicConv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv(384, (3, 3), 2, "VALID", name="branch3x3")(x)
        bd = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv(96, (3, 3), name="branch3x3dbl_2")(bd)
        bd = BasicConv(96, (3, 3), 2, "VALID", name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool(x)], axis=-1)


class InceptionC(nn.Module):
    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c7 = self.channels_7x7
        b1 = BasicConv(192, (1, 1), name="branch1x1")(x)
        b7 = BasicConv(c7, (1, 1), name="branch7x7_1")(x)
        b7 = BasicConv(c7, (1, 7), name="branch7x7_2")(b7)
        b7 = BasicConv(192, (7, 1), name="branch7x7_3")(b7)
        bd = BasicConv(c7, (1, 1), name="branch7x7dbl_1")(x)
        bd = BasicConv(c7, (7, 1), name="branch7x7dbl_2")(bd)
        bd = BasicConv(c7, (1, 7), name="branch7x7dbl_3")(bd)
        bd = BasicConv(c7, (7, 1), name="branch7x7dbl_4")(bd)
        bd = BasicConv(192, (1, 7), name="branch7x7dbl_5")(bd)
        bp = BasicConv(192, (1, 1), name="branch_pool")(_avg_pool(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv(192, (1, 1), name="branch3x3_1")(x)
        b3 = BasicConv(320, (3, 3), 2, "VALID", name="branch3x3_2")(b3)
        b7 = BasicConv(192, (1, 1), name="branch7x7x3_1")(x)
        b7 = BasicConv(192, (1, 7), name="branch7x7x3_2")(b7)
        b7 = BasicConv(192, (7, 1), name="branch7x7x3_3")(b7)
        b7 = BasicConv(192, (3, 3), 2, "VALID", name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool(x)], axis=-1)


class InceptionE(nn.Module):
    """``max_pool``: the FID network's last block pools with a max (``Mixed_7c``), the others average."""

    max_pool: bool = False

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv(320, (1, 1), name="branch1x1")(x)
        b3 = BasicConv(384, (1, 1), name="branch3x3_1")(x)
        b3 = jnp.concatenate(
            [BasicConv(384, (1, 3), name="branch3x3_2a")(b3), BasicConv(384, (3, 1), name="branch3x3_2b")(b3)], -1
        )
        bd = BasicConv(448, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv(384, (3, 3), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate(
            [BasicConv(384, (1, 3), name="branch3x3dbl_3a")(bd), BasicConv(384, (3, 1), name="branch3x3dbl_3b")(bd)],
            -1,
        )
        pooled = _max_pool(x, 1, "SAME") if self.max_pool else _avg_pool(x)
        bp = BasicConv(192, (1, 1), name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
    """``(pool features [N, 2048], logits [N, 1008])`` of images [N, H, W, 3] in [-1, 1] (299x299 for FID).

    ``fid_last_block=False`` gives the ImageNet Inception-v3's average-pooled
    last block (Keras' ``InceptionV3``), which the parity test compares against.
    """

    fid_last_block: bool = True
    num_logits: int = NUM_LOGITS

    @nn.compact
    def __call__(self, x):
        x = BasicConv(32, (3, 3), 2, "VALID", name="Conv2d_1a_3x3")(x)
        x = BasicConv(32, (3, 3), 1, "VALID", name="Conv2d_2a_3x3")(x)
        x = BasicConv(64, (3, 3), name="Conv2d_2b_3x3")(x)
        x = _max_pool(x)
        x = BasicConv(80, (1, 1), 1, "VALID", name="Conv2d_3b_1x1")(x)
        x = BasicConv(192, (3, 3), 1, "VALID", name="Conv2d_4a_3x3")(x)
        x = _max_pool(x)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = InceptionC(c7, name=name)(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE(name="Mixed_7b")(x)
        x = InceptionE(max_pool=self.fid_last_block, name="Mixed_7c")(x)
        features = jnp.mean(x, axis=(1, 2))
        return features, nn.Dense(self.num_logits, name="fc")(features)


def preprocess(images: jax.Array) -> jax.Array:
    """Images [N, H, W, C] in [-1, 1] -> 8-bit quantized, 3 channels, 299x299, in [-1, 1]."""
    x = jnp.round((jnp.clip(images, -1.0, 1.0) + 1.0) * 127.5) / 127.5 - 1.0
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    return jax.image.resize(x, (x.shape[0], SIZE, SIZE, 3), method="bilinear", antialias=False)


def load_variables(path: str) -> dict:
    """Flax variables ``{"params", "batch_stats"}`` from an .npz written by :mod:`pdist.interop.pytorch_fid`."""
    from flax import traverse_util

    flat = {tuple(k.split("/")): v for k, v in files.load_npz(path).items()}
    return traverse_util.unflatten_dict(flat)


def hash_file(path: str) -> str:
    """The first 12 hex digits of the file's SHA-256 (names cached reference statistics per weight file)."""
    import hashlib

    digest = hashlib.sha256()
    with files.open_file(path) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


class InceptionEvaluator:
    """The FID Inception-v3 as an evaluator: ``outputs(x) -> (pool features [N, 2048], softmax [N, 1008])``."""

    name = "inception"
    num_classes = NUM_LOGITS
    image_shape = None  # any size and 1 or 3 channels; resized to 299x299

    def __init__(self, weights: str, batch_size: int = 100):
        self.variables = load_variables(weights)
        self.batch_size = batch_size
        self.cache_key = f"inception_{hash_file(weights)}"
        net = FIDInceptionV3()

        def apply(variables, x):
            features, logits = net.apply(variables, preprocess(x))
            return features, jax.nn.softmax(logits)

        self._apply = jax.jit(apply)

    def outputs(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(x, np.float32)
        if x.ndim != 4 or x.shape[-1] not in (1, 3):
            raise ValueError(f"The Inception evaluator takes [N, H, W, 1 or 3] images in [-1, 1]; got {x.shape}.")
        return batching.batched(self._apply, self.variables, x, self.batch_size)
