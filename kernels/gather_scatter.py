"""Fused grouped gather-GEMM-scatter (weight-stationary sparse conv), in Triton.

Algorithm (TorchSparse / spconv's gather-GEMM-scatter, fused into one launch): the pairs of all
offsets are cut into blocks of ``BM`` pairs that never straddle an offset; a program loads the
``BM`` gathered input rows, multiplies them by its offset's ``W[k]`` tile with ``tl.dot`` (float32
accumulation) and atomically adds the product into the output rows. The same kernel computes the
input gradient (pairs reversed, ``W^T`` through strides). Reference:
``sparseconv.functional.dataflow_torch.gather_gemm_scatter``.

``weight_grad`` computes ``dW[k] = X[in_k]^T @ dY[out_k]``: one program per (offset, Cin tile,
Cout tile) loops over that offset's pairs, so it needs no atomics and is deterministic.
"""

import torch
import triton
import triton.language as tl

from sparseconv.kernels.tiles import accumulate_gathered_dot, channel_tile, dot_precision
from sparseconv.utils.precision import accumulation_dtype


@triton.jit
def _gather_gemm_scatter_kernel(
    src_ptr, w_ptr, dst_ptr, src_idx_ptr, dst_idx_ptr,
    blk_k_ptr, blk_start_ptr, blk_end_ptr,
    c_in, c_out, stride_wk, stride_wi, stride_wo,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, ACC64: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    k = tl.load(blk_k_ptr + pid_m)
    start = tl.load(blk_start_ptr + pid_m)
    end = tl.load(blk_end_ptr + pid_m)
    rows = start + tl.arange(0, BM)
    rmask = rows < end
    src_rows = tl.load(src_idx_ptr + rows, mask=rmask, other=0).to(tl.int64)
    dst_rows = tl.load(dst_idx_ptr + rows, mask=rmask, other=0).to(tl.int64)
    cn = pid_n * BN + tl.arange(0, BN)
    nmask = cn < c_out
    if ACC64:  # noqa: SIM108 (a constexpr branch: resolved at compile time)
        acc = tl.zeros((BM, BN), dtype=tl.float64)
    else:
        acc = tl.zeros((BM, BN), dtype=tl.float32)
    acc = accumulate_gathered_dot(
        acc,
        src_ptr,
        src_rows,
        rmask,
        w_ptr,
        k,
        cn,
        nmask,
        c_in,
        stride_wk,
        stride_wi,
        stride_wo,
        BK,
        PRECISION,
    )
    tl.atomic_add(
        dst_ptr + dst_rows[:, None] * c_out + cn[None, :], acc, mask=rmask[:, None] & nmask[None, :]
    )


@triton.jit
def _weight_grad_kernel(
    x_ptr, dy_ptr, dw_ptr, in_idx_ptr, out_idx_ptr, ptr_ptr,
    n_k, c_in, c_out, chunk,
    BP: tl.constexpr, BI: tl.constexpr, BO: tl.constexpr, ACC64: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    # program (split s, offset k) reduces pairs [start + s*chunk, start + (s+1)*chunk) of offset k
    k = tl.program_id(0) % n_k
    split = tl.program_id(0) // n_k
    ci = tl.program_id(1) * BI + tl.arange(0, BI)
    co = tl.program_id(2) * BO + tl.arange(0, BO)
    imask = ci < c_in
    omask = co < c_out
    start = tl.load(ptr_ptr + k) + split * chunk
    end = tl.minimum(tl.load(ptr_ptr + k + 1), start + chunk)
    if ACC64:  # noqa: SIM108 (a constexpr branch: resolved at compile time)
        acc = tl.zeros((BI, BO), dtype=tl.float64)
    else:
        acc = tl.zeros((BI, BO), dtype=tl.float32)
    for p0 in range(start, end, BP):
        p = p0 + tl.arange(0, BP)
        pmask = p < end
        i = tl.load(in_idx_ptr + p, mask=pmask, other=0).to(tl.int64)
        j = tl.load(out_idx_ptr + p, mask=pmask, other=0).to(tl.int64)
        a = tl.load(
            x_ptr + i[:, None] * c_in + ci[None, :], mask=pmask[:, None] & imask[None, :], other=0.0
        )
        b = tl.load(
            dy_ptr + j[:, None] * c_out + co[None, :],
            mask=pmask[:, None] & omask[None, :],
            other=0.0,
        )
        acc += tl.dot(tl.trans(a), b, input_precision=PRECISION)
    tl.store(
        dw_ptr + tl.program_id(0).to(tl.int64) * c_in * c_out + ci[:, None] * c_out + co[None, :],
        acc,
        mask=imask[:, None] & omask[None, :],
    )


BM = 64  # pairs per program of the forward / input-gradient kernel


def pair_blocks(
    ptr: torch.Tensor, bm: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-program (offset, start, end) so that no block of BM pairs straddles two offsets."""
    p = ptr.to(device=device, dtype=torch.int64)
    n_blocks = (p[1:] - p[:-1] + bm - 1) // bm
    ks = torch.repeat_interleave(torch.arange(len(n_blocks), device=device), n_blocks)
    first_block = torch.cumsum(n_blocks, 0) - n_blocks
    starts = p[ks] + (torch.arange(len(ks), device=device) - first_block[ks]) * bm
    return ks, starts, torch.minimum(starts + bm, p[ks + 1])


def gather_gemm_scatter(
    src: torch.Tensor,
    weight: torch.Tensor,
    src_idx: torch.Tensor,
    dst_idx: torch.Tensor,
    blocks: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    n_dst: int,
) -> torch.Tensor:
    """float32 ``[n_dst, Cout]``: ``dst[dst_idx] += src[src_idx] @ weight[k]`` for every offset.

    ``blocks`` is :func:`pair_blocks` of the map's offset pointer with ``BM`` pairs per block.
    """
    c_in, c_out = weight.shape[1], weight.shape[2]
    dst = torch.zeros((n_dst, c_out), dtype=accumulation_dtype(src.dtype), device=src.device)
    blk_k, blk_s, blk_e = blocks
    if blk_k.numel() == 0:
        return dst
    bn, bk = channel_tile(c_out), channel_tile(c_in)
    grid = (blk_k.numel(), triton.cdiv(c_out, bn))
    _gather_gemm_scatter_kernel[grid](
        src.contiguous(), weight, dst, src_idx, dst_idx, blk_k, blk_s, blk_e,
        c_in, c_out, weight.stride(0), weight.stride(1), weight.stride(2),
        BM=BM, BN=bn, BK=bk, ACC64=src.dtype == torch.float64, PRECISION=dot_precision(),
    )  # fmt: skip
    return dst


def weight_grad(
    x: torch.Tensor,
    dy: torch.Tensor,
    in_idx: torch.Tensor,
    out_idx: torch.Tensor,
    ptr: torch.Tensor,
    ptr_on_device: torch.Tensor | None = None,
) -> torch.Tensor:
    """float32 ``[K, Cin, Cout]`` weight gradient. ``ptr`` (offset CSR pointer) is read on the
    host to size the launch; ``ptr_on_device`` is the same pointer already on ``x``'s device."""
    n_k = ptr.numel() - 1
    c_in, c_out = x.shape[1], dy.shape[1]
    if n_k == 0:
        return torch.zeros((0, c_in, c_out), dtype=accumulation_dtype(x.dtype), device=x.device)
    bi, bo = channel_tile(c_in), channel_tile(c_out)
    tiles = triton.cdiv(c_in, bi) * triton.cdiv(c_out, bo)
    split, chunk = _split_reduction(ptr, n_k * tiles, x.device)
    # every program stores its whole tile (zeros for an empty pair range): no fill needed
    part = torch.empty(
        (split * n_k, c_in, c_out), dtype=accumulation_dtype(x.dtype), device=x.device
    )
    grid = (split * n_k, triton.cdiv(c_in, bi), triton.cdiv(c_out, bo))
    _weight_grad_kernel[grid](
        x.contiguous(), dy.contiguous(), part, in_idx, out_idx,
        ptr_on_device if ptr_on_device is not None else ptr.to(x.device),
        n_k, c_in, c_out, chunk,
        BP=32, BI=bi, BO=bo, ACC64=x.dtype == torch.float64, PRECISION=dot_precision(),
    )  # fmt: skip
    # a fixed-order sum of the per-split partials keeps the gradient deterministic (no atomics)
    return part if split == 1 else part.view(split, n_k, c_in, c_out).sum(0)


def _split_reduction(ptr: torch.Tensor, programs: int, device: torch.device) -> tuple[int, int]:
    """(splits, pairs per split) so that about 4 programs per GPU multiprocessor are in flight.

    Without a split, a 3x3x3 conv at C=16 launches 27 programs that each walk ~100 k pairs:
    most of the GPU idles. Splits stop at chunks of 512 pairs, where partials start to cost
    more than they save.
    """
    longest = int((ptr[1:] - ptr[:-1]).max())  # ptr lives on the host: no device sync
    if device.type != "cuda" or longest == 0:
        return 1, max(longest, 1)
    target = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    split = max(1, min(triton.cdiv(target, programs), triton.cdiv(longest, 512)))
    return split, triton.cdiv(longest, split)
