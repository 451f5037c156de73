"""Building blocks shared by the segmentation networks (TorchSparse/SPVNAS block definitions)."""

from __future__ import annotations

import torch
from torch import nn

from sparseconv import nn as snn
from sparseconv.nn.pointwise import is_plain_relu
from sparseconv.tensor import SparseTensor


class ConvBlock(snn.Sequential):
    """Conv3d -> BatchNorm -> ReLU (strided, submanifold or transposed)."""

    def __init__(
        self, c_in: int, c_out: int, kernel_size: int = 3, stride: int = 1, transposed: bool = False
    ) -> None:
        super().__init__(
            snn.Conv3d(c_in, c_out, kernel_size, stride=stride, transposed=transposed),
            snn.BatchNorm(c_out),
            snn.ReLU(True),
        )


class ResidualBlock(nn.Module):
    """Two k3 submanifold convs with BN, plus the input (through a k1 conv + BN when widths differ)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.main = snn.Sequential(
            snn.Conv3d(c_in, c_out, kernel_size),
            snn.BatchNorm(c_out),
            snn.ReLU(True),
            snn.Conv3d(c_out, c_out, kernel_size),
            snn.BatchNorm(c_out),
        )
        self.shortcut = (
            snn.Sequential()
            if c_in == c_out
            else snn.Sequential(snn.Conv3d(c_in, c_out, 1), snn.BatchNorm(c_out))
        )
        self.relu = snn.ReLU(True)

    def forward(self, x: SparseTensor) -> SparseTensor:
        if torch.is_grad_enabled():
            y = self.main(x)
            return self.relu(y.replace_feats(y.feats + self.shortcut(x).feats))
        skip = self.shortcut(x).feats
        if is_plain_relu(self.relu):  # inference: the add and ReLU in main's last conv's epilogue
            return self.main(x, residual=skip)
        y = self.main(x)  # main's fresh output, held by no one else: add into it
        return self.relu(y.replace_feats(y.feats.add_(skip)))


def residual_stage(c_in: int, c_out: int, n_blocks: int) -> list[nn.Module]:
    return [ResidualBlock(c_in if i == 0 else c_out, c_out) for i in range(n_blocks)]
