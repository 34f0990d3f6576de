"""Images in [-1, 1] to uint8 grids, PNG files and sample files (all written whole: ``runtime.files``)."""

from __future__ import annotations

import math
import os

import numpy as np
from PIL import Image

from pdist.runtime import files


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


def save_samples(directory: str, name: str, x: np.ndarray, labels=None) -> tuple[str, str]:
    """Writes ``name.png`` (a grid) and ``name.npz`` (uint8 images, float samples, labels); returns the paths."""
    files.makedirs(directory)
    png, npz = os.path.join(directory, f"{name}.png"), os.path.join(directory, f"{name}.npz")
    scale = max(1, 256 // x.shape[1] // 4)
    save_png(png, grid(x[:256]), scale=scale)
    extra = {} if labels is None else {"labels": np.asarray(labels)}
    files.save_npz(npz, images=to_uint8(x), samples=x, **extra)
    return png, npz


def save_panels(path: str, panels: list[np.ndarray], titles: list[str]) -> None:
    """One PNG: a grid per panel ([n, H, W, C] in [-1, 1]) side by side, each under its title (a Figure of its
    own: no pyplot state and no backend switch, so a notebook's own plots are left as they are)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.9 * len(panels), 2.3))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, panel, title in zip(axes[0], panels, titles, strict=True):
        g = grid(panel)
        ax.imshow(g[..., 0] if g.shape[-1] == 1 else g, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    with files.atomic(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
