"""``MinkUNet``: the sparse U-Net used for SemanticKITTI by SPVNAS, TorchSparse and Pointcept.

Stem of two k3 submanifold convs; four encoder stages (k2s2 strided conv + residual blocks);
four decoder stages (k2s2 transposed conv back onto the encoder's coordinates, concatenation
with the skip features, residual blocks); a linear classifier per voxel. Channel widths are
``[32, 32, 64, 128, 256, 256, 128, 96, 96]`` times ``width``; ``blocks`` gives the residual
blocks per stage (``(2,) * 8`` is MinkUNet18-style, 21.7 M parameters at width 1.0 on 4 input
features and 19 classes; ``(2, 3, 4, 6, 2, 2, 2, 2)`` is the 34-layer variant).
"""

from __future__ import annotations

import torch
from torch import nn

from sparseconv import nn as snn
from sparseconv.models.blocks import ConvBlock, residual_stage
from sparseconv.nn.voxel_prune import cat_skip
from sparseconv.tensor import SparseTensor
from sparseconv.utils.threads import run_inference_threads

BASE_WIDTHS = (32, 32, 64, 128, 256, 256, 128, 96, 96)
MINKUNET18_BLOCKS = (2,) * 8
MINKUNET34_BLOCKS = (2, 3, 4, 6, 2, 2, 2, 2)


def scaled_widths(width: float, base: tuple[int, ...] = BASE_WIDTHS) -> list[int]:
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    return [max(1, int(round(c * width))) for c in base]


class MinkUNet(nn.Module):
    """Voxel segmentation network: ``forward(x)`` returns class logits per voxel ``[N, classes]``."""

    def __init__(
        self,
        in_channels: int = 4,
        num_classes: int = 19,
        width: float = 1.0,
        blocks: tuple[int, ...] = MINKUNET18_BLOCKS,
        widths: list[int] | None = None,
    ) -> None:
        super().__init__()
        # constructor arguments, so sparseconv.prune.load can rebuild the architecture
        self.init_kwargs = {
            "in_channels": in_channels, "num_classes": num_classes, "width": width,
            "blocks": list(blocks), "widths": widths,
        }  # fmt: skip
        if len(blocks) != 8:
            raise ValueError(f"blocks must give 8 stage depths (4 down, 4 up), got {blocks}")
        cs = list(widths) if widths is not None else scaled_widths(width)
        if len(cs) != 9:
            raise ValueError(f"widths must have 9 entries, got {len(cs)}")
        self.widths = cs
        self.stem = snn.Sequential(ConvBlock(in_channels, cs[0]), ConvBlock(cs[0], cs[0]))
        self.down = nn.ModuleList(
            snn.Sequential(
                ConvBlock(cs[i], cs[i], 2, 2), *residual_stage(cs[i], cs[i + 1], blocks[i])
            )
            for i in range(4)
        )
        # up stage j: transposed conv cs[4+j] -> cs[5+j], concat with encoder skip cs[3-j]
        self.up = nn.ModuleList(
            ConvBlock(cs[4 + j], cs[5 + j], 2, 2, transposed=True) for j in range(4)
        )
        self.fuse = nn.ModuleList(
            snn.Sequential(*residual_stage(cs[5 + j] + cs[3 - j], cs[5 + j], blocks[4 + j]))
            for j in range(4)
        )
        self.classifier = nn.Linear(cs[8], num_classes)

    def encode(self, x: SparseTensor) -> list[SparseTensor]:
        """Stem and encoder outputs at strides 1, 2, 4, 8, 16."""
        feats = [self.stem(x)]
        for stage in self.down:
            feats.append(stage(feats[-1]))
        return feats

    def decode_stage(self, j: int, y: SparseTensor, skip: SparseTensor) -> SparseTensor:
        # back on every skip voxel (after voxel pruning), skip features appended
        return self.fuse[j](cat_skip(self.up[j](y), skip))

    def forward(self, x: SparseTensor) -> torch.Tensor:
        # fewer threads while other processes hold the cores
        return run_inference_threads(self, self._forward, x)

    def _forward(self, x: SparseTensor) -> torch.Tensor:
        skips = self.encode(x)
        y = skips[4]
        for j in range(4):
            y = self.decode_stage(j, y, skips[3 - j])
        return self.classifier(y.feats)
