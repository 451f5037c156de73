"""nuScenes-lidarseg reader: ``samples/LIDAR_TOP/*.pcd.bin`` with uint8 lidarseg labels.

Labels are found through the dataset's own metadata (``<version>/lidarseg.json`` links each
``sample_data`` token to its ``lidarseg/<version>/<token>_lidarseg.bin``; ``sample_data.json``
gives the token's scan file), the same join the nuScenes devkit makes. Without the metadata the
scans are read unlabelled (every label ``IGNORE_INDEX``). Intensity (0-255) is scaled to 0-1 so
models trained on SemanticKITTI-style remission see the same range; the ring index is dropped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from sparseconv.datasets.base import ScanDataset
from sparseconv.datasets.io import read_bin_scan, read_label_file
from sparseconv.datasets.labels import IGNORE_INDEX, NUSCENES_CLASSES, nuscenes_learning_map


class NuScenesLidarSeg(ScanDataset):
    num_classes = len(NUSCENES_CLASSES)
    class_names = NUSCENES_CLASSES

    def __init__(
        self,
        root: str | os.PathLike,
        version: str = "v1.0-trainval",
        voxel_size: float = 0.05,
        require_labels: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(voxel_size, **kwargs)
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"nuScenes root not found: {root}")
        self.root = root
        self.files = sorted((root / "samples" / "LIDAR_TOP").glob("*.pcd.bin"))
        if not self.files:
            raise FileNotFoundError(f"no .pcd.bin scans under {root / 'samples' / 'LIDAR_TOP'}")
        self.label_files = self._label_index(root, version)
        if require_labels and not self.label_files:
            # without it every point would be "ignore" and training would learn nothing
            raise FileNotFoundError(
                f"nuScenes lidarseg metadata not found under {root / version} "
                "(lidarseg.json and sample_data.json); give the version folder that has them"
            )
        self.lut = nuscenes_learning_map()

    @staticmethod
    def _label_index(root: Path, version: str) -> dict[str, Path]:
        meta = root / version
        if not (meta / "lidarseg.json").exists() or not (meta / "sample_data.json").exists():
            return {}
        scans = {
            r["token"]: r["filename"] for r in json.loads((meta / "sample_data.json").read_text())
        }
        out = {}
        for rec in json.loads((meta / "lidarseg.json").read_text()):
            scan = scans.get(rec["sample_data_token"])
            if scan is not None:
                out[Path(scan).name] = root / rec["filename"]
        return out

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        raw = read_bin_scan(self.files[index], 5)
        points = np.concatenate([raw[:, :3], raw[:, 3:4] / 255.0], 1).astype(np.float32)
        label_path = self.label_files.get(self.files[index].name)
        if label_path is None:
            return points, np.full(len(points), IGNORE_INDEX, np.int64)
        labels = read_label_file(label_path, len(points), np.uint8)
        return points, self.lut[labels].astype(np.int64)
