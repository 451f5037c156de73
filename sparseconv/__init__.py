"""sparseconv: point-cloud sparse convolution for PyTorch (+ Triton).

import sparseconv as sc
x = sc.SparseTensor(feats, coords)            # coords int32 [N, 4] = (batch, x, y, z)
y = sc.nn.Conv3d(4, 32, kernel_size=3)(x)
"""

from sparseconv import functional, maps, models, nn, prune
from sparseconv.tensor import SparseTensor, sparse_collate
from sparseconv.voxelize import devoxelize, voxelize

__version__ = "0.1.0"

__all__ = [
    "SparseTensor",
    "devoxelize",
    "functional",
    "maps",
    "models",
    "nn",
    "prune",
    "sparse_collate",
    "voxelize",
]
