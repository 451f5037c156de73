"""spconv's convolution modules on sparseconv's maps and dataflows.

Parameters keep spconv 2.x's names and layout (``weight`` ``[Cout, k0, k1, k2, Cin]``, ``bias``
``[Cout]``), so a spconv ``state_dict`` loads unchanged. Geometry is spconv's: a ``SparseConv3d``
output ``o`` reads input ``o * stride - padding + delta * dilation`` and outputs outside the
output grid are dropped; a ``SubMConv3d`` keeps its inputs (its ``padding`` is ignored, as spconv
ignores it); a ``SparseInverseConv3d`` returns to the inputs of the ``SparseConv3d`` that stored
its ``indice_key``. Two spconv behaviours are reproduced on purpose because checkpoints depend on
them: layers on one ``indice_key`` reuse one map, and a 1x1x1 conv (stride 1) multiplies by the
weight's memory read as ``[Cin, Cout]`` (spconv's ``weight.view(Cin, Cout)``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sparseconv.compat.spconv.modules import SparseModule
from sparseconv.compat.spconv.tensor import IndiceData, SparseConvTensor
from sparseconv.functional.conv import apply_kernel_map, conv_kernel_map
from sparseconv.maps.cache import MapCache
from sparseconv.maps.offsets import Triple, as_triple, output_shape
from sparseconv.nn.conv import init_fan_in_
from sparseconv.tensor import SparseTensor

# spconv arguments that choose its kernels or accumulation; sparseconv chooses its own
_PERFORMANCE_ONLY = ("algo", "fp32_accum", "large_kernel_fast_algo", "name")


class SparseConvolution(SparseModule):
    """spconv's ``SparseConvolution`` (3-D): the base of every conv module below."""

    def __init__(
        self,
        ndim: int,
        in_channels: int,
        out_channels: int,
        kernel_size=3,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        subm: bool = False,
        output_padding=0,
        transposed: bool = False,
        inverse: bool = False,
        indice_key: str | None = None,
        record_voxel_count: bool = False,
        act_type=None,
        device=None,
        dtype=None,
        **performance_only,
    ) -> None:
        super().__init__()
        _check_supported(ndim, groups, record_voxel_count, act_type, performance_only)
        for label, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"{label} must be a positive int, got {v!r}")
        self.ndim = 3
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = list(as_triple(kernel_size, "kernel_size"))
        self.stride = list(as_triple(stride, "stride"))
        self.padding = list(as_triple(padding, "padding", minimum=0))
        self.dilation = list(as_triple(dilation, "dilation"))
        self.output_padding = list(as_triple(output_padding, "output_padding", 0))
        self.groups, self.subm, self.transposed, self.inverse = 1, subm, transposed, inverse
        self.indice_key = indice_key
        _check_geometry(self)
        volume = math.prod(self.kernel_size)
        self.conv1x1 = volume == 1 and (subm or self.stride == [1, 1, 1])
        kw = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.zeros(out_channels, *self.kernel_size, in_channels, **kw))
        self.bias = nn.Parameter(torch.zeros(out_channels, **kw)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_fan_in_(self.weight, self.bias, self.in_channels * math.prod(self.kernel_size))

    def native_weight(self) -> torch.Tensor:
        """``weight`` as sparseconv's ``[K, Cin, Cout]`` (a differentiable view + copy)."""
        volume = math.prod(self.kernel_size)
        w = self.weight.reshape(self.out_channels, volume, self.in_channels)
        return w.permute(1, 2, 0).contiguous()

    def forward(self, input: SparseConvTensor) -> SparseConvTensor:
        if not isinstance(input, SparseConvTensor):
            raise TypeError(
                f"{type(self).__name__} takes a SparseConvTensor, got {type(input).__name__}"
            )
        if input.features.shape[1] != self.in_channels:
            raise ValueError(
                f"{type(self).__name__} expects {self.in_channels} input channels, "
                f"got {input.features.shape[1]}"
            )
        if self.conv1x1:
            w = self.weight.reshape(self.in_channels, self.out_channels)  # spconv's view
            feats = input.features @ w
            return input.replace_feature(feats + self.bias if self.bias is not None else feats)
        if self.inverse:
            return self._inverse(input)
        x = input.native()
        if self.transposed and any(t % s for t, s in zip(x.stride, self.stride)):
            x = _refined(x, self.stride)
        data = self._reused(input, x)
        if data is None:
            data = self._build(input, x)
            if self.indice_key is not None:
                input.indice_dict[self.indice_key] = data
        feats = apply_kernel_map(x.feats, self.native_weight(), data.kernel_map, self.bias)
        out_stride = _out_stride(x.stride, self.stride, self.subm, self.transposed)
        return SparseConvTensor._derived(input, feats, data.out_indices, out_stride,
                                         data.out_spatial_shape, x.cache)  # fmt: skip

    def _reused(self, input: SparseConvTensor, x: SparseTensor) -> IndiceData | None:
        """The map stored under ``indice_key``, after spconv's checks (which it asserts)."""
        data = input.find_indice_pair(self.indice_key)
        if data is None:
            return None
        if data.is_subm != self.subm:
            kind = "submanifold" if data.is_subm else "strided"
            raise ValueError(
                f"indice_key {self.indice_key!r} holds a {kind} map; a {type(self).__name__} "
                "cannot reuse it (give it its own key)"
            )
        if self.subm:
            mine = (tuple(self.kernel_size), tuple(self.dilation))
            if (data.ksize, data.dilation) != mine or data.kernel_map.n_in != x.coords.shape[0]:
                raise ValueError(
                    f"SubMConv3d layers sharing indice_key {self.indice_key!r} must have the same "
                    f"kernel size, dilation and input voxels (spconv requires it): stored "
                    f"k={data.ksize} d={data.dilation} on {data.kernel_map.n_in} voxels, this layer "
                    f"k={mine[0]} d={mine[1]} on {x.coords.shape[0]}"
                )
            return data
        if data.kernel_map.n_in != x.coords.shape[0] or data.ksize != tuple(self.kernel_size):
            raise ValueError(
                f"layers sharing indice_key {self.indice_key!r} must have the same kernel and inputs"
            )
        return data

    def _build(self, input: SparseConvTensor, x: SparseTensor) -> IndiceData:
        return build_indice_data(input, x, self.kernel_size, self.stride, self.padding,
                                 self.dilation, self.subm, self.transposed,
                                 self.output_padding)  # fmt: skip

    def _inverse(self, input: SparseConvTensor) -> SparseConvTensor:
        data = input.find_indice_pair(self.indice_key)
        if data is None:
            raise ValueError(
                f"SparseInverseConv3d found no indice_key {self.indice_key!r}: the SparseConv3d "
                "it inverts must run first on the same input with that key"
            )
        if data.is_subm:
            raise ValueError(
                f"indice_key {self.indice_key!r} holds a SubMConv3d map; an inverse conv needs "
                "a SparseConv3d's"
            )
        if data.ksize != tuple(self.kernel_size):
            raise ValueError(
                f"SparseInverseConv3d kernel_size {tuple(self.kernel_size)} differs from the "
                f"kernel_size {data.ksize} of the conv on indice_key {self.indice_key!r}"
            )
        if input.features.shape[0] != data.kernel_map.n_out:
            raise ValueError(
                f"SparseInverseConv3d got {input.features.shape[0]} voxels; the conv on "
                f"indice_key {self.indice_key!r} produced {data.kernel_map.n_out}"
            )
        if data.inverse_map is None:
            data.inverse_map = data.kernel_map.transposed(data.indices)
        feats = apply_kernel_map(input.features, self.native_weight(), data.inverse_map, self.bias)
        return SparseConvTensor._derived(input, feats, data.indices, data.in_stride,
                                         data.spatial_shape)  # fmt: skip

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != [0, 0, 0]:
            s += f", padding={self.padding}"
        if self.dilation != [1, 1, 1]:
            s += f", dilation={self.dilation}"
        if self.bias is None:
            s += ", bias=False"
        return s + (f", indice_key={self.indice_key!r}" if self.indice_key else "")


def build_indice_data(
    input: SparseConvTensor,
    x: SparseTensor,
    kernel_size,
    stride,
    padding,
    dilation,
    subm: bool = False,
    transposed: bool = False,
    output_padding=(0, 0, 0),
) -> IndiceData:
    """The map of a spconv conv or pool on ``x`` (``input``'s voxels) and what it stores."""
    ks, s, p, d, op = (tuple(v) for v in (kernel_size, stride, padding, dilation, output_padding))
    shape = tuple(input.spatial_shape)
    if subm:
        kmap = conv_kernel_map(x, ks, 1, d)
        out_shape = list(shape)
    else:
        kmap = conv_kernel_map(x, ks, s, d, transposed, "spconv", padding=p, spatial_shape=shape,
                               output_padding=op, submanifold=False)  # fmt: skip
        out_shape = list(output_shape(shape, ks, s, p, d, transposed, op))
    return IndiceData(
        indices=x.coords, out_indices=kmap.out_coords, kernel_map=kmap,
        spatial_shape=list(shape), out_spatial_shape=out_shape, is_subm=subm,
        ksize=ks, stride=s, padding=p, dilation=d, in_stride=x.stride,
    )  # fmt: skip


def _check_supported(ndim, groups, record_voxel_count, act_type, performance_only) -> None:
    unknown = sorted(set(performance_only) - set(_PERFORMANCE_ONLY))
    if unknown:
        raise TypeError(f"unexpected argument(s) for a spconv conv: {', '.join(unknown)}")
    unsupported = []
    if ndim != 3:
        unsupported.append(f"ndim={ndim} (only 3-D convs)")
    if groups != 1:
        unsupported.append(f"groups={groups}")
    if record_voxel_count:
        unsupported.append("record_voxel_count=True")
    if act_type is not None and getattr(act_type, "name", str(act_type)) not in ("None_", "None"):
        unsupported.append(f"act_type={act_type} (apply the activation as its own module)")
    if unsupported:
        raise ValueError(f"sparseconv.compat.spconv does not support: {', '.join(unsupported)}")


def _check_geometry(conv: SparseConvolution) -> None:
    if conv.subm and conv.stride != [1, 1, 1]:
        raise ValueError(f"SubMConv3d must have stride 1, got stride={conv.stride}")
    if conv.subm and any(k % 2 == 0 for k in conv.kernel_size):
        raise ValueError(
            f"SubMConv3d with an even kernel_size {conv.kernel_size} is not supported "
            "(its centre is not defined the same way in every library)"
        )
    if conv.output_padding != [0, 0, 0] and not conv.transposed:
        raise ValueError("output_padding applies to SparseConvTranspose3d only")
    one = math.prod(conv.kernel_size) == 1 and conv.stride == [1, 1, 1] and not conv.subm
    if one and conv.padding != [0, 0, 0]:
        raise ValueError("padding must be zero for a 1x1x1 conv with stride 1 (as in spconv)")


def _out_stride(ts: Triple, stride: list[int], subm: bool, transposed: bool) -> Triple:
    if subm:
        return ts
    if transposed:
        return tuple(a // b for a, b in zip(ts, stride))  # type: ignore[return-value]
    return tuple(a * b for a, b in zip(ts, stride))  # type: ignore[return-value]


def _refined(x: SparseTensor, stride: list[int]) -> SparseTensor:
    """``x`` on a grid ``stride`` times finer, so that a transposed conv can return below it
    (a network that upsamples past its input's grid): coordinates scale, maps start afresh."""
    scale = x.coords.new_tensor([1, *stride])
    ts = tuple(a * b for a, b in zip(x.stride, stride))
    return SparseTensor(x.feats, x.coords * scale, ts, cache=MapCache(), check=False)


def _conv_class(name: str, doc: str, **fixed):
    """One of spconv's 3-D conv classes: ``SparseConvolution`` with some arguments fixed."""

    def __init__(self, in_channels, out_channels, kernel_size=3, *args, **kwargs):
        positional = ("stride", "padding", "dilation", "groups", "bias", "indice_key")
        if fixed.get("inverse"):
            positional = ("indice_key", "bias")
        if len(args) > len(positional):
            raise TypeError(f"{name} takes at most {3 + len(positional)} positional arguments")
        kwargs.update(zip(positional, args))
        clash = sorted(set(kwargs) & set(fixed))
        if clash:
            raise TypeError(f"{name} does not take {', '.join(clash)}")
        SparseConvolution.__init__(self, 3, in_channels, out_channels, kernel_size, **kwargs,
                                   **fixed)  # fmt: skip

    return type(name, (SparseConvolution,), {"__init__": __init__, "__doc__": doc})


SparseConv3d = _conv_class("SparseConv3d", "spconv's strided / regular 3-D sparse conv.")
SubMConv3d = _conv_class("SubMConv3d", "spconv's submanifold conv (outputs = inputs).", subm=True)
SparseConvTranspose3d = _conv_class(
    "SparseConvTranspose3d", "spconv's transposed conv (generates outputs).", transposed=True
)
SparseInverseConv3d = _conv_class(
    "SparseInverseConv3d",
    "spconv's inverse conv: back to the inputs of the SparseConv3d on its ``indice_key``.",
    inverse=True,
)
