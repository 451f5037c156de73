"""Sparse-conv ops with autograd, and the dataflows that run them."""

from sparseconv.functional import ops  # registers the torch.library custom ops
from sparseconv.functional.conv import (
    SparseConvFunction,
    apply_kernel_map,
    conv3d,
    conv_kernel_map,
    semi_structured_conv3d,
)
from sparseconv.functional.dataflows import AUTOTUNE, DATAFLOWS, set_autotune

__all__ = [
    "AUTOTUNE",
    "DATAFLOWS",
    "SparseConvFunction",
    "apply_kernel_map",
    "conv3d",
    "conv_kernel_map",
    "ops",
    "semi_structured_conv3d",
    "set_autotune",
]
