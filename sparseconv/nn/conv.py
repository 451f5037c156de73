"""``Conv3d``: the sparse convolution layer."""

from __future__ import annotations

import math

import torch
from torch import nn

from sparseconv.functional.conv import conv3d
from sparseconv.functional.dataflows import check_name
from sparseconv.maps.offsets import as_triple
from sparseconv.tensor import SparseTensor


class Conv3d(nn.Module):
    """Sparse 3-D convolution; ``stride=1`` is submanifold, ``transposed=True`` upsamples.

    ``weight`` has shape ``[K, Cin, Cout]`` (K = kx*ky*kz, x-major, z fastest). Initialisation is
    uniform in ``+-1/sqrt(Cin*K)`` like ``torch.nn.Conv3d``'s default (fan-in from the kernel
    volume), which is also what TorchSparse and spconv use.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int] = 3,
        stride: int | tuple[int, int, int] = 1,
        dilation: int | tuple[int, int, int] = 1,
        bias: bool = False,
        transposed: bool = False,
        dataflow: str = "auto",
        downsample_mode: str = "minkowski",
        deterministic: bool = False,
    ) -> None:
        super().__init__()
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = as_triple(kernel_size, "kernel_size")
        self.stride = as_triple(stride, "stride")
        self.dilation = as_triple(dilation, "dilation")
        self.transposed = transposed
        self.dataflow = check_name(dataflow)
        self.downsample_mode = downsample_mode
        self.deterministic = deterministic
        volume = math.prod(self.kernel_size)
        self.weight = nn.Parameter(torch.empty(volume, in_channels, out_channels))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.in_channels * self.weight.shape[0])
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: SparseTensor) -> SparseTensor:
        return conv3d(
            x, self.weight, self.bias, self.kernel_size, self.stride, self.dilation,
            transposed=self.transposed, dataflow=self.dataflow,
            downsample_mode=self.downsample_mode, deterministic=self.deterministic,
        )  # fmt: skip

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.dilation != (1, 1, 1):
            s += f", dilation={self.dilation}"
        if self.transposed:
            s += ", transposed=True"
        return s + f", bias={self.bias is not None}"
