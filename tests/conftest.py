"""Test set-up: Triton kernels run in the interpreter on CPU-only machines."""

import os
from pathlib import Path

import torch

if not torch.cuda.is_available():
    # Must be set before any @triton.jit function is created (i.e. before sparseconv.kernels loads).
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
KITTI_SCAN = DATA / "semantickitti" / "sequences" / "08" / "velodyne" / "000000.bin"


@pytest.fixture
def real_scan_points() -> torch.Tensor:
    if not KITTI_SCAN.exists():
        pytest.skip(f"real scans not found at {DATA} (see shared/data/README.md)")
    import numpy as np

    return torch.from_numpy(np.fromfile(KITTI_SCAN, dtype=np.float32).reshape(-1, 4))


@pytest.fixture
def kitti_root() -> Path:
    root = DATA / "semantickitti"
    if not (root / "sequences").is_dir():
        pytest.skip(f"real scans not found at {DATA} (see shared/data/README.md)")
    return root


def write_tiny_kitti(root: Path, n_train: int = 3, n_val: int = 1, n_points: int = 3000) -> Path:
    """A small SemanticKITTI-format dataset: labelled planes and boxes, quick to train on."""
    import numpy as np

    from sparseconv.datasets.io import write_semantickitti_scan

    rng = np.random.default_rng(0)
    for seq, n in (("00", n_train), ("08", n_val)):
        for i in range(n):
            ground = np.c_[rng.uniform(-10, 10, (n_points, 2)), rng.normal(0, 0.02, n_points)]
            box = rng.uniform([-2, -2, 0.2], [2, 2, 2.0], (n_points // 2, 3))
            xyz = np.concatenate([ground, box]).astype(np.float32)
            pts = np.c_[xyz, rng.uniform(0, 1, len(xyz))].astype(np.float32)
            labels = np.r_[np.full(n_points, 40), np.full(n_points // 2, 10)].astype(np.uint32)
            write_semantickitti_scan(root / "sequences" / seq, i, pts, labels)
    return root


@pytest.fixture
def tiny_kitti(tmp_path) -> Path:
    return write_tiny_kitti(tmp_path / "kitti")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` are skipped (not failed) where there is no CUDA device."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
