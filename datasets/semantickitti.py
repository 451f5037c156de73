"""SemanticKITTI reader (``sequences/NN/velodyne/*.bin`` + ``labels/*.label``), official splits."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from sparseconv.datasets.base import ScanDataset
from sparseconv.datasets.io import read_bin_scan, read_label_file
from sparseconv.datasets.labels import (
    IGNORE_INDEX,
    SEMANTICKITTI_CLASSES,
    semantickitti_learning_map,
)

SPLITS = {
    "train": ("00", "01", "02", "03", "04", "05", "06", "07", "09", "10"),
    "val": ("08",),
    "test": tuple(f"{i:02d}" for i in range(11, 22)),
}


class SemanticKITTI(ScanDataset):
    """Scans of the split's sequences under ``root/sequences`` (``sequences`` overrides the split).

    Sequences of the split that are absent on disk are skipped (a partial download works), but a
    split with no scan at all is an error. Labels are mapped to the 19 training classes with the
    official learning map; the test split (and any scan without a ``.label``) is all
    ``IGNORE_INDEX`` (255).
    """

    num_classes = len(SEMANTICKITTI_CLASSES)
    class_names = SEMANTICKITTI_CLASSES

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        voxel_size: float = 0.05,
        sequences: tuple[str, ...] | None = None,
        **kwargs,
    ) -> None:
        super().__init__(voxel_size, **kwargs)
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"SemanticKITTI root not found: {root}")
        if sequences is None:
            if split not in SPLITS:
                raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
            sequences = SPLITS[split]
        self.root, self.split = root, split
        for seq in sequences:
            self.files += sorted((root / "sequences" / seq / "velodyne").glob("*.bin"))
        if not self.files:
            raise FileNotFoundError(
                f"no scans for split {split!r} (sequences {', '.join(sequences)}) under "
                f"{root / 'sequences'}/NN/velodyne/"
            )
        self.lut = semantickitti_learning_map()

    def label_path(self, index: int) -> Path:
        scan = self.files[index]
        return scan.parent.parent / "labels" / (scan.stem + ".label")

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        points = read_bin_scan(self.files[index], 4)
        path = self.label_path(index)
        if self.split == "test" or not path.exists():
            return points, np.full(len(points), IGNORE_INDEX, np.int64)
        raw = read_label_file(path, len(points), np.uint32)
        return points, self.lut[raw & 0xFFFF].astype(np.int64)

    def name(self, index: int) -> str:
        scan = self.files[index]
        return f"{scan.parent.parent.name}/{scan.stem}"
