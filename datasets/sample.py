"""One scan made ready for a network (voxels, voxel labels, point-to-voxel map) and batching.

A ``Sample`` keeps every original point with its label and the index of its voxel, so that
predictions are scored on the original points (the official SemanticKITTI metric), including
points of voxels dropped by the training voxel cap (their index is -1 and they are not scored
during training).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from sparseconv.datasets.labels import IGNORE_INDEX
from sparseconv.tensor import SparseTensor
from sparseconv.voxelize import voxelize


@dataclass
class Sample:
    points: torch.Tensor  # [N, C] float32: x, y, z (metres), then features (remission, ...)
    point_labels: torch.Tensor  # [N] int64 train ids, IGNORE_INDEX for unlabelled points
    coords: torch.Tensor  # [V, 4] int32 (0, x, y, z) voxel coordinates
    feats: torch.Tensor  # [V, C] float32 mean of the voxel's point features
    voxel_labels: torch.Tensor  # [V] int64 majority label of the voxel's points
    p2v: torch.Tensor  # [N] int64 voxel of each point, -1 for points not voxelised
    name: str = ""


def voxelize_sample(
    points: np.ndarray,
    labels: np.ndarray,
    voxel_size: float,
    max_voxels: int | None = None,
    rng: np.random.Generator | None = None,
    num_classes: int = 256,
    name: str = "",
) -> Sample:
    """Quantise one scan; with ``max_voxels`` keep a random subset of voxels (training memory cap)."""
    pts = torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32))
    lab = torch.from_numpy(labels.astype(np.int64))
    x, p2v = voxelize(pts[:, :3], voxel_size, features=pts, reduce="mean")
    n_vox = len(x)
    # majority label per voxel (ignored points do not vote unless nothing else is there)
    valid = (p2v >= 0) & (lab != IGNORE_INDEX)
    votes = torch.zeros(n_vox * num_classes, dtype=torch.int32)
    votes.index_add_(
        0, p2v[valid] * num_classes + lab[valid], torch.ones_like(lab[valid], dtype=torch.int32)
    )
    votes = votes.view(n_vox, num_classes)
    voxel_labels = torch.where(votes.amax(1) > 0, votes.argmax(1), torch.tensor(IGNORE_INDEX))
    coords, feats = x.coords, x.feats
    if max_voxels is not None and n_vox > max_voxels:
        rng = rng or np.random.default_rng()
        keep = torch.from_numpy(np.sort(rng.choice(n_vox, max_voxels, replace=False)))
        new_index = torch.full((n_vox,), -1, dtype=torch.long)
        new_index[keep] = torch.arange(max_voxels)
        coords, feats, voxel_labels = coords[keep], feats[keep], voxel_labels[keep]
        p2v = torch.where(p2v >= 0, new_index[p2v.clamp(min=0)], p2v)
    return Sample(pts, lab, coords, feats, voxel_labels, p2v, name)


@dataclass
class Batch:
    """Several samples as one batched ``SparseTensor`` plus the per-point bookkeeping."""

    x: SparseTensor
    voxel_labels: torch.Tensor
    points: torch.Tensor  # [N, 4] (batch, x, y, z) metres, for point-based models (SPVCNN)
    point_labels: torch.Tensor
    p2v: torch.Tensor  # into the batched voxels; -1 for points not voxelised
    names: list[str] = field(default_factory=list)

    def to(self, device) -> Batch:
        return Batch(
            self.x.to(device), self.voxel_labels.to(device), self.points.to(device),
            self.point_labels.to(device), self.p2v.to(device), self.names,
        )  # fmt: skip


def collate(samples: list[Sample]) -> Batch:
    """``torch.utils.data.DataLoader`` collate function: batch index = position in the list."""
    if not samples:
        raise ValueError("collate needs at least one sample")
    coords, p2v, points, offset = [], [], [], 0
    for b, s in enumerate(samples):
        c = s.coords.clone()
        c[:, 0] = b
        coords.append(c)
        p2v.append(torch.where(s.p2v >= 0, s.p2v + offset, s.p2v))
        points.append(torch.cat([torch.full((len(s.points), 1), float(b)), s.points[:, :3]], 1))
        offset += len(s.coords)
    x = SparseTensor(torch.cat([s.feats for s in samples]), torch.cat(coords), check=False)
    return Batch(
        x,
        torch.cat([s.voxel_labels for s in samples]),
        torch.cat(points),
        torch.cat([s.point_labels for s in samples]),
        torch.cat(p2v),
        [s.name for s in samples],
    )
