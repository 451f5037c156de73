"""Sparse-conv ops with autograd, and the dataflows that run them."""

from sparseconv.functional.conv import SparseConvFunction, conv3d
from sparseconv.functional.dataflows import DATAFLOWS, set_autotune

__all__ = ["DATAFLOWS", "SparseConvFunction", "conv3d", "set_autotune"]
