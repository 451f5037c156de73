"""Kernel-map building in C (``cpu/kernel_map.c``): neighbour tables and their CSR pair lists.

Every search fills columns of an int32 neighbour table ``nbmap[N_out, K]`` (input row, -1 where
there is none), which is what the implicit-GEMM dataflows read; the CSR pair lists of the
gather-scatter dataflows and the weight gradient are derived from it on demand
(:func:`csr_from_nbmap`). Reference: ``sparseconv.maps.neighbors`` (torch).
"""

from __future__ import annotations

import torch

from sparseconv.kernels import cpu_library
from sparseconv.utils.threads import available_threads

available = cpu_library.available
CHUNK = 2048  # rows per work item in kernel_map.c (the CSR fill writes chunk by chunk)


def _threads() -> int:
    return available_threads()


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _check_keys(**tensors: torch.Tensor | None) -> None:
    for name, t in tensors.items():
        if t is not None and (t.dtype != torch.int64 or not t.is_contiguous() or t.is_cuda):
            raise TypeError(f"{name} must be a contiguous int64 CPU tensor")


def search_sorted(
    in_keys: torch.Tensor,
    in_rows: torch.Tensor | None,
    out_keys: torch.Tensor,
    out_rows: torch.Tensor | None,
    shifts: torch.Tensor,
    nbmap: torch.Tensor,
    col0: int = 0,
) -> None:
    """``nbmap[out_rows[j], col0 + k]`` = row of the input keyed ``out_keys[j] + shifts[k]``.

    ``in_keys`` and ``out_keys`` are sorted ascending; ``*_rows`` give the row of each sorted
    position (None: the identity).
    """
    _check_keys(in_keys=in_keys, in_rows=in_rows, out_keys=out_keys, out_rows=out_rows,
                shifts=shifts)  # fmt: skip
    _check_table(nbmap, out_keys.numel(), col0 + shifts.numel())
    if cpu_library.lib().sc_search_sorted(
        in_keys.data_ptr(), _ptr(in_rows), in_keys.numel(), out_keys.data_ptr(), _ptr(out_rows),
        out_keys.numel(), shifts.data_ptr(), shifts.numel(), nbmap.data_ptr(), nbmap.shape[1],
        col0, _threads(),
    ):  # fmt: skip
        raise MemoryError("search_sorted: out of memory")


def search_sorted_mirrored(
    keys: torch.Tensor, rows: torch.Tensor | None, shifts: torch.Tensor, nbmap: torch.Tensor
) -> None:
    """The whole submanifold table ``nbmap [N, 2 * len(shifts) + 1]`` of a symmetric kernel from
    the first half of its shifts: :func:`search_sorted` of ``keys`` against themselves, and each
    hit also written as its mirror (what :func:`mirror` does after a half search, in the same
    pass). ``keys`` sorted ascending, ``rows`` the row of each sorted position (None: identity)."""
    _check_keys(keys=keys, rows=rows, shifts=shifts)
    _check_table(nbmap, keys.numel(), 2 * shifts.numel() + 1)
    if nbmap.shape[1] != 2 * shifts.numel() + 1:
        raise ValueError(f"nbmap {list(nbmap.shape)} must have 2 * {shifts.numel()} + 1 columns")
    if cpu_library.lib().sc_search_sorted_mirrored(
        keys.data_ptr(), _ptr(rows), keys.numel(), shifts.data_ptr(), shifts.numel(),
        nbmap.data_ptr(), _threads(),
    ):  # fmt: skip
        raise MemoryError("search_sorted_mirrored: out of memory")


def hash_table(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Open-addressing table of ``keys`` (load factor <= 1/4): ``(slot keys, slot rows)``."""
    _check_keys(keys=keys)
    capacity = 1 << max(4, (4 * max(keys.numel(), 1) - 1).bit_length())
    table_keys = torch.empty(capacity, dtype=torch.int64)
    table_rows = torch.empty(capacity, dtype=torch.int32)
    dup = cpu_library.lib().sc_hash_build(
        keys.data_ptr(), keys.numel(), table_keys.data_ptr(), table_rows.data_ptr(), capacity,
        _threads(),
    )  # fmt: skip
    if dup:
        raise ValueError(
            "coords contain duplicate coordinates; use sparseconv.voxelize to merge points that "
            "fall into the same voxel"
        )
    return table_keys, table_rows


def search_hash(
    table: tuple[torch.Tensor, torch.Tensor],
    out_keys: torch.Tensor,
    shifts: torch.Tensor,
    nbmap: torch.Tensor,
    col0: int = 0,
) -> None:
    """``nbmap[j, col0 + k]`` = the table's row for ``out_keys[j] + shifts[k]`` (or -1)."""
    _check_keys(out_keys=out_keys, shifts=shifts)
    _check_table(nbmap, out_keys.numel(), col0 + shifts.numel())
    table_keys, table_rows = table
    cpu_library.lib().sc_search_hash(
        table_keys.data_ptr(), table_rows.data_ptr(), table_keys.numel(), out_keys.data_ptr(),
        out_keys.numel(), shifts.data_ptr(), shifts.numel(), nbmap.data_ptr(), nbmap.shape[1],
        col0, _threads(),
    )  # fmt: skip


def mirror(nbmap: torch.Tensor) -> None:
    """Complete a symmetric submanifold table from its first ``K // 2`` columns, in place."""
    _check_table(nbmap, nbmap.shape[0], nbmap.shape[1])
    cpu_library.lib().sc_mirror(nbmap.data_ptr(), nbmap.shape[0], nbmap.shape[1], _threads())


def transpose_nbmap(nbmap: torch.Tensor, n_in: int) -> torch.Tensor:
    """The transposed conv's table ``[n_in, K]``: ``t[i, k] = j`` where ``nbmap[j, k] = i``."""
    _check_table(nbmap, nbmap.shape[0], nbmap.shape[1])
    out = torch.empty((n_in, nbmap.shape[1]), dtype=torch.int32)
    bad = cpu_library.lib().sc_transpose_nbmap(
        nbmap.data_ptr(), nbmap.shape[0], nbmap.shape[1], out.data_ptr(), n_in, _threads()
    )
    if bad:
        raise IndexError(f"the neighbour table names a row outside 0..{n_in - 1}")
    return out


def csr_from_nbmap(nbmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(in_idx, out_idx, offset_ptr)``: the table's pairs grouped by offset, by row within one."""
    _check_table(nbmap, nbmap.shape[0], nbmap.shape[1])
    n, k = nbmap.shape
    n_chunks = -(-n // CHUNK)
    counts = torch.zeros((n_chunks, k), dtype=torch.int64)
    lib = cpu_library.lib()
    lib.sc_csr_count(nbmap.data_ptr(), n, k, counts.data_ptr(), _threads())
    per_offset = counts.sum(0)
    offset_ptr = torch.zeros(k + 1, dtype=torch.int64)
    torch.cumsum(per_offset, 0, out=offset_ptr[1:])
    # chunk c writes offset k's pairs after those of chunks < c
    starts = (offset_ptr[:-1] + counts.cumsum(0) - counts).contiguous()
    total = int(offset_ptr[-1])
    in_idx = torch.empty(total, dtype=torch.int64)
    out_idx = torch.empty(total, dtype=torch.int64)
    if lib.sc_csr_fill(nbmap.data_ptr(), n, k, starts.data_ptr(), in_idx.data_ptr(),
                       out_idx.data_ptr(), _threads()):  # fmt: skip
        raise MemoryError("csr_from_nbmap: out of memory for the per-thread buffers")
    return in_idx, out_idx, offset_ptr


def _check_table(nbmap: torch.Tensor, rows: int, columns: int) -> None:
    if nbmap.dtype != torch.int32 or not nbmap.is_contiguous() or nbmap.is_cuda:
        raise TypeError("nbmap must be a contiguous int32 CPU tensor")
    if nbmap.dim() != 2 or nbmap.shape[0] != rows or nbmap.shape[1] < columns:
        raise ValueError(f"nbmap {list(nbmap.shape)} cannot hold {rows} rows x {columns} columns")


def downsample(
    keys: torch.Tensor, out_stride: tuple[int, int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Minkowski downsampling of sorted ``keys``: ``(out_keys, out_row, floored)``.

    ``out_keys`` are the sorted distinct keys of ``floor(coord / out_stride) * out_stride``,
    ``out_row[i]`` is the output row input ``i`` falls in, ``floored[i]`` its floored key.
    """
    _check_keys(keys=keys)
    n = keys.numel()
    floored = torch.empty(n, dtype=torch.int64)
    order = torch.empty(n, dtype=torch.int64)
    if cpu_library.lib().sc_downsample_sorted(
        keys.data_ptr(), n, *out_stride, floored.data_ptr(), order.data_ptr(), _threads()
    ):
        raise MemoryError("downsample: out of memory")
    out_keys = torch.empty(n, dtype=torch.int64)
    out_row = torch.empty(n, dtype=torch.int64)
    n_out = torch.zeros(1, dtype=torch.int64)
    cpu_library.lib().sc_downsample_outputs(
        floored.data_ptr(), order.data_ptr(), n, out_keys.data_ptr(), out_row.data_ptr(),
        n_out.data_ptr(),
    )  # fmt: skip
    return out_keys[: int(n_out)].clone(), out_row, floored


def select_cells(
    keys: torch.Tensor,
    block_of: torch.Tensor,
    block_keys: torch.Tensor,
    cell: tuple[int, int, int],
    scores: torch.Tensor | None,
    keep_ratio: float | None,
    threshold: float | None,
    feats: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cell-granular voxel pruning's pick: ``(rows, source)`` (see ``sc_select_cells``;
    ``keep_ratio=None`` keeps the cells scoring ``>= threshold``). Scores are ``scores`` or,
    with ``feats`` instead, each row's feature L2 norm, computed in the same pass."""
    _check_keys(keys=keys, block_of=block_of, block_keys=block_keys)
    if (scores is None) == (feats is None):
        raise ValueError("select_cells: give exactly one of scores and feats")
    n = keys.numel()
    if scores is not None:
        scores = scores.detach().float().contiguous()
        rows_given, on_gpu = scores.numel(), scores.is_cuda
    else:
        feats = feats.detach().float().contiguous()
        rows_given, on_gpu = (feats.shape[0] if feats.dim() == 2 else -1), feats.is_cuda
    if rows_given != n or block_of.numel() != n or on_gpu:
        raise ValueError("select_cells: one score (or feature row) and one block per row (CPU)")
    rows, source = torch.empty(n, dtype=torch.int64), torch.empty(n, dtype=torch.int64)
    n_kept = torch.zeros(1, dtype=torch.int64)
    ratio = -1.0 if keep_ratio is None else float(keep_ratio)
    if cpu_library.lib().sc_select_cells(
        keys.data_ptr(), block_of.data_ptr(), block_keys.data_ptr(), n, block_keys.numel(),
        *cell, _ptr(scores), _ptr(feats), 0 if feats is None else feats.shape[1], ratio,
        float(threshold or 0.0), rows.data_ptr(), n_kept.data_ptr(), source.data_ptr(),
    ):  # fmt: skip
        raise MemoryError("select_cells: out of memory")
    return rows[: int(n_kept)], source


def pack_keys(coords: torch.Tensor) -> torch.Tensor:
    """:func:`sparseconv.maps.keys.pack` in one pass (int32 ``[N, 4]`` checked coordinates)."""
    if coords.dtype != torch.int32 or coords.is_cuda or coords.dim() != 2 or coords.shape[1] != 4:
        raise TypeError("coords must be an int32 CPU tensor of shape [N, 4]")
    coords = coords.contiguous()
    keys = torch.empty(coords.shape[0], dtype=torch.int64)
    cpu_library.lib().sc_pack_keys(coords.data_ptr(), coords.shape[0], keys.data_ptr(), _threads())
    return keys


def is_sorted(keys: torch.Tensor) -> bool:
    """Whether int64 ``keys`` ascend (one C pass)."""
    _check_keys(keys=keys)
    return bool(cpu_library.lib().sc_is_sorted(keys.data_ptr(), keys.numel()))


def unpack_keys(keys: torch.Tensor) -> torch.Tensor:
    """:func:`sparseconv.maps.keys.unpack` in one pass."""
    _check_keys(keys=keys)
    coords = torch.empty((keys.numel(), 4), dtype=torch.int32)
    cpu_library.lib().sc_unpack_keys(keys.data_ptr(), keys.numel(), coords.data_ptr(), _threads())
    return coords


def scatter_cells(
    keys: torch.Tensor,
    floored: torch.Tensor,
    out_row: torch.Tensor,
    n_out: int,
    kernel: tuple[int, int, int],
    tensor_stride: tuple[int, int, int],
) -> torch.Tensor:
    """The table ``[n_out, kx*ky*kz]`` of a conv whose kernel equals its stride: every input
    lies in one output cell (from :func:`downsample`), at the offset of its place in the cell."""
    k = kernel[0] * kernel[1] * kernel[2]
    nbmap = torch.empty((n_out, k), dtype=torch.int32)
    if cpu_library.lib().sc_scatter_cells(
        keys.data_ptr(), floored.data_ptr(), out_row.data_ptr(), keys.numel(), *kernel,
        *tensor_stride, nbmap.data_ptr(), n_out, _threads(),
    ):  # fmt: skip
        raise IndexError("scatter_cells: an input lies outside its output cell")
    return nbmap
