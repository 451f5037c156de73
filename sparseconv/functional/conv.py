"""``conv3d``: the sparse convolution op (one ``torch.autograd.Function`` for every variant)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from sparseconv.functional import semi_structured
from sparseconv.functional.dataflows import Dataflow, resolve
from sparseconv.functional.epilogue import Epilogue
from sparseconv.maps.build import DOWNSAMPLE_MODES, build_kernel_map
from sparseconv.maps.kernel_map import KernelMap
from sparseconv.maps.offsets import as_triple, output_shape
from sparseconv.tensor import SparseTensor


class SparseConvFunction(torch.autograd.Function):
    """``y = conv(x, W)`` over a kernel map; backward gives dX (transposed map, W^T) and dW."""

    @staticmethod
    def forward(ctx, feats: torch.Tensor, weight: torch.Tensor, kmap: KernelMap, flow: Dataflow):
        ctx.save_for_backward(feats, weight)
        ctx.kmap = kmap
        ctx.flow = flow
        return flow.forward(feats, weight, kmap).to(feats.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        feats, weight = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_in = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_in = ctx.flow.backward_input(grad_out, weight, ctx.kmap).to(feats.dtype)
        if ctx.needs_input_grad[1]:
            grad_w = ctx.flow.backward_weight(feats, grad_out, ctx.kmap).to(weight.dtype)
        return grad_in, grad_w, None, None


def conv3d(
    x: SparseTensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    kernel_size: int | tuple[int, int, int] = 3,
    stride: int | tuple[int, int, int] = 1,
    dilation: int | tuple[int, int, int] = 1,
    transposed: bool = False,
    dataflow: str = "auto",
    downsample_mode: str = "minkowski",
    method: str = "auto",
    deterministic: bool = False,
    padding: int | tuple[int, int, int] = 0,
    spatial_shape: tuple[int, int, int] | None = None,
    output_padding: int | tuple[int, int, int] = 0,
    submanifold: bool = True,
    offsets: tuple[int, ...] | None = None,
    epilogue: Epilogue | None = None,
) -> SparseTensor:
    """Sparse 3-D convolution of ``x`` with ``weight`` ``[K, Cin, Cout]``.

    ``stride=1`` (not transposed) is submanifold: outputs on the input coordinates. A strided conv
    maps to ``x.stride * stride``; ``transposed=True`` goes back to ``x.stride / stride`` onto the
    coordinates of the strided conv it inverts when that map is in ``x.cache``. The kernel map is
    taken from / stored in ``x.cache``. ``dataflow`` is ``"auto"`` or a name in
    :data:`~sparseconv.functional.dataflows.DATAFLOWS` (``"torch"``, ``"cpu_implicit_gemm"``:
    fused C kernels on CPU computing in float32, ``"triton_implicit_gemm"``, ...);
    ``deterministic=True`` forbids atomics.

    ``padding`` and ``spatial_shape`` give spconv's geometry: output ``o`` reads input
    ``o * stride - padding + delta * dilation``, and outputs outside the output grid (the size
    torch's and spconv's formulas give for an input grid of ``spatial_shape``, in units of
    ``x.stride``; ``output_padding`` for a transposed conv) are dropped. ``submanifold=False``
    makes a stride-1 conv a regular one that generates outputs (spconv's ``SparseConv3d``).
    ``offsets`` (kernel-offset pruning) lists the kernel offsets kept, as indices into the full
    kernel in weight order; ``weight`` then has ``len(offsets)`` rows and the kernel map is
    restricted to them.

    ``epilogue`` (inference only: :class:`~sparseconv.functional.epilogue.Epilogue`) is a
    per-channel affine map and ReLU applied to the output, after ``bias``; the C dataflow
    applies it as it stores the output (a folded batch norm costs no pass of its own).

    Under ``torch.autocast`` the conv runs in the autocast dtype, as ``torch.mm`` does (bf16 on
    CPU: the AMX kernel where the CPU has it).
    """
    geometry = _Geometry(padding, spatial_shape, output_padding, submanifold)
    x, weight, bias = _autocast(x, weight, bias)
    if (
        epilogue is not None
        and torch.is_grad_enabled()
        and (x.feats.requires_grad or weight.requires_grad)
    ):
        raise ValueError("an epilogue is for inference: run under torch.no_grad()")
    if torch.compiler.is_compiling():
        out = _traced(x, weight, bias, kernel_size, stride, dilation, transposed,
                      downsample_mode, geometry, offsets)  # fmt: skip
        return out if epilogue is None else out.replace_feats(epilogue.apply_(out.feats.clone()))
    kmap = _kernel_map(x, weight, bias, kernel_size, stride, dilation, transposed, downsample_mode,
                       method, geometry, offsets)  # fmt: skip
    flow = resolve(dataflow, x.feats, weight, kmap, deterministic)
    if epilogue is None:
        feats = SparseConvFunction.apply(x.feats.contiguous(), weight, kmap, flow)
        return _output(x, feats, bias, kmap, stride, transposed)
    feats = fused_forward(flow, x.feats.contiguous(), weight, kmap, epilogue.with_bias(bias))
    return _output(x, feats, None, kmap, stride, transposed)


def _autocast(x: SparseTensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """Operands in the autocast dtype when autocast is on for their device: a sparse conv is a
    sum of matrix products, so it autocasts as they do (float32 and half operands are cast,
    float64 is left alone, as torch's autocast leaves it)."""
    if not isinstance(x, SparseTensor) or not isinstance(weight, torch.Tensor):
        return x, weight, bias  # refused with the reason by the argument checks
    device = x.feats.device.type
    if not torch.is_autocast_enabled(device):
        return x, weight, bias
    dtype = torch.get_autocast_dtype(device)

    def cast(t: torch.Tensor | None) -> torch.Tensor | None:
        if (
            not isinstance(t, torch.Tensor)
            or not t.is_floating_point()
            or t.dtype in (torch.float64, dtype)
        ):
            return t
        return t.to(dtype)

    feats = cast(x.feats)
    return (x if feats is x.feats else x.replace_feats(feats)), cast(weight), cast(bias)


def fused_forward(
    flow: Dataflow, src: torch.Tensor, weight: torch.Tensor, kmap: KernelMap, epilogue: Epilogue
) -> torch.Tensor:
    """Inference forward with ``epilogue``: in the dataflow's store where it has one, else after."""
    if flow.fused_forward is not None:
        return flow.fused_forward(src, weight, kmap, epilogue).to(src.dtype)
    return epilogue.apply_(flow.forward(src, weight, kmap).to(src.dtype))


def _traced(x, weight, bias, kernel_size, stride, dilation, transposed, mode, geometry, offsets):
    """torch.compile / export: maps and kernels as custom ops (:mod:`.traced`)."""
    from sparseconv.functional import traced

    ks = _checked_kernel(x, weight, bias, kernel_size, offsets)
    if mode not in DOWNSAMPLE_MODES:
        raise ValueError(f"downsample_mode must be one of {DOWNSAMPLE_MODES}, got {mode!r}")
    s, d = as_triple(stride, "stride"), as_triple(dilation, "dilation")
    pad = as_triple(geometry.padding, "padding", minimum=0)
    bounds = geometry.bounds(ks, s, d, transposed)
    return traced.conv3d(x, weight, bias, ks, s, d, transposed, mode, pad, bounds,
                         geometry.submanifold, offsets)  # fmt: skip


def apply_kernel_map(
    feats: torch.Tensor,
    weight: torch.Tensor,
    kmap: KernelMap,
    bias: torch.Tensor | None = None,
    dataflow: str = "auto",
    deterministic: bool = False,
) -> torch.Tensor:
    """``[kmap.n_out, Cout]`` features of a conv over a map built elsewhere (a front end that
    shares maps by its own keys, such as spconv's ``indice_key``); differentiable like
    :func:`conv3d`."""
    if weight.dim() != 3 or weight.shape[0] != kmap.kernel_volume:
        raise ValueError(
            f"weight must have shape [{kmap.kernel_volume}, Cin, Cout] for this map, "
            f"got {list(weight.shape)}"
        )
    if feats.dim() != 2 or feats.shape[0] != kmap.n_in or feats.shape[1] != weight.shape[1]:
        raise ValueError(
            f"features must have shape [{kmap.n_in}, {weight.shape[1]}] for this map, "
            f"got {list(feats.shape)}"
        )
    flow = resolve(dataflow, feats, weight, kmap, deterministic)
    out = SparseConvFunction.apply(feats.contiguous(), weight, kmap, flow)
    return out + bias if bias is not None else out


def semi_structured_conv3d(
    x: SparseTensor,
    weight: torch.Tensor,
    packed: list[torch.Tensor],
    bias: torch.Tensor | None = None,
    kernel_size: int | tuple[int, int, int] = 3,
    stride: int | tuple[int, int, int] = 1,
    dilation: int | tuple[int, int, int] = 1,
    transposed: bool = False,
    downsample_mode: str = "minkowski",
    method: str = "auto",
    padding: int | tuple[int, int, int] = 0,
    spatial_shape: tuple[int, int, int] | None = None,
    submanifold: bool = True,
    offsets: tuple[int, ...] | None = None,
) -> SparseTensor:
    """Inference-only :func:`conv3d` whose GEMMs take ``packed``, the per-offset compressed
    2:4 form of ``weight`` (:func:`sparseconv.functional.semi_structured.pack`); no autograd."""
    kmap = _kernel_map(x, weight, bias, kernel_size, stride, dilation, transposed, downsample_mode,
                       method, _Geometry(padding, spatial_shape, 0, submanifold), offsets)  # fmt: skip
    if len(packed) != kmap.kernel_volume:
        raise ValueError(f"packed has {len(packed)} offsets, the kernel {kmap.kernel_volume}")
    feats = semi_structured.forward(x.feats.contiguous(), packed, kmap)
    return _output(x, feats, bias, kmap, stride, transposed)


class _Geometry(NamedTuple):
    """spconv's grid arguments of a conv (all zero / None: unbounded, no padding)."""

    padding: int | tuple[int, int, int] = 0
    spatial_shape: tuple[int, int, int] | None = None
    output_padding: int | tuple[int, int, int] = 0
    submanifold: bool = True

    def bounds(self, ks, stride, dilation, transposed: bool):
        """The output grid in units of the output stride, or None when unbounded."""
        pad = as_triple(self.padding, "padding", minimum=0)
        out_pad = as_triple(self.output_padding, "output_padding", minimum=0)
        if out_pad != (0, 0, 0) and not transposed:
            raise ValueError("output_padding applies to transposed convs only")
        if self.spatial_shape is None:
            return None
        shape = as_triple(tuple(self.spatial_shape), "spatial_shape")
        s, d = as_triple(stride, "stride"), as_triple(dilation, "dilation")
        if s == (1, 1, 1) and not transposed and self.submanifold:
            return None  # submanifold: outputs are the inputs
        return output_shape(shape, ks, s, pad, d, transposed, out_pad)


def _kernel_map(
    x, weight, bias, kernel_size, stride, dilation, transposed, mode, method,
    geometry: _Geometry, offsets: tuple[int, ...] | None = None,
):  # fmt: skip
    ks = _checked_kernel(x, weight, bias, kernel_size, offsets)
    return conv_kernel_map(x, ks, stride, dilation, transposed, mode, method, *geometry, offsets)


def _checked_kernel(x, weight, bias, kernel_size, offsets) -> tuple[int, int, int]:
    """The kernel size as a triple, after checking ``x`` and the weight against it."""
    if not isinstance(x, SparseTensor):
        raise TypeError(f"x must be a SparseTensor, got {type(x).__name__}")
    ks = as_triple(kernel_size, "kernel_size")
    _check_weight(x, weight, bias, _volume(ks, offsets))
    return ks


def _volume(ks, offsets) -> int:
    """Rows the weight must have: the kernel's volume, or the number of kept offsets."""
    if offsets is None:
        return math.prod(ks)
    if not offsets or any(not 0 <= k < math.prod(ks) for k in offsets):
        raise ValueError(
            f"offsets must be a non-empty list of indices below {math.prod(ks)} (the kernel "
            f"volume of {ks}), got {list(offsets)}"
        )
    return len(offsets)


def conv_kernel_map(
    x: SparseTensor,
    kernel_size: int | tuple[int, int, int] = 3,
    stride: int | tuple[int, int, int] = 1,
    dilation: int | tuple[int, int, int] = 1,
    transposed: bool = False,
    downsample_mode: str = "minkowski",
    method: str = "auto",
    padding: int | tuple[int, int, int] = 0,
    spatial_shape: tuple[int, int, int] | None = None,
    output_padding: int | tuple[int, int, int] = 0,
    submanifold: bool = True,
    offsets: tuple[int, ...] | None = None,
) -> KernelMap:
    """The kernel map :func:`conv3d` uses for these arguments (from / into ``x.cache``),
    restricted to the kernel offsets ``offsets`` when given."""
    ks = as_triple(kernel_size, "kernel_size")
    geometry = _Geometry(padding, spatial_shape, output_padding, submanifold)
    return build_kernel_map(
        x.coords, ks, stride, dilation, method=method, downsample_mode=downsample_mode,
        tensor_stride=x.stride, transposed=transposed, cache=x.cache, check=False,
        padding=padding, output_bounds=geometry.bounds(ks, stride, dilation, transposed),
        submanifold=submanifold, kept_offsets=None if offsets is None else tuple(offsets),
    )  # fmt: skip


def _output(x, feats, bias, kmap: KernelMap, stride, transposed: bool) -> SparseTensor:
    if bias is not None:
        feats = feats + bias
    s = as_triple(stride, "stride")
    if transposed:
        out_stride = tuple(a // b for a, b in zip(x.stride, s))
    else:
        out_stride = tuple(a * b for a, b in zip(x.stride, s))
    return SparseTensor(feats, kmap.out_coords, out_stride, cache=x.cache, check=False)


def _check_weight(
    x: SparseTensor, weight: torch.Tensor, bias: torch.Tensor | None, volume: int
) -> None:
    if not isinstance(weight, torch.Tensor) or weight.dim() != 3:
        raise ValueError(
            f"weight must have shape [K, Cin, Cout], got {getattr(weight, 'shape', weight)}"
        )
    if weight.shape[0] != volume:
        raise ValueError(
            f"weight has {weight.shape[0]} kernel offsets but the kernel (its kept offsets, "
            f"if pruned) has {volume}"
        )
    if weight.shape[1] != x.feats.shape[1]:
        raise ValueError(
            f"weight expects {weight.shape[1]} input channels but x has {x.feats.shape[1]}"
        )
    if weight.dtype != x.feats.dtype:
        raise TypeError(f"weight dtype {weight.dtype} differs from feature dtype {x.feats.dtype}")
    if weight.device != x.feats.device:
        raise ValueError(f"weight is on {weight.device} but features on {x.feats.device}")
    if not x.feats.is_floating_point():
        raise TypeError(f"features must be floating point, got {x.feats.dtype}")
    if bias is not None and (bias.shape != (weight.shape[2],) or bias.device != weight.device):
        raise ValueError(
            f"bias must have shape [{weight.shape[2]}] on {weight.device}, got {list(bias.shape)}"
        )
