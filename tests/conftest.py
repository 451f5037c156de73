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
