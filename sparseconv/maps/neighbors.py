"""Neighbour search: for every output and every shift, the input at ``out + shift`` (or -1).

Two mappers answer the same question and must agree exactly:

* ``"hash"``: an open-addressing table of the input keys, queried with ``out_key + shift_key``
  for all shifts at once (one vectorized pass; the Triton table on CUDA).
* ``"mergesort"`` (PointAcc, MICRO'21): input keys sorted once; output keys sorted; for each
  shift the shifted output stream is merged with the input stream and equal keys are matches.
  Shifting a sorted stream keeps it sorted (see ``keys``), so the merge position of one shift is
  found by one binary search per (dx, dy) column and the z-neighbours of that column are reached
  by stepping forward in the sorted inputs — the merge done column-wise, without a hash table.
  Inputs already in key order (what ``voxelize`` returns) are not sorted again.

Both return an int32 matrix ``[K, N_out]`` of input rows; ``kernel_map`` turns it into the CSR map.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from sparseconv.maps import keys as coord_keys
from sparseconv.maps.hashtable import HashTable

METHODS = ("hash", "mergesort")
_SENTINEL = (1 << 63) - 1


def neighbor_matrix(
    in_keys: torch.Tensor,
    out_keys: torch.Tensor,
    shifts: torch.Tensor,
    method: str = "hash",
    table: HashTable | None = None,
) -> torch.Tensor:
    """int32 ``[K, N_out]``: row of the input at ``out + shifts[k]``, -1 where there is none."""
    if method == "hash":
        return _by_hash(in_keys, out_keys, shifts, table)
    if method == "mergesort":
        return _by_mergesort(in_keys, out_keys, shifts)
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def _packed_shifts(shifts: torch.Tensor) -> list[int]:
    return [coord_keys.pack_offset(tuple(s)) for s in shifts.tolist()]


def _by_hash(
    in_keys: torch.Tensor, out_keys: torch.Tensor, shifts: torch.Tensor, table: HashTable | None
) -> torch.Tensor:
    n_shift, n_out = shifts.shape[0], out_keys.numel()
    if n_shift == 0 or n_out == 0 or in_keys.numel() == 0:
        return torch.full((n_shift, n_out), -1, dtype=torch.int32, device=out_keys.device)
    table = table if table is not None else HashTable.build(in_keys)
    packed = torch.tensor(_packed_shifts(shifts), dtype=torch.int64, device=out_keys.device)
    queries = (out_keys[None, :] + packed[:, None]).reshape(-1)
    return table.query(queries).view(n_shift, n_out)


def _sort_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(sorted keys, order)``; order is None when the keys already are sorted.

    ``voxelize`` and strided output coordinates come out in key order, so the common case costs
    one comparison pass instead of a sort (and the result needs no un-permuting afterwards).
    """
    if keys.numel() < 2 or bool((keys[1:] >= keys[:-1]).all()):
        return keys, None
    return torch.sort(keys)


def _by_mergesort(
    in_keys: torch.Tensor, out_keys: torch.Tensor, shifts: torch.Tensor
) -> torch.Tensor:
    device = out_keys.device
    n_shift, n_out = shifts.shape[0], out_keys.numel()
    if n_shift == 0 or n_out == 0 or in_keys.numel() == 0:
        return torch.full((n_shift, n_out), -1, dtype=torch.int32, device=device)
    sorted_in, in_perm = _sort_keys(in_keys)
    # a submanifold map searches the inputs' own keys: one sort serves both streams
    sorted_out, out_order = (sorted_in, in_perm) if out_keys is in_keys else _sort_keys(out_keys)
    if in_perm is None:
        in_perm = torch.arange(in_keys.numel(), device=device)
    in_order = in_perm.int()
    sorted_in = torch.cat([sorted_in, sorted_in.new_tensor([_SENTINEL])])
    columns: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
    for k, (dx, dy, dz) in enumerate(shifts.tolist()):
        columns[(dx, dy)].append((dz, k))
    found_sorted = torch.empty((n_shift, n_out), dtype=torch.int32, device=device)
    for (dx, dy), items in columns.items():
        items.sort()
        base = sorted_out + coord_keys.pack_offset((dx, dy, 0))
        pos = torch.searchsorted(sorted_in, base + items[0][0])
        prev_dz = items[0][0]
        for dz, k in items:
            target = base + dz
            # Merge step. Keys are unique, so after the match test at dz the lower bound of dz + 1
            # is ``pos + hit``; larger gaps (dilation, tensor stride) walk a few steps further.
            while dz - prev_dz > 1:
                behind = sorted_in.index_select(0, pos) < target
                if not bool(behind.any()):
                    break
                pos += behind
            at = sorted_in.index_select(0, pos)
            hit = at == target
            row = in_order.index_select(0, pos.clamp(max=in_order.numel() - 1))
            found_sorted[k] = torch.where(hit, row, -1)
            pos = pos + hit
            prev_dz = dz
    if out_order is None:
        return found_sorted
    found = torch.empty_like(found_sorted)
    found[:, out_order] = found_sorted
    return found
