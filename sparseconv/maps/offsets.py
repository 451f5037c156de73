"""Kernel geometry: normalising size/stride/dilation arguments and enumerating offsets.

Offsets are enumerated x-major, z fastest (``K = kx * ky * kz`` in that order, the order of the
weight's first axis). For a stride-1 (submanifold) conv each axis runs ``-(k-1)//2 .. k//2``
(centred, as TorchSparse and MinkowskiEngine do for odd k); for a strided or transposed conv each
axis runs ``0 .. k-1``, so that an output at ``o`` reads inputs at ``o + delta * dilation`` — the
dense ``conv3d`` with zero padding, which is also what spconv computes with ``padding=0``.

``padding`` (strided and transposed convs only) shifts every offset by ``-padding`` in the input
grid's units: an output at ``o`` (output-grid index) reads ``o * stride - padding + delta *
dilation``, spconv's rule. :func:`output_shape` is the grid size that goes with it.
"""

from __future__ import annotations

import itertools

import torch

Triple = tuple[int, int, int]


def as_triple(value: int | tuple[int, ...] | list[int], name: str, minimum: int = 1) -> Triple:
    """Normalise an int or 3-sequence argument, with an error naming the argument."""
    if type(value) is tuple and len(value) == 3:  # the common case, every layer call: no copy
        a, b, c = value
        if type(a) is int and type(b) is int and type(c) is int and min(a, b, c) >= minimum:
            return value  # type: ignore[return-value]
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int or a tuple of 3 ints, got bool")
    if isinstance(value, int):
        triple = (value, value, value)
    elif (
        isinstance(value, (tuple, list))
        and len(value) == 3
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        triple = (int(value[0]), int(value[1]), int(value[2]))
    else:
        raise TypeError(f"{name} must be an int or a tuple of 3 ints, got {value!r}")
    if min(triple) < minimum:
        raise ValueError(f"{name} must be >= {minimum} on every axis, got {triple}")
    return triple


def kernel_offsets(kernel_size: Triple, centred: bool) -> list[Triple]:
    """Offsets in kernel units, x-major and z fastest (the weight's K order)."""
    ranges = [range(-((k - 1) // 2), k // 2 + 1) if centred else range(k) for k in kernel_size]
    return [tuple(o) for o in itertools.product(*ranges)]  # type: ignore[misc]


def scaled_offsets(
    offsets: list[Triple],
    dilation: Triple,
    tensor_stride: Triple,
    padding: Triple = (0, 0, 0),
) -> torch.Tensor:
    """``[K, 3]`` int64 offsets in voxel units of the input grid
    (``(offset x dilation - padding) x stride``)."""
    if not offsets:
        return torch.zeros((0, 3), dtype=torch.int64)
    return torch.tensor(scaled_offset_list(offsets, dilation, tensor_stride, padding))


def scaled_offset_list(
    offsets: list[Triple],
    dilation: Triple,
    tensor_stride: Triple,
    padding: Triple = (0, 0, 0),
) -> list[Triple]:
    """:func:`scaled_offsets` as plain tuples (no tensor: nothing to read back from a device)."""
    return [
        tuple((o[a] * dilation[a] - padding[a]) * tensor_stride[a] for a in range(3))  # type: ignore[misc]
        for o in offsets
    ]


def output_shape(
    spatial_shape: Triple,
    kernel_size: Triple,
    stride: Triple,
    padding: Triple,
    dilation: Triple,
    transposed: bool = False,
    output_padding: Triple = (0, 0, 0),
) -> Triple:
    """The output grid of a conv on a ``spatial_shape`` grid (torch's and spconv's formulas)."""
    if transposed:
        shape = tuple(
            (n - 1) * s - 2 * p + d * (k - 1) + q + 1
            for n, k, s, p, d, q in zip(
                spatial_shape, kernel_size, stride, padding, dilation, output_padding
            )
        )
    else:
        shape = tuple(
            (n + 2 * p - d * (k - 1) - 1) // s + 1
            for n, k, s, p, d in zip(spatial_shape, kernel_size, stride, padding, dilation)
        )
    if min(shape) < 1:
        raise ValueError(
            f"a kernel {kernel_size} with stride {stride}, padding {padding} and dilation "
            f"{dilation} leaves no output on a {spatial_shape} grid"
        )
    return shape  # type: ignore[return-value]
