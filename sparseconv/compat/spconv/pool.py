"""spconv's ``SparseMaxPool3d``: the maximum over each output's window, spconv's geometry."""

from __future__ import annotations

from sparseconv.compat.spconv.conv import build_indice_data
from sparseconv.compat.spconv.modules import SparseModule
from sparseconv.compat.spconv.tensor import SparseConvTensor
from sparseconv.maps.offsets import as_triple
from sparseconv.nn.pooling import pool_features


class SparseMaxPool3d(SparseModule):
    """Outputs as ``SparseConv3d``'s (stride defaults to the kernel size); with an
    ``indice_key`` a ``SparseInverseConv3d`` can return to the pool's inputs. Like spconv's
    (whose pooled features start at zero), the result is ``max(0, window maximum)``."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, indice_key=None,
                 algo=None, record_voxel_count: bool = False, name=None) -> None:  # fmt: skip
        super().__init__(name)
        if record_voxel_count:
            raise ValueError("sparseconv.compat.spconv does not support: record_voxel_count=True")
        self.kernel_size = as_triple(kernel_size, "kernel_size")
        self.stride = as_triple(stride, "stride") if stride is not None else self.kernel_size
        self.padding = as_triple(padding, "padding", minimum=0)
        self.dilation = as_triple(dilation, "dilation")
        self.indice_key = indice_key

    def forward(self, input: SparseConvTensor) -> SparseConvTensor:
        x = input.native()
        data = input.find_indice_pair(self.indice_key)
        if data is None or data.is_subm:
            data = build_indice_data(input, x, self.kernel_size, self.stride, self.padding,
                                     self.dilation)  # fmt: skip
            if self.indice_key is not None:
                input.indice_dict[self.indice_key] = data
        # spconv's max pool starts every output at zero, so a negative maximum reads 0
        feats = pool_features(x.feats, data.kernel_map, "amax").clamp_min(0)
        out_stride = tuple(a * b for a, b in zip(x.stride, self.stride))
        return SparseConvTensor._derived(input, feats, data.out_indices, out_stride,
                                         data.out_spatial_shape)  # fmt: skip
