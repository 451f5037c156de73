"""``build_kernel_map``: output coordinates plus the offset-grouped input/output pairs."""

from __future__ import annotations

import torch

from sparseconv.kernels import cpu_kernel_map
from sparseconv.maps import device as device_maps
from sparseconv.maps import keys as coord_keys
from sparseconv.maps import output_coords, tables
from sparseconv.maps.cache import MapCache
from sparseconv.maps.kernel_map import KernelMap, from_neighbor_matrix, submanifold_from_half
from sparseconv.maps.neighbors import METHODS, neighbor_matrix
from sparseconv.maps.offsets import (
    as_triple,
    kernel_offsets,
    scaled_offset_list,
    scaled_offsets,
)

DOWNSAMPLE_MODES = ("minkowski", "spconv")
# nbmap holds int32 row indices (-1 for none): a map over more rows would wrap around
MAX_ROWS = 2**31 - 1


def build_kernel_map(
    coords: torch.Tensor,
    kernel_size: int | tuple[int, int, int] = 3,
    stride: int | tuple[int, int, int] = 1,
    dilation: int | tuple[int, int, int] = 1,
    method: str = "auto",
    downsample_mode: str = "minkowski",
    tensor_stride: int | tuple[int, int, int] = 1,
    transposed: bool = False,
    cache: MapCache | None = None,
    check: bool = True,
) -> KernelMap:
    """Kernel map of a sparse conv on ``coords`` (int32 ``[N, 4]``, batch first).

    ``stride=1`` and ``transposed=False`` is a submanifold conv (outputs = inputs). A strided conv
    produces outputs at ``tensor_stride * stride`` by ``downsample_mode``; a transposed conv
    returns to ``tensor_stride / stride``, reusing the strided map from ``cache`` when there is
    one (the coordinates it returns to are the strided conv's inputs), else generating outputs.
    ``method`` is ``"hash"``, ``"mergesort"`` (identical maps) or ``"auto"``: merge-sort on CPU,
    where ``sparseconv bench maps`` measures it faster, and the Triton hash table on CUDA.
    ``check=False`` skips the range check of ``coords`` (it reads them: a device sync on CUDA)
    for coordinates a ``SparseTensor`` has checked already.
    """
    ks = as_triple(kernel_size, "kernel_size")
    if max(ks) > 5:
        raise ValueError(f"kernel_size must be at most 5 per axis, got {ks}")
    s = as_triple(stride, "stride")
    d = as_triple(dilation, "dilation")
    ts = as_triple(tensor_stride, "tensor_stride")
    if method == "auto":
        method = "hash" if coords.device.type == "cuda" else "mergesort"
    if method not in METHODS:
        raise ValueError(f"method must be 'auto' or one of {METHODS}, got {method!r}")
    if downsample_mode not in DOWNSAMPLE_MODES:
        raise ValueError(
            f"downsample_mode must be one of {DOWNSAMPLE_MODES}, got {downsample_mode!r}"
        )
    if cache is not None and cache.coords.get(ts) is not coords:
        # The cache holds one coordinate set per stride; another set must not reuse its maps.
        cache = None
    key = (ts, ks, s, d, transposed, downsample_mode)
    if cache is not None and key in cache.kmaps:
        return cache.kmaps[key]  # checked when it was built; a hit costs no device sync
    coord_keys.check_coords(coords, values=check)
    check_rows(coords.shape[0], "input")
    offsets = kernel_offsets(ks, centred=s == (1, 1, 1))
    if transposed:
        kmap = _transposed(coords, ks, s, d, ts, offsets, method, downsample_mode, cache)
    else:
        kmap = _forward(coords, s, d, ts, offsets, method, downsample_mode, cache)
    if cache is not None:
        cache.kmaps[key] = kmap
    return kmap


def _forward(coords, s, d, ts, offsets, method, mode, cache) -> KernelMap:
    if device_maps.applies(coords.device) and not tables.native(coords.device):
        return _device_forward(coords, s, d, ts, offsets, method, mode, cache)
    shifts = scaled_offsets(offsets, d, ts).to(coords.device)
    in_keys = coord_keys.pack(coords)
    symmetric = s == (1, 1, 1) and all(k % 2 == 1 for k in _kernel_dims(offsets))
    if s == (1, 1, 1):
        out_coords = coords
    else:
        ts_out = tuple(a * b for a, b in zip(ts, s))
        if mode == "minkowski" and tables.native(coords.device) and tables.is_sorted(in_keys):
            return _native_downsample(in_keys, coords, ts, ts_out, s, d, shifts, offsets, method,
                                      cache)  # fmt: skip
        if mode == "minkowski":
            out_coords = output_coords.strided_minkowski(coords, ts_out)
        else:
            out_coords = output_coords.strided_spconv(coords, shifts, ts_out)
        if cache is not None and mode == "minkowski":
            out_coords = cache.coords.setdefault(ts_out, out_coords)
    if tables.native(coords.device):
        return _native_map(in_keys, coords, out_coords, shifts, offsets, method, symmetric)
    table = cache.table(ts, coords, in_keys) if (cache is not None and method == "hash") else None
    if symmetric:
        half = neighbor_matrix(in_keys, in_keys, shifts[: len(offsets) // 2], method, table)
        return submanifold_from_half(half, coords, offsets)
    found = neighbor_matrix(in_keys, coord_keys.pack(out_coords), shifts, method, table)
    return from_neighbor_matrix(found, out_coords, coords.shape[0], offsets)


def _device_forward(coords, s, d, ts, offsets, method, mode, cache) -> KernelMap:
    """CUDA: the whole table in one pass; a strided map reads back only its output count."""
    shifts = scaled_offset_list(offsets, d, ts)
    in_keys = coord_keys.pack(coords)
    if s == (1, 1, 1):
        symmetric = all(k % 2 == 1 for k in _kernel_dims(offsets))
        return device_maps.kernel_map(in_keys, in_keys, coords, coords.shape[0], shifts, offsets,
                                      method, submanifold=symmetric)  # fmt: skip
    ts_out = tuple(a * b for a, b in zip(ts, s))
    out_keys = device_maps.strided_outputs(coords, ts_out, shifts, mode)
    out_coords = coord_keys.unpack(out_keys)
    if cache is not None and mode == "minkowski":
        out_coords = cache.coords.setdefault(ts_out, out_coords)
    return device_maps.kernel_map(in_keys, out_keys, out_coords, coords.shape[0], shifts, offsets,
                                  method)  # fmt: skip


def _native_downsample(
    in_keys, coords, ts, ts_out, s, d, shifts, offsets, method, cache
) -> KernelMap:
    """Minkowski strided map by the C mapper: outputs and each input's cell in one pass; a
    kernel equal to the stride needs no search (every input lies in one cell)."""
    out_keys, out_row, floored = cpu_kernel_map.downsample(in_keys, ts_out)
    out_coords = coord_keys.unpack(out_keys)
    if cache is not None:  # an equal coordinate set may be cached already: share that one
        out_coords = cache.coords.setdefault(ts_out, out_coords)
    ks = _kernel_dims(offsets)
    if ks == s and d == (1, 1, 1):
        nbmap = cpu_kernel_map.scatter_cells(in_keys, floored, out_row, len(out_keys), ks, ts)
        return KernelMap.from_nbmap(nbmap, out_coords, coords.shape[0], offsets)
    return _native_map(in_keys, coords, out_coords, shifts, offsets, method, False, out_keys)


def _native_map(
    in_keys, coords, out_coords, shifts, offsets, method, symmetric, out_keys=None
) -> KernelMap:
    """The C mapper: the neighbour table directly, CSR lists only if a dataflow asks."""
    n_out, volume = out_coords.shape[0], len(offsets)
    check_rows(n_out, "output")
    nbmap = torch.empty((n_out, volume), dtype=torch.int32)
    packed = [coord_keys.pack_offset(tuple(v)) for v in shifts.tolist()]
    if symmetric:
        if n_out:
            tables.search(in_keys, in_keys, packed[: volume // 2], method, nbmap)
            cpu_kernel_map.mirror(nbmap)
        return KernelMap.from_nbmap(nbmap, coords, coords.shape[0], offsets, submanifold=True)
    if out_keys is None:
        out_keys = in_keys if out_coords is coords else coord_keys.pack(out_coords)
    if n_out and coords.shape[0]:
        tables.search(in_keys, out_keys, packed, method, nbmap)
    else:
        nbmap.fill_(-1)
    return KernelMap.from_nbmap(nbmap, out_coords, coords.shape[0], offsets)


def _transposed(coords, ks, s, d, ts, offsets, method, mode, cache) -> KernelMap:
    if any(a % b for a, b in zip(ts, s)):
        raise ValueError(
            f"a transposed conv with stride {s} needs a tensor stride divisible by it, got {ts}"
        )
    ts_out = tuple(a // b for a, b in zip(ts, s))
    if cache is not None:
        down_key = (ts_out, ks, s, d, False, mode)
        fine = cache.coords.get(ts_out)
        if down_key in cache.kmaps and fine is not None:
            return cache.kmaps[down_key].transposed(fine)
    if device_maps.applies(coords.device) and not tables.native(coords.device):
        deltas = scaled_offset_list(offsets, d, ts_out)
        out_keys = device_maps.generated_outputs(coords, deltas)
        negated = [(-a, -b, -c) for a, b, c in deltas]
        return device_maps.kernel_map(coord_keys.pack(coords), out_keys,
                                      coord_keys.unpack(out_keys), coords.shape[0], negated,
                                      offsets, method)  # fmt: skip
    deltas = scaled_offsets(offsets, d, ts_out).to(coords.device)
    out_coords = output_coords.transposed_generative(coords, deltas)
    if tables.native(coords.device):
        return _native_map(coord_keys.pack(coords), coords, out_coords, -deltas, offsets, method,
                           symmetric=False)  # fmt: skip
    found = neighbor_matrix(coord_keys.pack(coords), coord_keys.pack(out_coords), -deltas, method)
    return from_neighbor_matrix(found, out_coords, coords.shape[0], offsets)


def check_rows(n: int, what: str) -> None:
    """ValueError before anything is allocated when ``n`` rows cannot be indexed by int32."""
    if n > MAX_ROWS:
        raise ValueError(
            f"a kernel map indexes {what} rows with int32, so at most {MAX_ROWS} rows; got {n} "
            "(split the batch into smaller ones)"
        )


def _kernel_dims(offsets: list[tuple[int, int, int]]) -> tuple[int, int, int]:
    return tuple(len({o[a] for o in offsets}) for a in range(3))  # type: ignore[return-value]
