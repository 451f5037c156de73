"""Dataset readers, the synthetic LiDAR generator, transforms and collation (``sparseconv.datasets``).

Every reader yields :class:`Sample` objects (voxels, voxel labels, and every original point with
its label and voxel index); :func:`collate` batches them into one ``SparseTensor``.
"""

from sparseconv.datasets.base import ScanDataset
from sparseconv.datasets.folder import PointCloudFolder
from sparseconv.datasets.labels import (
    IGNORE_INDEX,
    NUSCENES_CLASSES,
    SEMANTICKITTI_CLASSES,
    nuscenes_learning_map,
    semantickitti_learning_map,
)
from sparseconv.datasets.nuscenes import NuScenesLidarSeg
from sparseconv.datasets.sample import Batch, Sample, collate, voxelize_sample
from sparseconv.datasets.semantickitti import SPLITS, SemanticKITTI
from sparseconv.datasets.synthetic import SceneConfig, synthesize_scan, write_synthetic_dataset
from sparseconv.datasets.transforms import (
    Compose,
    Jitter,
    RandomFlip,
    RandomRotateZ,
    RandomScale,
    RangeCrop,
    default_train_transforms,
)

__all__ = [
    "IGNORE_INDEX", "NUSCENES_CLASSES", "SEMANTICKITTI_CLASSES", "SPLITS", "Batch", "Compose",
    "Jitter", "NuScenesLidarSeg", "PointCloudFolder", "RandomFlip", "RandomRotateZ", "RandomScale",
    "RangeCrop", "Sample", "ScanDataset", "SceneConfig", "SemanticKITTI", "collate",
    "default_train_transforms", "nuscenes_learning_map", "semantickitti_learning_map",
    "synthesize_scan", "voxelize_sample", "write_synthetic_dataset",
]  # fmt: skip
