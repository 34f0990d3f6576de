"""Network architectures (Flax), looked up by ``config.model.name`` in one table.

An architecture is a function ``build(config, out_channels) -> nn.Module``
whose module is called as ``module(z_BHWC, logsnr_B, label_B, guidance_B, train=...)`` (``guidance_B``: the
weight w of a guided student, ``config.model.guidance_input``; None otherwise) and
returns ``out_channels`` channels per pixel (see
:func:`pdist.diffusion.output_channels`), and a ``validate(config)`` that
checks its settings in ``config.model`` with one sentence. Nothing outside
``pdist.build`` knows which architecture it runs. Adding one is a module here
and a row in :data:`ARCHITECTURES`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import ml_collections

from pdist.models import unet
from pdist.models.unet import UNet


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One row of :data:`ARCHITECTURES`."""

    build: Callable[[ml_collections.ConfigDict, int], nn.Module]  # (config, out_channels) -> the network
    validate: Callable[[ml_collections.ConfigDict], None]  # its settings in config.model; ConfigError


ARCHITECTURES: dict[str, Architecture] = {
    "unet": Architecture(build=unet.from_config, validate=unet.validate),
}

__all__ = ["ARCHITECTURES", "Architecture", "UNet"]
