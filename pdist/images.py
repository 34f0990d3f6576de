"""Images in [-1, 1] to uint8 grids and PNG files."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from pdist import files


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[-1, 1] floats to uint8 0..255 (rounded, clipped)."""
    return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def grid(images: np.ndarray, columns: int | None = None, pad: int = 1) -> np.ndarray:
    """[N, H, W, C] images in [-1, 1] to one uint8 [rows*(H+pad)+pad, cols*(W+pad)+pad, C] grid."""
    images = to_uint8(images)
    n, h, w, c = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    out = np.zeros((rows * (h + pad) + pad, columns * (w + pad) + pad, c), np.uint8)
    for i, image in enumerate(images):
        r, q = divmod(i, columns)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w] = image
    return out


def save_png(path: str, image_uint8: np.ndarray, scale: int = 1) -> None:
    """Writes an [H, W, C] uint8 image, optionally enlarged ``scale`` times (nearest)."""
    image = np.repeat(np.repeat(image_uint8, scale, axis=0), scale, axis=1)
    with files.atomic(path) as f:
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(f, format="PNG")
