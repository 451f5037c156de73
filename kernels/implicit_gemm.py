"""Output-stationary implicit GEMM over a neighbour table, in Triton.

Algorithm (TorchSparse++'s implicit GEMM / spconv's "implicit gemm" dataflow): a program owns
``BM`` output rows and ``BN`` output channels and walks the kernel offsets; for each offset it
gathers the neighbours listed in ``nbmap[rows, k]`` (-1 = none, loaded as zeros) and accumulates
``neighbours @ W[k]`` in registers. Each output is written once by one program: no atomics, so
the result is bitwise deterministic.

A LiDAR voxel has ~3 of its 27 neighbours, so most (tile, offset) steps would multiply zeros.
The rows a program owns are taken through ``row_order`` (rows sorted by their neighbour bit
mask, spconv's mask-sorting idea), which makes rows with the same neighbours share a tile; a
tile skips every offset that none of its rows has. The input gradient runs the same kernel on the transposed
map's ``nbmap`` with ``W^T``. Reference: ``sparseconv.functional.dataflow_torch.forward``.
"""

import torch
import triton
import triton.language as tl

from sparseconv.kernels.tiles import accumulate_gathered_dot, channel_tile, dot_precision


@triton.jit
def _implicit_gemm_kernel(
    src_ptr, w_ptr, dst_ptr, nbmap_ptr, order_ptr,
    n_dst, n_kernel, c_in, c_out, stride_wk, stride_wi, stride_wo,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, ACC64: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    tile = tl.program_id(0) * BM + tl.arange(0, BM)
    rmask = tile < n_dst
    rows = tl.load(order_ptr + tile, mask=rmask, other=0).to(tl.int64)
    cn = tl.program_id(1) * BN + tl.arange(0, BN)
    nmask = cn < c_out
    if ACC64:  # noqa: SIM108 (a constexpr branch: resolved at compile time)
        acc = tl.zeros((BM, BN), dtype=tl.float64)
    else:
        acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(0, n_kernel):
        nb = tl.load(nbmap_ptr + rows * n_kernel + k, mask=rmask, other=-1)
        if tl.max(nb, axis=0) >= 0:  # some row of the tile has this neighbour
            valid = nb >= 0
            src_rows = tl.where(valid, nb, 0).to(tl.int64)
            acc = accumulate_gathered_dot(
                acc, src_ptr, src_rows, valid, w_ptr, k, cn, nmask,
                c_in, stride_wk, stride_wi, stride_wo, BK, PRECISION,
            )  # fmt: skip
    tl.store(
        dst_ptr + rows[:, None] * c_out + cn[None, :],
        acc,
        mask=rmask[:, None] & nmask[None, :],
    )


def neighbour_mask_order(nbmap: torch.Tensor) -> torch.Tensor:
    """Rows sorted by which neighbours they have (stable: ties keep their spatial order).

    The key is the bit mask of the first 62 offsets (all of them up to 3x3x5 kernels); the
    order only groups rows for tile skipping, any permutation gives the same result.
    """
    m = min(nbmap.shape[1], 62)
    bits = torch.ones(m, dtype=torch.int64, device=nbmap.device) << torch.arange(
        m, device=nbmap.device
    )
    key = ((nbmap[:, :m] >= 0).long() * bits).sum(1)
    return torch.argsort(key, stable=True)


def implicit_gemm(
    src: torch.Tensor,
    weight: torch.Tensor,
    nbmap: torch.Tensor,
    row_order: torch.Tensor | None = None,
    bm: int = 64,
) -> torch.Tensor:
    """``[N_dst, Cout]`` in ``src``'s dtype with ``dst[j] = sum_k src[nbmap[j, k]] @ weight[k]``.

    Accumulates in float32 (float64 for float64 inputs) and rounds once on the store.
    ``row_order`` (see :func:`neighbour_mask_order`) is a permutation of the rows.
    """
    n_dst, n_kernel = nbmap.shape
    c_in, c_out = weight.shape[1], weight.shape[2]
    dst = torch.empty((n_dst, c_out), dtype=src.dtype, device=src.device)
    if n_dst == 0:
        return dst
    if row_order is None:
        row_order = torch.arange(n_dst, device=src.device)
    bn, bk = channel_tile(c_out), channel_tile(c_in)
    grid = (triton.cdiv(n_dst, bm), triton.cdiv(c_out, bn))
    _implicit_gemm_kernel[grid](
        src.contiguous(), weight, dst, nbmap.contiguous(), row_order,
        n_dst, n_kernel, c_in, c_out, weight.stride(0), weight.stride(1), weight.stride(2),
        BM=bm, BN=bn, BK=bk, ACC64=src.dtype == torch.float64, PRECISION=dot_precision(),
    )  # fmt: skip
    return dst
