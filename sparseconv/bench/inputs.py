"""Benchmark inputs: the real scans of ``shared/data`` and synthetic LiDAR-like scenes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

import sparseconv as sc


def default_data_dir() -> Path:
    """``../shared/data`` next to the repository (where the real scans live), else ``./data``."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent.parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return Path("data")


def real_scans(data_dir: Path | None = None) -> dict[str, Path]:
    data_dir = data_dir or default_data_dir()
    found = {}
    kitti = data_dir / "semantickitti" / "sequences" / "08" / "velodyne" / "000000.bin"
    if kitti.exists():
        found["semantickitti-08-000000"] = kitti
    return found


def load_scan_coords(path: Path, voxel_size: float = 0.05) -> torch.Tensor:
    pts = np.fromfile(path, dtype=np.float32).reshape(-1, 4)
    x, _ = sc.voxelize(torch.from_numpy(pts[:, :3]), voxel_size)
    return x.coords


def synthetic_coords(n_voxels: int, seed: int = 0) -> torch.Tensor:
    """About ``n_voxels`` voxels sampled on surfaces (ground, walls, boxes) like a LiDAR sweep.

    Points are drawn on a ground plane and on vertical walls around the sensor, with density
    falling with range, then voxelised at 5 cm; the count is grown until it reaches the target.
    """
    g = np.random.default_rng(seed)
    n_pts = int(n_voxels * 1.6)
    coords = None
    for _ in range(6):
        r = 3 + 60 * np.sqrt(g.random(n_pts))
        a = g.random(n_pts) * 2 * math.pi
        on_wall = g.random(n_pts) < 0.35
        z = np.where(on_wall, g.random(n_pts) * 6, -1.7 + 0.02 * g.standard_normal(n_pts))
        r = np.where(on_wall, np.round(r / 15) * 15 + 4, r)
        pts = np.stack([r * np.cos(a), r * np.sin(a), z], 1).astype(np.float32)
        x, _ = sc.voxelize(torch.from_numpy(pts), 0.05)
        coords = x.coords
        if len(coords) >= n_voxels:
            keep = torch.randperm(len(coords), generator=torch.Generator().manual_seed(seed))[
                :n_voxels
            ]
            return coords[keep.sort().values]
        n_pts = int(n_pts * 1.5 * n_voxels / max(len(coords), 1))
    return coords
