"""Layers on ``SparseTensor`` (subclasses of ``torch.nn.Module``)."""

from sparseconv.nn import convert
from sparseconv.nn.conv import Conv3d
from sparseconv.nn.pointwise import BatchNorm, Dropout, GroupNorm, LeakyReLU, ReLU, Sequential
from sparseconv.nn.pooling import AvgPool3d, GlobalAvgPool, GlobalMaxPool, MaxPool3d
from sparseconv.nn.semi_structured import SemiStructuredConv3d
from sparseconv.nn.voxel_prune import VoxelPrune, cat_skip, scatter_to

__all__ = [
    "AvgPool3d",
    "BatchNorm",
    "Conv3d",
    "Dropout",
    "GlobalAvgPool",
    "GlobalMaxPool",
    "GroupNorm",
    "LeakyReLU",
    "MaxPool3d",
    "ReLU",
    "SemiStructuredConv3d",
    "Sequential",
    "VoxelPrune",
    "cat_skip",
    "convert",
    "scatter_to",
]
