"""sparseconv: point-cloud sparse convolution for PyTorch (+ Triton, + C kernels on CPU).

import sparseconv as sc
x = sc.SparseTensor(feats, coords)            # coords int32 [N, 4] = (batch, x, y, z)
y = sc.nn.Conv3d(4, 32, kernel_size=3)(x)

``sc.datasets`` (readers, the synthetic scan generator) and ``sc.onnx`` (export, runtime) are
imported on first access, so that a conv-only user never loads their code; ``sparseconv.train``,
``sparseconv.bench`` and ``sparseconv.cli`` are tools built on the library and are imported
explicitly.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from sparseconv import functional, maps, models, nn, prune
from sparseconv.tensor import SparseTensor, sparse_collate
from sparseconv.voxelize import devoxelize, voxelize

__version__ = "0.1.0"

_LAZY_SUBMODULES = ("datasets", "onnx")

__all__ = [
    "SparseTensor",
    "datasets",
    "devoxelize",
    "functional",
    "maps",
    "models",
    "nn",
    "onnx",
    "prune",
    "sparse_collate",
    "voxelize",
]


def __getattr__(name: str) -> ModuleType:
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"sparseconv.{name}")
    raise AttributeError(f"module 'sparseconv' has no attribute {name!r}")
