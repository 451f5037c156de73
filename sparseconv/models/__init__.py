"""Segmentation networks built from ``sparseconv.nn``: ``MinkUNet`` and ``SPVCNN``."""

from sparseconv.models.minkunet import MINKUNET18_BLOCKS, MINKUNET34_BLOCKS, MinkUNet
from sparseconv.models.spvcnn import SPVCNN

__all__ = ["MINKUNET18_BLOCKS", "MINKUNET34_BLOCKS", "MinkUNet", "SPVCNN"]
