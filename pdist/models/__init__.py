"""Flax modules."""

from pdist.models.unet import UNet

__all__ = ["UNet"]
