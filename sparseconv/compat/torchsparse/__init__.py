"""TorchSparse 2.1's user API on sparseconv: ``import sparseconv.compat.torchsparse as torchsparse``
(and ``import sparseconv.compat.torchsparse.nn as spnn``) in place of ``import torchsparse``.

Covered: ``SparseTensor(feats, coords, stride)`` (batch-first coordinates, ``.F``, ``.C``,
``.s``), ``cat``, ``nn.Conv3d`` (parameter ``kernel`` in TorchSparse's layout and offset order),
``nn.BatchNorm``, ``nn.GroupNorm``, ``nn.ReLU``, ``nn.LeakyReLU``, ``nn.SiLU``, ``nn.Dropout``,
``nn.GlobalAvgPool``, ``nn.GlobalMaxPool``, ``utils.quantize.sparse_quantize``,
``utils.collate.sparse_collate`` / ``sparse_collate_fn``. See ``docs/porting.md``.
"""

from sparseconv.compat.torchsparse import nn, utils
from sparseconv.compat.torchsparse.tensor import SparseTensor, cat

__all__ = ["SparseTensor", "cat", "nn", "utils"]
