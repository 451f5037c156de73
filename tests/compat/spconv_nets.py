"""Networks written once against spconv's API (``spconv`` is a module: the real one or ours).

``voxel_backbone_8x`` follows OpenPCDet's ``VoxelBackBone8x`` (SECOND, PV-RCNN, CenterPoint) and
``sp_unet`` Pointcept's ``SpUNet``: the layer types, kernel sizes, strides, paddings and
``indice_key`` sharing of those networks, at their channel widths (the UNet narrower).
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
from torch import nn

KITTI_RANGE = (0.0, -40.0, -3.0, 70.4, 40.0, 1.0)
KITTI_VOXEL = (0.05, 0.05, 0.1)


def _block(spconv, c_in, c_out, k, indice_key, stride=1, padding=0, conv_type="subm"):
    norm = partial(nn.BatchNorm1d, eps=1e-3, momentum=0.01)
    if conv_type == "subm":
        conv = spconv.SubMConv3d(c_in, c_out, k, bias=False, indice_key=indice_key)
    else:
        conv = spconv.SparseConv3d(c_in, c_out, k, stride=stride, padding=padding, bias=False,
                                   indice_key=indice_key)  # fmt: skip
    return spconv.SparseSequential(conv, norm(c_out), nn.ReLU())


class VoxelBackBone8x(nn.Module):
    def __init__(self, spconv, c_in: int = 4) -> None:
        super().__init__()
        b = partial(_block, spconv)
        self.spconv = spconv
        self.conv_input = spconv.SparseSequential(
            spconv.SubMConv3d(c_in, 16, 3, padding=1, bias=False, indice_key="subm1"),
            nn.BatchNorm1d(16, eps=1e-3, momentum=0.01),
            nn.ReLU(),
        )
        self.conv1 = spconv.SparseSequential(b(16, 16, 3, "subm1"))
        self.conv2 = spconv.SparseSequential(
            b(16, 32, 3, "spconv2", stride=2, padding=1, conv_type="spconv"),
            b(32, 32, 3, "subm2"),
            b(32, 32, 3, "subm2"),
        )
        self.conv3 = spconv.SparseSequential(
            b(32, 64, 3, "spconv3", stride=2, padding=1, conv_type="spconv"),
            b(64, 64, 3, "subm3"),
            b(64, 64, 3, "subm3"),
        )
        self.conv4 = spconv.SparseSequential(
            b(64, 64, 3, "spconv4", stride=2, padding=(0, 1, 1), conv_type="spconv"),
            b(64, 64, 3, "subm4"),
            b(64, 64, 3, "subm4"),
        )
        self.conv_out = spconv.SparseSequential(
            spconv.SparseConv3d(
                64,
                128,
                (3, 1, 1),
                stride=(2, 1, 1),
                padding=0,
                bias=False,
                indice_key="spconv_down2",
            ),  # fmt: skip
            nn.BatchNorm1d(128, eps=1e-3, momentum=0.01),
            nn.ReLU(),
        )
        self.to_dense = spconv.ToDense()

    def forward(self, x):
        x = self.conv1(self.conv_input(x))
        x = self.conv4(self.conv3(self.conv2(x)))
        return self.to_dense(self.conv_out(x))


class SpUNet(nn.Module):
    """Stem k5, then per stage k2 s2 down + a submanifold block; back up by inverse convs on the
    down convs' keys, concatenating the skips; a 1x1x1 head with bias."""

    def __init__(self, spconv, c_in: int = 4, widths=(16, 32, 48), classes: int = 5) -> None:
        super().__init__()
        b = partial(_block, spconv)
        norm = partial(nn.BatchNorm1d, eps=1e-3, momentum=0.01)
        self.stem = spconv.SparseSequential(
            spconv.SubMConv3d(c_in, widths[0], 5, padding=1, bias=False, indice_key="stem"),
            norm(widths[0]),
            nn.ReLU(),
        )
        self.down, self.enc, self.up, self.dec = (nn.ModuleList() for _ in range(4))
        for s in range(1, len(widths)):
            self.down.append(b(widths[s - 1], widths[s], 2, f"spconv{s}", stride=2,
                               conv_type="spconv"))  # fmt: skip
            self.enc.append(b(widths[s], widths[s], 3, f"subm{s}"))
            self.up.append(spconv.SparseSequential(
                spconv.SparseInverseConv3d(widths[s], widths[s - 1], 2, indice_key=f"spconv{s}",
                                           bias=False),
                norm(widths[s - 1]), nn.ReLU(),
            ))  # fmt: skip
            self.dec.append(b(2 * widths[s - 1], widths[s - 1], 3, f"subm{s - 1}"))
        self.head = spconv.SubMConv3d(widths[0], classes, 1, bias=True, indice_key="head")

    def forward(self, x):
        skips = [self.stem(x)]
        for down, enc in zip(self.down, self.enc):
            skips.append(enc(down(skips[-1])))
        y = skips[-1]
        for s in reversed(range(len(self.up))):
            y = self.up[s](y)
            y = y.replace_feature(torch.cat([y.features, skips[s].features], 1))
            y = self.dec[s](y)
        return self.head(y).features


def randomise_norms(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics and affine terms, so eval mode is not the identity."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


def kitti_voxels(points: torch.Tensor):
    """SECOND's voxels of a KITTI scan: mean point features, indices (batch, z, y, x) and the
    spatial shape ``[41, 1600, 1408]`` (OpenPCDet adds one cell in z)."""
    lo = torch.tensor(KITTI_RANGE[:3])
    hi = torch.tensor(KITTI_RANGE[3:])
    size = torch.tensor(KITTI_VOXEL)
    keep = ((points[:, :3] >= lo) & (points[:, :3] < hi)).all(1)
    pts = points[keep]
    cell = ((pts[:, :3] - lo) / size).floor().long()
    grid = ((hi - lo) / size).round().long()
    key = (cell[:, 2] * grid[1] + cell[:, 1]) * grid[0] + cell[:, 0]
    uniq, inverse = torch.unique(key, return_inverse=True)
    feats = torch.zeros(len(uniq), pts.shape[1]).index_add_(0, inverse, pts)
    feats /= torch.bincount(inverse, minlength=len(uniq))[:, None].float()
    z = uniq // (grid[1] * grid[0])
    y = (uniq // grid[0]) % grid[1]
    x = uniq % grid[0]
    indices = torch.stack([torch.zeros_like(z), z, y, x], 1).int()
    shape = [int(grid[2]) + 1, int(grid[1]), int(grid[0])]
    return feats, indices, shape


def scan_voxels(points: torch.Tensor, voxel: float = 0.05):
    """Segmentation voxels of a scan (5 cm, every point): mean features, shifted to be >= 0."""
    cell = (points[:, :3] / voxel).floor().long()
    cell -= cell.amin(0)
    ext = cell.amax(0) + 1
    key = (cell[:, 0] * ext[1] + cell[:, 1]) * ext[2] + cell[:, 2]
    uniq, inverse = torch.unique(key, return_inverse=True)
    feats = torch.zeros(len(uniq), points.shape[1]).index_add_(0, inverse, points)
    feats /= torch.bincount(inverse, minlength=len(uniq))[:, None].float()
    xyz = torch.stack([uniq // (ext[1] * ext[2]), (uniq // ext[2]) % ext[1], uniq % ext[2]], 1)
    indices = torch.cat([torch.zeros(len(uniq), 1, dtype=torch.long), xyz], 1).int()
    shape = (np.asarray(ext) + 8).tolist()
    return feats, indices, shape
