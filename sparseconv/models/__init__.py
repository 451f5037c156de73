"""Segmentation networks built from ``sparseconv.nn``."""

from sparseconv.models.small_unet import SmallUNet

__all__ = ["SmallUNet"]
