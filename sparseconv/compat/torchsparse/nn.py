"""``torchsparse.nn`` (``spnn``): Conv3d, BatchNorm, ReLU, ... with TorchSparse's parameters.

``Conv3d`` keeps TorchSparse's parameter ``kernel``: ``[K, Cin, Cout]``, or ``[Cin, Cout]`` for a
1x1x1 conv, offsets x fastest for an odd kernel volume and x-major for an even one (TorchSparse's
``get_kernel_offsets``), so a TorchSparse ``state_dict`` loads unchanged. A strided conv reads
``o + (delta - (k - 1) // 2) * dilation`` like TorchSparse (its offsets are centred for every
stride), which in sparseconv is the Minkowski output rule with ``padding = (k - 1) // 2 *
dilation``; a transposed conv returns onto the coordinates of the strided conv it inverts.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sparseconv.compat.torchsparse.tensor import SparseTensor
from sparseconv.functional.conv import conv3d
from sparseconv.maps.offsets import as_triple
from sparseconv.nn import pooling
from sparseconv.nn.conv import init_fan_in_
from sparseconv.nn.convert import from_minkowski
from sparseconv.tensor import SparseTensor as NativeTensor


class Conv3d(nn.Module):
    """``spnn.Conv3d(in, out, kernel_size=3, stride=1, padding=0, dilation=1, bias=False,
    transposed=False, generative=False, config=None)``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=0,
                 dilation=1, bias: bool = False, transposed: bool = False,
                 generative: bool = False, config=None) -> None:  # fmt: skip
        super().__init__()
        for label, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"{label} must be a positive int, got {v!r}")
        if generative:
            raise ValueError("sparseconv.compat.torchsparse does not support: generative=True")
        if as_triple(padding, "padding", minimum=0) != (0, 0, 0):
            raise ValueError(
                "sparseconv.compat.torchsparse does not support: padding (TorchSparse's offsets "
                "are centred; padding only changes its spatial_range)"
            )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = as_triple(kernel_size, "kernel_size")
        self.stride = as_triple(stride, "stride")
        self.dilation = as_triple(dilation, "dilation")
        self.transposed = transposed
        self.config = config  # TorchSparse's dataflow choice: sparseconv chooses its own
        volume = math.prod(self.kernel_size)
        shape = (volume, in_channels, out_channels) if volume > 1 else (in_channels, out_channels)
        self.kernel = nn.Parameter(torch.zeros(shape))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_fan_in_(self.kernel, self.bias, self.in_channels * math.prod(self.kernel_size))

    def native_weight(self) -> torch.Tensor:
        """``kernel`` as sparseconv's ``[K, Cin, Cout]`` in x-major offset order (differentiable)."""
        if self.kernel.dim() == 2:
            return self.kernel[None]
        return from_minkowski(self.kernel, self.kernel_size)

    def padding(self) -> tuple[int, int, int]:
        """The shift that makes sparseconv's ``0..k-1`` strided offsets TorchSparse's centred ones."""
        if self.stride == (1, 1, 1) and not self.transposed:
            return (0, 0, 0)
        return tuple((k - 1) // 2 * d for k, d in zip(self.kernel_size, self.dilation))  # type: ignore[return-value]

    def forward(self, x: NativeTensor) -> SparseTensor:
        if not isinstance(x, NativeTensor):
            raise TypeError(f"Conv3d takes a SparseTensor, got {type(x).__name__}")
        y = conv3d(x, self.native_weight(), self.bias, self.kernel_size, self.stride,
                   self.dilation, transposed=self.transposed, padding=self.padding())  # fmt: skip
        return SparseTensor.wrap(y)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
        if self.stride != (1, 1, 1):
            s += f", stride={self.stride}"
        if self.dilation != (1, 1, 1):
            s += f", dilation={self.dilation}"
        return (
            s
            + (", bias=True" if self.bias is not None else "")
            + (", transposed=True" if self.transposed else "")
        )


class _OnFeatures:
    """A torch module applied to the features (TorchSparse's ``fapply``)."""

    def forward(self, x: NativeTensor) -> SparseTensor:
        return SparseTensor.wrap(x.replace_feats(super().forward(x.feats)))  # type: ignore[misc]


class BatchNorm(_OnFeatures, nn.BatchNorm1d):
    pass


class GroupNorm(nn.GroupNorm):
    """Per-sample group norm, as TorchSparse's (statistics over each batch entry's voxels)."""

    def forward(self, x: NativeTensor) -> SparseTensor:
        out = torch.empty_like(x.feats)
        batch = x.coords[:, 0]
        for b in torch.unique(batch).tolist():
            rows = batch == b
            feats = x.feats[rows].transpose(0, 1)[None]  # [1, C, N_b]
            out[rows] = super().forward(feats)[0].transpose(0, 1)
        return SparseTensor.wrap(x.replace_feats(out))


class ReLU(_OnFeatures, nn.ReLU):
    pass


class LeakyReLU(_OnFeatures, nn.LeakyReLU):
    pass


class SiLU(_OnFeatures, nn.SiLU):
    pass


class Dropout(_OnFeatures, nn.Dropout):
    pass


class GlobalAvgPool(pooling.GlobalAvgPool):
    """``[B, C]``: the mean feature of each batch entry."""


class GlobalMaxPool(pooling.GlobalMaxPool):
    """``[B, C]``: the channel-wise maximum of each batch entry."""
