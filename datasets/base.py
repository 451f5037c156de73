"""Common dataset behaviour: load a scan, augment it, voxelise it (``ScanDataset``)."""

from __future__ import annotations

import numpy as np
import torch

from sparseconv.datasets.sample import Sample, voxelize_sample
from sparseconv.datasets.transforms import Transform


class ScanDataset(torch.utils.data.Dataset):
    """Subclasses list their scans in ``self.files`` and implement ``load(i) -> (points, labels)``.

    ``points`` is float32 ``[N, 4]`` (x, y, z in metres, intensity in 0..1) and ``labels`` int64
    train ids with ``IGNORE_INDEX`` for unlabelled points. ``transforms`` (training augmentation)
    draws from a generator seeded by ``seed`` and the epoch, so runs are reproducible.
    """

    num_classes: int = 0
    class_names: tuple[str, ...] = ()

    def __init__(
        self,
        voxel_size: float = 0.05,
        transforms: Transform | None = None,
        max_voxels: int | None = None,
        seed: int = 0,
    ) -> None:
        if not voxel_size > 0:
            raise ValueError(f"voxel_size must be > 0, got {voxel_size}")
        if max_voxels is not None and max_voxels < 1:
            raise ValueError(f"max_voxels must be >= 1 or None, got {max_voxels}")
        self.voxel_size = voxel_size
        self.transforms = transforms
        self.max_voxels = max_voxels
        self.seed = seed
        self.epoch = 0
        self.files: list = []

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def name(self, index: int) -> str:
        return str(self.files[index])

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draw (call once per epoch, as with a DistributedSampler)."""
        self.epoch = epoch

    def __getitem__(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} scans")
        index %= len(self)
        points, labels = self.load(index)
        rng = np.random.default_rng((self.seed, self.epoch, index))
        if self.transforms is not None:
            points, keep = self.transforms(points, rng)
            if keep is not None and not keep.all():
                points, labels = points[keep], labels[keep]
        return voxelize_sample(
            points, labels, self.voxel_size, self.max_voxels, rng, max(self.num_classes, 1),
            self.name(index),
        )  # fmt: skip

    def label_histogram(self) -> np.ndarray:
        """Points per class over the whole dataset (``[num_classes]``; ignored points left out)."""
        counts = np.zeros(self.num_classes, dtype=np.int64)
        for i in range(len(self)):
            labels = self.load(i)[1]
            labels = labels[labels < self.num_classes]
            counts += np.bincount(labels, minlength=self.num_classes)
        return counts
