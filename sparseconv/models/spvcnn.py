"""``SPVCNN``: MinkUNet's voxel backbone plus a point branch (SPVNAS, Tang et al. 2020).

The points keep their own features at full resolution. At the stem, after the encoder and after
the second and fourth decoder stages, voxel features are interpolated to the points (trilinear
devoxelisation), a per-point MLP of the previous point features is added, and the sum is averaged
back into the voxels that the next stage consumes. Fine details lost by coarse voxels survive on
the point branch, which is what the classifier reads: ``forward`` returns logits per **point**.
"""

from __future__ import annotations

import torch
from torch import nn

from sparseconv.models.minkunet import MINKUNET18_BLOCKS, MinkUNet
from sparseconv.tensor import SparseTensor
from sparseconv.utils.threads import run_inference_threads
from sparseconv.voxelize import devoxelize, points_to_voxels


def _point_mlp(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(c_in, c_out), nn.BatchNorm1d(c_out), nn.ReLU(True))


class SPVCNN(MinkUNet):
    """``forward(x, points, voxel_size)``: ``points`` ``[N, 4]`` = (batch, x, y, z) in metres."""

    def __init__(
        self,
        in_channels: int = 4,
        num_classes: int = 19,
        width: float = 1.0,
        blocks: tuple[int, ...] = MINKUNET18_BLOCKS,
        widths: list[int] | None = None,
        dropout: float = 0.3,
    ) -> None:
        super().__init__(in_channels, num_classes, width, blocks, widths)
        self.init_kwargs["dropout"] = dropout
        cs = self.widths
        self.point_mlps = nn.ModuleList(
            [_point_mlp(cs[0], cs[4]), _point_mlp(cs[4], cs[6]), _point_mlp(cs[6], cs[8])]
        )
        self.dropout = nn.Dropout(dropout)

    def _fuse(self, x: SparseTensor, points, voxel_size, point_feats, mlp) -> torch.Tensor:
        """Voxel features to the points, plus the point branch's MLP of its previous features."""
        z = devoxelize(x, None, "trilinear", points, voxel_size)
        return z + mlp(point_feats) if mlp is not None else z

    def forward(  # type: ignore[override]
        self, x: SparseTensor, points: torch.Tensor, voxel_size: float = 0.05
    ) -> torch.Tensor:
        # fewer threads while other processes hold the cores
        return run_inference_threads(self, self._forward, x, points, voxel_size)

    def _forward(self, x: SparseTensor, points: torch.Tensor, voxel_size: float) -> torch.Tensor:
        x0 = self.stem(x)
        z0 = self._fuse(x0, points, voxel_size, None, None)
        skips = [points_to_voxels(x0, points, z0, voxel_size)]
        for stage in self.down:
            skips.append(stage(skips[-1]))
        z1 = self._fuse(skips[4], points, voxel_size, z0, self.point_mlps[0])
        y = points_to_voxels(skips[4], points, z1, voxel_size)
        y = y.replace_feats(self.dropout(y.feats))
        y = self.decode_stage(1, self.decode_stage(0, y, skips[3]), skips[2])
        z2 = self._fuse(y, points, voxel_size, z1, self.point_mlps[1])
        y = points_to_voxels(y, points, z2, voxel_size)
        y = y.replace_feats(self.dropout(y.feats))
        y = self.decode_stage(3, self.decode_stage(2, y, skips[1]), skips[0])
        z3 = self._fuse(y, points, voxel_size, z2, self.point_mlps[2])
        return self.classifier(z3)
