"""Neighbour tables (``nbmap[N_out, K]``): built by the C mapper on CPU, converted either way.

On CPU with the C kernels (``sparseconv.kernels.cpu_kernel_map``) one pass per chunk of output
rows answers every offset, by sorted merge or by hash, and the CSR pair lists are derived from
the table only when a dataflow asks for them. Elsewhere (CUDA, no C compiler) the same
conversions run in torch; ``sparseconv.maps.neighbors`` keeps the torch mappers as the
reference the tests compare with. Set ``USE_NATIVE = False`` to force the torch code.
"""

from __future__ import annotations

import torch

from sparseconv.kernels import cpu_kernel_map

USE_NATIVE = True


def native(device: torch.device) -> bool:
    """Whether maps on ``device`` are built by the C mapper."""
    return USE_NATIVE and device.type == "cpu" and cpu_kernel_map.available()


def csr_from_nbmap(nbmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(in_idx, out_idx, offset_ptr)``: pairs grouped by offset, sorted by output row."""
    if native(nbmap.device):
        return cpu_kernel_map.csr_from_nbmap(nbmap.contiguous())
    by_offset = nbmap.t()
    k_idx, out_idx = (by_offset >= 0).nonzero(as_tuple=True)
    in_idx = by_offset[k_idx, out_idx].long()
    counts = torch.bincount(k_idx, minlength=nbmap.shape[1]).cpu()
    offset_ptr = torch.zeros(counts.numel() + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=offset_ptr[1:])
    return in_idx, out_idx, offset_ptr


def transpose_nbmap(nbmap: torch.Tensor, n_in: int) -> torch.Tensor:
    """``t[i, k] = j`` where ``nbmap[j, k] = i`` (int32 ``[n_in, K]``, -1 where absent)."""
    if native(nbmap.device):
        return cpu_kernel_map.transpose_nbmap(nbmap.contiguous(), n_in)
    # scatter without a data-dependent shape (no host sync): absent entries write a spare slot
    n_out, volume = nbmap.shape
    flat = torch.full((n_in * volume + 1,), -1, dtype=torch.int32, device=nbmap.device)
    k = torch.arange(volume, device=nbmap.device)
    target = torch.where(nbmap >= 0, nbmap.long() * volume + k, n_in * volume)
    rows = torch.arange(n_out, dtype=torch.int32, device=nbmap.device)[:, None].expand(-1, volume)
    flat.scatter_(0, target.reshape(-1), rows.reshape(-1))
    return flat[:-1].view(n_in, volume)


def search(
    in_keys: torch.Tensor,
    out_keys: torch.Tensor,
    shifts: list[int],
    method: str,
    nbmap: torch.Tensor,
    col0: int = 0,
) -> None:
    """Fill ``nbmap[:, col0 : col0 + len(shifts)]`` by the C mapper (``method`` hash or
    mergesort; both give the same table)."""
    packed = torch.tensor(shifts, dtype=torch.int64)
    if method == "hash":
        table = cpu_kernel_map.hash_table(in_keys.contiguous())
        cpu_kernel_map.search_hash(table, out_keys.contiguous(), packed, nbmap, col0)
        return
    sorted_in, in_rows = _sorted(in_keys)
    if out_keys is in_keys:
        sorted_out, out_rows = sorted_in, in_rows
    else:
        sorted_out, out_rows = _sorted(out_keys)
    cpu_kernel_map.search_sorted(sorted_in, in_rows, sorted_out, out_rows, packed, nbmap, col0)


def search_submanifold(
    keys: torch.Tensor, half_shifts: list[int], method: str, nbmap: torch.Tensor
) -> None:
    """The whole table ``nbmap [N, 2 * len(half_shifts) + 1]`` of a symmetric submanifold kernel
    from the first half of its shifts (the rest are their negations): merge-sort searches and
    mirrors in one pass, hash searches the half and mirrors it after."""
    if method == "hash":
        search(keys, keys, half_shifts, method, nbmap)
        cpu_kernel_map.mirror(nbmap)
        return
    sorted_keys, rows = _sorted(keys)
    packed = torch.tensor(half_shifts, dtype=torch.int64)
    cpu_kernel_map.search_sorted_mirrored(sorted_keys, rows, packed, nbmap)


def check_unique(keys: torch.Tensor) -> None:
    """ValueError when a key occurs twice: one compare pass for ascending keys (what
    ``voxelize`` gives), else the C hash table's insert (CPU only)."""
    if keys.numel() < 2 or bool((keys[1:] > keys[:-1]).all()):
        return
    cpu_kernel_map.hash_table(keys.contiguous())


def is_sorted(keys: torch.Tensor) -> bool:
    """Whether ``keys`` ascend (what ``voxelize`` and strided outputs produce)."""
    if native(keys.device) and keys.dtype == torch.int64 and keys.is_contiguous():
        return cpu_kernel_map.is_sorted(keys)
    return keys.numel() < 2 or bool((keys[1:] >= keys[:-1]).all())


def _sorted(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sorted keys and the row of each sorted position (None when already sorted)."""
    keys = keys.contiguous()
    if is_sorted(keys):
        return keys, None
    values, order = torch.sort(keys)
    return values, order


class Lookup:
    """Row of each query key among ``keys`` (-1 where absent) through the C hash table (CPU;
    elsewhere ``MapCache.table`` serves). SPVCNN's point-voxel steps ask it for every point."""

    def __init__(self, keys: torch.Tensor) -> None:
        self.table = cpu_kernel_map.hash_table(keys.contiguous())

    def __call__(self, queries: torch.Tensor) -> torch.Tensor:
        out = torch.empty((queries.numel(), 1), dtype=torch.int32)
        zero = torch.zeros(1, dtype=torch.int64)
        cpu_kernel_map.search_hash(self.table, queries.contiguous(), zero, out)
        return out.view(-1)
