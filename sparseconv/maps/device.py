"""Device-resident map building (CUDA): every offset in one pass, at most one host sync per map.

A GPU map that is built offset by offset, with a ``nonzero`` and a size read-back after each
step, spends its time waiting on the host: ~55 launches and ~12 synchronisations per map were
measured against spconv's 0.2-0.35 ms. Here a map is the neighbour table ``nbmap[N_out, K]``
answered for all ``N_out x K`` queries at once, by the Triton hash table (``"hash"``) or by one
``searchsorted`` over the sorted input keys (``"mergesort"``), with no data-dependent shape
anywhere: a submanifold map needs no synchronisation at all, a strided or generated one only
the read-back of its output count (with which the range check of generated coordinates
travels). The CSR pair lists are derived only when a dataflow asks for them
(``KernelMap``), so an implicit-GEMM inference never reads sizes back.

On CPU the C mapper (``tables``) is used; setting ``FORCE = True`` sends CPU maps through this
code (with ``TRITON_INTERPRET=1`` for the Triton table), which is how the tests count its syncs
without a GPU.
"""

from __future__ import annotations

import os

import torch

from sparseconv.maps import keys as coord_keys
from sparseconv.maps.hashtable import HashTable
from sparseconv.maps.kernel_map import KernelMap

FORCE = False
SENTINEL = (1 << 63) - 1  # sorts after every key; marks a candidate that is not an output
_SHIFTS: dict[tuple, torch.Tensor] = {}


def applies(device: torch.device) -> bool:
    """Whether maps on ``device`` are built here."""
    return device.type == "cuda" or FORCE


def packed_shifts(shifts: list[tuple[int, int, int]], device: torch.device) -> torch.Tensor:
    """The packed key offsets on the device, copied there once per (offsets, device)."""
    key = (tuple(shifts), str(device))
    if key not in _SHIFTS:
        packed = [coord_keys.pack_offset(s) for s in shifts]
        _SHIFTS[key] = torch.tensor(packed, dtype=torch.int64, device=device)
    return _SHIFTS[key]


def neighbour_table(
    in_keys: torch.Tensor, out_keys: torch.Tensor, shifts: torch.Tensor, method: str
) -> torch.Tensor:
    """int32 ``[N_out, K]``: the input row keyed ``out_keys[j] + shifts[k]``, or -1."""
    n_out, n_shift = out_keys.numel(), shifts.numel()
    if in_keys.numel() == 0 or n_out == 0 or n_shift == 0:
        return torch.full((n_out, n_shift), -1, dtype=torch.int32, device=out_keys.device)
    queries = (out_keys[:, None] + shifts[None, :]).reshape(-1)
    if method == "hash":
        triton = in_keys.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"
        table = HashTable.build(in_keys, use_triton=triton, check_duplicates=False)
        return table.query(queries, use_triton=triton).view(n_out, n_shift)
    sorted_in, perm = torch.sort(in_keys)
    pos = torch.searchsorted(sorted_in, queries).clamp_(max=in_keys.numel() - 1)
    hit = sorted_in.index_select(0, pos) == queries
    rows = perm.index_select(0, pos).int()
    return torch.where(hit, rows, torch.full_like(rows, -1)).view(n_out, n_shift)


def kernel_map(
    in_keys: torch.Tensor,
    out_keys: torch.Tensor,
    out_coords: torch.Tensor,
    n_in: int,
    shifts: list[tuple[int, int, int]],
    offsets: list[tuple[int, int, int]],
    method: str,
    submanifold: bool = False,
) -> KernelMap:
    """The map as its neighbour table (no synchronisation)."""
    device = out_coords.device
    table = neighbour_table(in_keys, out_keys, packed_shifts(shifts, device), method)
    return KernelMap.from_nbmap(table, out_coords, n_in, offsets, submanifold)


def distinct_outputs(
    candidates: torch.Tensor, valid: torch.Tensor, out_of_range: torch.Tensor | None = None
) -> torch.Tensor:
    """Sorted distinct keys among ``candidates[valid]`` with one synchronisation (the count).

    ``out_of_range`` marks candidates that should be outputs but leave the packable range; they
    raise, read back together with the count.
    """
    flat = torch.where(valid, candidates, torch.full_like(candidates, SENTINEL)).reshape(-1)
    ordered = torch.sort(flat).values
    first = torch.ones_like(ordered, dtype=torch.bool)
    if ordered.numel() > 1:
        torch.ne(ordered[1:], ordered[:-1], out=first[1:])
    keep = first & (ordered != SENTINEL)
    bad = out_of_range.sum() if out_of_range is not None else keep.new_zeros((), dtype=torch.long)
    count, n_bad = torch.stack([keep.sum(), bad]).tolist()  # the one synchronisation of this map
    if n_bad:
        raise ValueError(
            f"output coords: {n_bad} outputs leave the packable range "
            f"[{coord_keys.COORD_MIN}, {coord_keys.COORD_MAX}] (voxel units); recentre the scan"
        )
    return ordered[torch.nonzero_static(keep, size=count).squeeze(1)]


def strided_outputs(
    coords: torch.Tensor, out_stride: tuple[int, int, int], shifts, mode: str
) -> torch.Tensor:
    """Output keys of a strided conv (``"minkowski"``: floor to the stride; ``"spconv"``: every
    grid point ``p - delta``), sorted, with one synchronisation."""
    s = torch.tensor(out_stride, dtype=torch.int32, device=coords.device)
    if mode == "minkowski":
        floored = torch.div(coords[:, 1:], s, rounding_mode="floor") * s
        in_range = (floored >= coord_keys.COORD_MIN).all(1)
        cand = torch.cat([coords[:, :1], floored.clamp(min=coord_keys.COORD_MIN)], 1)
        keys = coord_keys.pack(cand)
        return distinct_outputs(keys, in_range, ~in_range)
    keys, in_range = shifted_candidates(coords, shifts, -1)
    spatial = coord_keys.unpack(keys.reshape(-1)).view(*keys.shape, 4)[..., 1:]
    on_grid = (torch.remainder(spatial, s) == 0).all(2)
    return distinct_outputs(keys, on_grid & in_range, on_grid & ~in_range)


def generated_outputs(coords: torch.Tensor, deltas) -> torch.Tensor:
    """Every fine position ``p + delta`` of a transposed conv without a cached map."""
    keys, in_range = shifted_candidates(coords, deltas, 1)
    return distinct_outputs(keys, in_range, ~in_range)


def shifted_candidates(
    coords: torch.Tensor, deltas: list[tuple[int, int, int]], sign: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys of ``coords + sign * delta`` for every delta, and where they stay packable.

    Out-of-range candidates are marked invalid instead of raising (which would need a read-back
    of its own); the caller folds ``~in_range`` into its one count read-back and raises then.
    """
    d = torch.tensor(deltas, dtype=torch.int32, device=coords.device) * sign
    spatial = coords[None, :, 1:] + d[:, None, :]
    in_range = ((spatial >= coord_keys.COORD_MIN) & (spatial <= coord_keys.COORD_MAX)).all(2)
    batch = coords[None, :, :1].expand(len(deltas), -1, -1)
    cand = torch.cat([batch, spatial.clamp(coord_keys.COORD_MIN, coord_keys.COORD_MAX)], 2)
    return coord_keys.pack(cand.reshape(-1, 4)).view(len(deltas), -1), in_range
