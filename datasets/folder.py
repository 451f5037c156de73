"""Generic reader for a folder of PLY/PCD point clouds (Open3D), with an optional label field."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sparseconv.datasets.base import ScanDataset
from sparseconv.datasets.io import read_point_cloud_file
from sparseconv.datasets.labels import IGNORE_INDEX


class PointCloudFolder(ScanDataset):
    """Every ``*.ply`` / ``*.pcd`` under ``root`` (sorted). Labels come from the per-point
    attribute ``label_field`` as train ids already (``label_map`` maps raw ids if given); files
    without it are unlabelled (``IGNORE_INDEX``). ``num_classes`` must be given for training."""

    def __init__(
        self,
        root: str | os.PathLike,
        label_field: str | None = "label",
        num_classes: int = 0,
        label_map: np.ndarray | None = None,
        voxel_size: float = 0.05,
        **kwargs,
    ) -> None:
        super().__init__(voxel_size, **kwargs)
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"point cloud folder not found: {root}")
        self.files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".ply", ".pcd"))
        if not self.files:
            raise FileNotFoundError(f"no .ply or .pcd files under {root}")
        self.label_field, self.label_map = label_field, label_map
        self.num_classes = num_classes

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        points, labels = read_point_cloud_file(self.files[index], self.label_field)
        if labels is None:
            return points, np.full(len(points), IGNORE_INDEX, np.int64)
        if self.label_map is not None:
            return points, self.label_map[labels].astype(np.int64)
        return points, labels
