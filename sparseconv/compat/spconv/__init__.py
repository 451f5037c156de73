"""spconv 2.x's user API on sparseconv: ``import sparseconv.compat.spconv as spconv`` in place of
``import spconv.pytorch as spconv``.

Covered: ``SparseConvTensor`` (``features``, ``indices``, ``spatial_shape``, ``batch_size``,
``indice_dict``, ``dense()``, ``replace_feature``), ``SubMConv3d``, ``SparseConv3d``,
``SparseConvTranspose3d``, ``SparseInverseConv3d``, ``SparseMaxPool3d``, ``SparseSequential``,
``SparseModule``, ``ToDense``, ``RemoveGrid``, ``SparseReLU``, ``SparseBatchNorm``, ``ConvAlgo``.
Parameter names and weight layout are spconv's, so its ``state_dict`` loads unchanged; spconv's
performance arguments (``algo``, ``fp32_accum``, ...) are accepted and not used; what cannot be
reproduced (``groups``, fused ``act_type``, ``record_voxel_count``, 1-D/2-D/4-D convs, even
submanifold kernels) raises an error naming the argument. See ``docs/porting.md``.
"""

from sparseconv.compat.spconv.conv import (
    SparseConv3d,
    SparseConvolution,
    SparseConvTranspose3d,
    SparseInverseConv3d,
    SubMConv3d,
)
from sparseconv.compat.spconv.modules import (
    ConvAlgo,
    RemoveGrid,
    SparseBatchNorm,
    SparseModule,
    SparseReLU,
    SparseSequential,
    ToDense,
    is_spconv_module,
)
from sparseconv.compat.spconv.pool import SparseMaxPool3d
from sparseconv.compat.spconv.tensor import IndiceData, SparseConvTensor

__all__ = [
    "ConvAlgo",
    "IndiceData",
    "RemoveGrid",
    "SparseBatchNorm",
    "SparseConv3d",
    "SparseConvTensor",
    "SparseConvTranspose3d",
    "SparseConvolution",
    "SparseInverseConv3d",
    "SparseMaxPool3d",
    "SparseModule",
    "SparseReLU",
    "SparseSequential",
    "SubMConv3d",
    "ToDense",
    "is_spconv_module",
]
