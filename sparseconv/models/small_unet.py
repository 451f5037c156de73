"""``SmallUNet``: a compact sparse U-Net (3 levels) for quick training and the demo.

Stem of two submanifold k3 convs, then per level a k2s2 strided conv and a submanifold block; the
decoder upsamples with k2s2 transposed convs (which reuse the encoder's maps through the cache)
and concatenates the skip features, as MinkUNet does, before a pointwise classifier.
"""

from __future__ import annotations

import torch
from torch import nn

from sparseconv import nn as snn
from sparseconv.tensor import SparseTensor


def _block(
    c_in: int, c_out: int, k: int = 3, stride: int = 1, transposed: bool = False
) -> snn.Sequential:
    return snn.Sequential(
        snn.Conv3d(c_in, c_out, k, stride=stride, transposed=transposed),
        snn.BatchNorm(c_out),
        snn.ReLU(True),
    )


class SmallUNet(nn.Module):
    def __init__(
        self, in_channels: int, num_classes: int, widths: tuple[int, ...] = (16, 32, 64)
    ) -> None:
        super().__init__()
        w = widths
        self.stem = snn.Sequential(_block(in_channels, w[0]), _block(w[0], w[0]))
        self.down = nn.ModuleList(
            snn.Sequential(_block(w[i], w[i], 2, 2), _block(w[i], w[i + 1]))
            for i in range(len(w) - 1)
        )
        self.up = nn.ModuleList(
            _block(w[i + 1], w[i], 2, 2, transposed=True) for i in reversed(range(len(w) - 1))
        )
        self.fuse = nn.ModuleList(_block(2 * w[i], w[i]) for i in reversed(range(len(w) - 1)))
        self.head = nn.Linear(w[0], num_classes)

    def forward(self, x: SparseTensor) -> torch.Tensor:
        skips = [self.stem(x)]
        for down in self.down:
            skips.append(down(skips[-1]))
        y = skips.pop()
        for up, fuse in zip(self.up, self.fuse):
            y = up(y)
            skip = skips.pop()
            y = fuse(skip.replace_feats(torch.cat([y.feats, skip.feats], 1)))
        return self.head(y.feats)
