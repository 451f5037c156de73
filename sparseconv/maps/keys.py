"""Packing of ``(batch, x, y, z)`` coordinates into one int64 key.

Layout (most to least significant bits)::

    bit 63      : 0 (keys are non-negative, -1 marks an empty hash slot)
    bits 48..62 : batch            b in [0, 32767]
    bits 32..47 : x + 2**15        x in [-16384, 16383]
    bits 16..31 : y + 2**15        y in [-16384, 16383]
    bits  0..15 : z + 2**15        z in [-16384, 16383]

Each spatial field has 16 bits but coordinates may only use the middle half of its range. The
spare bit is a guard band: a kernel offset with ``|delta| < 2**14`` can be *added to the packed
key* (``key + pack_offset(delta)``) without a carry or borrow crossing into the next field, so
the shifted key is exactly the key of the shifted coordinate. That makes neighbour queries one
integer add per offset, and makes shifting preserve the sort order of keys (which the merge-sort
mapper relies on). At a 5 cm voxel the range is +-819 m, far beyond any LiDAR.
"""

from __future__ import annotations

import torch

from sparseconv.kernels import cpu_kernel_map
from sparseconv.maps import tables

BATCH_BITS = 15
FIELD_BITS = 16
COORD_MIN = -(1 << 14)
COORD_MAX = (1 << 14) - 1
BATCH_MAX = (1 << BATCH_BITS) - 1
MAX_OFFSET = (1 << 14) - 1
_BIAS = 1 << 15
_SHIFT_X = 2 * FIELD_BITS
_SHIFT_B = 3 * FIELD_BITS
_FIELD_MASK = (1 << FIELD_BITS) - 1

__all__ = [
    "COORD_MIN",
    "COORD_MAX",
    "BATCH_MAX",
    "MAX_OFFSET",
    "check_coords",
    "pack",
    "unpack",
    "pack_offset",
]


def check_coords(coords: torch.Tensor, name: str = "coords", values: bool = True) -> None:
    """Raise a clear error unless ``coords`` is an int32 ``[N, 4]`` tensor in the packable range.

    ``values=False`` checks type and shape only: the range check reads the tensor (a device sync
    on CUDA), which layers re-wrapping already checked coordinates must not pay.
    """
    if not isinstance(coords, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(coords).__name__}")
    if coords.dtype != torch.int32:
        raise TypeError(
            f"{name} must be int32 (batch, x, y, z), got {coords.dtype}; "
            "use sparseconv.voxelize for float points or .int() for integer coordinates"
        )
    if coords.dim() != 2 or coords.shape[1] != 4:
        raise ValueError(
            f"{name} must have shape [N, 4] (batch, x, y, z), got {list(coords.shape)}"
        )
    if not values or coords.numel() == 0:
        return
    lo = coords.amin(0)
    hi = coords.amax(0)
    if lo[0] < 0 or hi[0] > BATCH_MAX:
        raise ValueError(
            f"{name}: batch index must be in [0, {BATCH_MAX}], got [{int(lo[0])}, {int(hi[0])}]"
        )
    if lo[1:].min() < COORD_MIN or hi[1:].max() > COORD_MAX:
        raise ValueError(
            f"{name}: x, y, z must be in [{COORD_MIN}, {COORD_MAX}] (voxel units), got "
            f"[{int(lo[1:].min())}, {int(hi[1:].max())}]; use a larger voxel size or recentre the scan"
        )


def pack(coords: torch.Tensor) -> torch.Tensor:
    """Pack int32 ``[N, 4]`` coordinates (already checked) into int64 keys ``[N]`` (on CPU in
    one C pass where the kernels are built)."""
    if _native(coords, torch.int32) and coords.dim() == 2 and coords.shape[1] == 4:
        return cpu_kernel_map.pack_keys(coords)
    c = coords.long()
    return (
        (c[:, 0] << _SHIFT_B)
        | ((c[:, 1] + _BIAS) << _SHIFT_X)
        | ((c[:, 2] + _BIAS) << FIELD_BITS)
        | (c[:, 3] + _BIAS)
    )


def unpack(keys: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack`: int64 keys ``[N]`` back to int32 ``[N, 4]`` coordinates."""
    if _native(keys, torch.int64) and keys.dim() == 1:
        return cpu_kernel_map.unpack_keys(keys.contiguous())
    out = torch.empty((keys.shape[0], 4), dtype=torch.int32, device=keys.device)
    out[:, 0] = keys >> _SHIFT_B
    out[:, 1] = ((keys >> _SHIFT_X) & _FIELD_MASK) - _BIAS
    out[:, 2] = ((keys >> FIELD_BITS) & _FIELD_MASK) - _BIAS
    out[:, 3] = (keys & _FIELD_MASK) - _BIAS
    return out


def _native(t: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether the C packing applies: a tensor of ``dtype`` where the C mapper builds maps
    (:func:`sparseconv.maps.tables.native`), outside torch.compile (asked first: the library
    check takes a lock, which a compiled graph cannot trace)."""
    return t.dtype == dtype and not torch.compiler.is_compiling() and tables.native(t.device)


def pack_offset(delta: tuple[int, int, int]) -> int:
    """Key difference of a spatial shift ``delta`` (voxel units): ``pack(c + d) == pack(c) + this``."""
    dx, dy, dz = (int(v) for v in delta)
    if max(abs(dx), abs(dy), abs(dz)) > MAX_OFFSET:
        raise ValueError(
            f"kernel offset {delta} (offset x dilation x tensor stride) exceeds the key guard band "
            f"of +-{MAX_OFFSET} voxels"
        )
    return (dx << _SHIFT_X) + (dy << FIELD_BITS) + dz
