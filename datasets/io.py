"""Raw LiDAR file formats: KITTI/nuScenes ``.bin`` scans, SemanticKITTI ``.label`` files, PLY/PCD.

Every reader checks sizes against the format and raises a ``ValueError`` that names the file, so a
truncated download fails at the file instead of producing garbage points.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sparseconv.utils.optional import require


def read_bin_scan(path: str | os.PathLike, columns: int = 4) -> np.ndarray:
    """Float32 scan ``[N, columns]`` (SemanticKITTI/KITTI: 4 = x, y, z, remission; nuScenes: 5)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"scan file not found: {path}")
    size = path.stat().st_size
    row = 4 * columns
    if size % row:
        raise ValueError(
            f"{path}: size {size} bytes is not a multiple of {row} "
            f"({columns} float32 per point); the file is truncated or not this format"
        )
    return np.fromfile(path, dtype=np.float32).reshape(-1, columns)


def read_label_file(path: str | os.PathLike, n_points: int, dtype=np.uint32) -> np.ndarray:
    """Per-point labels (``uint32`` SemanticKITTI, ``uint8`` nuScenes-lidarseg) checked against the scan."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label file not found: {path}")
    itemsize = np.dtype(dtype).itemsize
    size = path.stat().st_size
    if size % itemsize or size // itemsize != n_points:
        raise ValueError(
            f"{path}: holds {size / itemsize:g} labels of {itemsize} bytes but its scan has "
            f"{n_points} points"
        )
    return np.fromfile(path, dtype=dtype)


def write_semantickitti_scan(
    sequence_dir: str | os.PathLike, index: int, points: np.ndarray, labels: np.ndarray
) -> None:
    """Write ``velodyne/NNNNNN.bin`` and ``labels/NNNNNN.label`` as SemanticKITTI ships them."""
    seq = Path(sequence_dir)
    if points.ndim != 2 or points.shape[1] != 4 or len(points) != len(labels):
        raise ValueError("points must be [N, 4] float32 and labels [N] uint32")
    (seq / "velodyne").mkdir(parents=True, exist_ok=True)
    (seq / "labels").mkdir(parents=True, exist_ok=True)
    points.astype(np.float32).tofile(seq / "velodyne" / f"{index:06d}.bin")
    labels.astype(np.uint32).tofile(seq / "labels" / f"{index:06d}.label")


def read_point_cloud_file(
    path: str | os.PathLike, label_field: str | None = "label"
) -> tuple[np.ndarray, np.ndarray | None]:
    """PLY/PCD through Open3D's tensor API: ``[N, 4]`` (x, y, z, intensity or 0) and labels or None.

    The intensity comes from an ``intensity`` (or ``remission``/``reflectance``) attribute when the
    file has one. ``label_field`` names a per-point integer attribute; a file without it gives
    ``None`` labels (unlabelled data), never a silent zero label.
    """
    o3d = require("open3d", "reading PLY/PCD files")

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"point cloud file not found: {path}")
    pcd = o3d.t.io.read_point_cloud(str(path))
    if "positions" not in pcd.point or len(pcd.point.positions) == 0:
        raise ValueError(f"{path}: no points could be read (empty or not a PLY/PCD file)")
    xyz = pcd.point.positions.numpy().astype(np.float32)
    inten = np.zeros((len(xyz), 1), np.float32)
    for name in ("intensity", "remission", "reflectance"):
        if name in pcd.point:
            inten = pcd.point[name].numpy().astype(np.float32).reshape(len(xyz), 1)
            break
    labels = None
    if label_field is not None and label_field in pcd.point:
        labels = pcd.point[label_field].numpy().reshape(-1).astype(np.int64)
    return np.concatenate([xyz, inten], 1), labels
