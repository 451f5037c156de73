"""Output coordinates of strided and transposed convolutions.

Two rules for a strided conv, both used by the peers (``downsample_mode``):

* ``"minkowski"`` (default, MinkowskiEngine/TorchSparse): each input falls into the output cell
  ``floor(p / s) * s``; one output per occupied coarse cell, whatever the kernel size.
* ``"spconv"``: every coarse-grid position whose receptive field ``o + delta*dilation``
  (``delta`` in ``0..k-1``) holds at least one input; for ``k > s`` this grows the set, exactly
  like spconv's ``SparseConv3d`` with ``padding=0``.

A transposed conv without a cached strided map generates every fine position ``c + delta*dilation``
reachable from an input (spconv's ``SparseConvTranspose3d``).

Coordinates here are in voxel units of the input grid and stay multiples of the tensor stride.
Outputs are returned sorted by packed key (batch, then x, y, z), which makes them deterministic.
"""

from __future__ import annotations

import torch

from sparseconv.maps import keys as coord_keys
from sparseconv.maps.offsets import Triple


def _unique_coords(coords: torch.Tensor) -> torch.Tensor:
    return coord_keys.unpack(torch.unique(coord_keys.pack(coords)))


def within(coords: torch.Tensor, tensor_stride: Triple, bounds: Triple | None) -> torch.Tensor:
    """The rows inside the grid ``[0, bounds)`` (``bounds`` in units of ``tensor_stride``)."""
    if bounds is None or coords.shape[0] == 0:
        return coords
    limit = torch.tensor([b * t for b, t in zip(bounds, tensor_stride)], device=coords.device)
    xyz = coords[:, 1:]
    return coords[((xyz >= 0) & (xyz < limit)).all(dim=1)]


def strided_minkowski(coords: torch.Tensor, out_stride: Triple) -> torch.Tensor:
    s = torch.tensor([1, *out_stride], dtype=torch.int32, device=coords.device)
    return _unique_coords(torch.div(coords, s, rounding_mode="floor") * s)


def strided_spconv(coords: torch.Tensor, deltas: torch.Tensor, out_stride: Triple) -> torch.Tensor:
    """Candidates ``p - delta`` that lie on the output grid (``deltas`` in voxel units)."""
    if coords.shape[0] == 0:
        return coords.clone()
    d = deltas.to(device=coords.device, dtype=torch.int32)
    cand = coords[None, :, 1:] - d[:, None, :]
    s = torch.tensor(out_stride, dtype=torch.int32, device=coords.device)
    on_grid = (torch.remainder(cand, s) == 0).all(dim=2)
    batch = coords[:, :1].expand(d.shape[0], -1, -1)
    cand = torch.cat([batch, cand], dim=2)[on_grid]
    coord_keys.check_coords(cand, "output coords")
    return _unique_coords(cand)


def transposed_generative(coords: torch.Tensor, deltas: torch.Tensor) -> torch.Tensor:
    """Every fine position ``p + delta`` (``deltas`` in voxel units of the output grid)."""
    if coords.shape[0] == 0:
        return coords.clone()
    d = deltas.to(device=coords.device, dtype=torch.int32)
    cand = coords[None, :, 1:] + d[:, None, :]
    batch = coords[:, :1].expand(d.shape[0], -1, -1)
    cand = torch.cat([batch, cand], dim=2).reshape(-1, 4)
    coord_keys.check_coords(cand, "output coords")
    return _unique_coords(cand)
