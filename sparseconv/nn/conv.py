"""``Conv3d``: the sparse convolution layer."""

from __future__ import annotations

import math

import torch
from torch import nn

from sparseconv.functional.conv import conv3d, conv_kernel_map
from sparseconv.functional.dataflows import check_name
from sparseconv.functional.epilogue import Epilogue
from sparseconv.maps.kernel_map import KernelMap
from sparseconv.maps.offsets import as_triple
from sparseconv.tensor import SparseTensor


def init_fan_in_(weight: torch.Tensor, bias: torch.Tensor | None, fan_in: int) -> None:
    """Uniform in ``+-1/sqrt(fan_in)``, weight and bias: ``torch.nn.Conv3d``'s default, and what
    TorchSparse and spconv use, whatever the weight's layout."""
    bound = 1.0 / math.sqrt(fan_in)
    nn.init.uniform_(weight, -bound, bound)
    if bias is not None:
        nn.init.uniform_(bias, -bound, bound)


class Conv3d(nn.Module):
    """Sparse 3-D convolution; ``stride=1`` is submanifold, ``transposed=True`` upsamples.

    ``padding`` and ``spatial_shape`` (the input grid, in units of the input's stride) follow
    spconv, and ``submanifold=False`` makes a stride-1 conv a regular (generating) one: see
    :func:`sparseconv.functional.conv3d`.

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
        padding: int | tuple[int, int, int] = 0,
        spatial_shape: tuple[int, int, int] | None = None,
        submanifold: bool = True,
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
        self.padding = as_triple(padding, "padding", minimum=0)
        self.spatial_shape = None if spatial_shape is None else as_triple(
            tuple(spatial_shape), "spatial_shape"
        )  # fmt: skip
        self.submanifold = submanifold
        if (
            self.padding != (0, 0, 0)
            and self.stride == (1, 1, 1)
            and not transposed
            and submanifold
        ):
            raise ValueError(
                f"padding {self.padding} needs a strided or transposed conv: a submanifold conv "
                "keeps its input coordinates"
            )
        volume = math.prod(self.kernel_size)
        self.weight = nn.Parameter(torch.empty(volume, in_channels, out_channels))
        # kernel-offset pruning: the offsets kept (indices into the full kernel), None = all
        self.register_buffer("kept_offsets", None)
        self._kept: tuple[tuple, tuple[int, ...] | None] = ((), None)
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_fan_in_(self.weight, self.bias, self.in_channels * math.prod(self.kernel_size))

    def forward(self, x: SparseTensor, epilogue: Epilogue | None = None) -> SparseTensor:
        """The conv of ``x``; ``epilogue`` (inference) is what a following batch norm and ReLU
        would do, applied as the output is stored (``sparseconv.nn.Sequential`` passes it)."""
        return conv3d(
            x, self.weight, self.bias, self.kernel_size, self.stride, self.dilation,
            transposed=self.transposed, dataflow=self.dataflow,
            downsample_mode=self.downsample_mode, deterministic=self.deterministic,
            padding=self.padding, spatial_shape=self.spatial_shape, submanifold=self.submanifold,
            offsets=self.offsets(), epilogue=epilogue,
        )  # fmt: skip

    def offsets(self) -> tuple[int, ...] | None:
        """The kept kernel offsets as a tuple (read from the buffer only when it changed)."""
        kept = self.kept_offsets
        if kept is None:
            return None
        if torch.compiler.is_compiling() and self._kept[1] is not None:
            return self._kept[1]  # a compiled graph takes the offsets as constants
        stamp = (id(kept), kept._version, kept.device)
        if self._kept[0] != stamp:
            self._kept = (stamp, tuple(int(k) for k in kept.tolist()))
        return self._kept[1]

    def keep_offsets(self, kept) -> None:
        """Keep only the kernel offsets ``kept`` (indices into the full kernel, weight order):
        the weight shrinks to ``[len(kept), Cin, Cout]`` and the map to those offsets. Indices
        refer to the full kernel even when some were removed before."""
        volume = math.prod(self.kernel_size)
        kept = sorted(int(k) for k in kept)
        if not kept or len(set(kept)) != len(kept) or not all(0 <= k < volume for k in kept):
            raise ValueError(
                f"kept offsets must be distinct indices below {volume}, got {list(kept)}"
            )
        current = list(range(volume)) if self.kept_offsets is None else list(self.offsets())
        missing = sorted(set(kept) - set(current))
        if missing:
            raise ValueError(f"offsets {missing} were removed already and cannot come back")
        rows = torch.tensor([current.index(k) for k in kept], device=self.weight.device)
        with torch.no_grad():
            self.weight = nn.Parameter(self.weight.index_select(0, rows).contiguous())
        if kept == list(range(volume)):
            self.kept_offsets = None
        else:
            self.kept_offsets = torch.tensor(kept, dtype=torch.long, device=self.weight.device)
            self.offsets()  # fill the cache a compiled graph reads

    def kernel_map(self, x: SparseTensor) -> KernelMap:
        """The map this layer convolves ``x`` over (what pruning and cost models inspect)."""
        return conv_kernel_map(
            x, self.kernel_size, self.stride, self.dilation, self.transposed,
            self.downsample_mode, padding=self.padding, spatial_shape=self.spatial_shape,
            submanifold=self.submanifold, offsets=self.offsets(),
        )  # fmt: skip  # fmt: skip

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.dilation != (1, 1, 1):
            s += f", dilation={self.dilation}"
        if self.padding != (0, 0, 0):
            s += f", padding={self.padding}"
        if self.transposed:
            s += ", transposed=True"
        if self.kept_offsets is not None:
            s += f", offsets={len(self.offsets())}/{math.prod(self.kernel_size)}"
        return s + f", bias={self.bias is not None}"
