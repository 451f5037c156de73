"""Output-stationary implicit GEMM over a neighbour table, in Triton.

Algorithm (TorchSparse++'s implicit GEMM / spconv's "implicit gemm" dataflow): a program owns
``BM`` output rows and ``BN`` output channels and walks the kernel offsets; for each offset it
gathers the neighbours listed in ``nbmap[rows, k]`` (-1 = none, loaded as zeros) and accumulates
``neighbours @ W[k]`` in registers. Each output is written once by one program: no atomics, so
the result is bitwise deterministic. The input gradient runs the same kernel on the transposed
map's ``nbmap`` with ``W^T``. Reference: ``sparseconv.functional.dataflow_torch.forward``.
"""

import torch
import triton
import triton.language as tl
from sparseconv.kernels.tiles import accumulate_gathered_dot, dot_precision


@triton.jit
def _implicit_gemm_kernel(
    src_ptr, w_ptr, dst_ptr, nbmap_ptr,
    n_dst, n_kernel, c_in, c_out, stride_wk, stride_wi, stride_wo,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, ACC64: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    rmask = rows < n_dst
    cn = tl.program_id(1) * BN + tl.arange(0, BN)
    nmask = cn < c_out
    if ACC64:  # noqa: SIM108 (a constexpr branch: resolved at compile time)
        acc = tl.zeros((BM, BN), dtype=tl.float64)
    else:
        acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(0, n_kernel):
        nb = tl.load(nbmap_ptr + rows.to(tl.int64) * n_kernel + k, mask=rmask, other=-1)
        valid = nb >= 0
        src_rows = tl.where(valid, nb, 0).to(tl.int64)
        acc = accumulate_gathered_dot(
            acc,
            src_ptr,
            src_rows,
            valid,
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
    tl.store(
        dst_ptr + rows.to(tl.int64)[:, None] * c_out + cn[None, :],
        acc,
        mask=rmask[:, None] & nmask[None, :],
    )


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 accumulation, except float64 inputs (gradcheck) which accumulate in float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tile(c: int) -> int:
    return max(16, min(64, triton.next_power_of_2(c)))


def implicit_gemm(
    src: torch.Tensor, weight: torch.Tensor, nbmap: torch.Tensor, bm: int = 64
) -> torch.Tensor:
    """float32 ``[N_dst, Cout]`` with ``dst[j] = sum_k src[nbmap[j, k]] @ weight[k]``."""
    n_dst, n_kernel = nbmap.shape
    c_in, c_out = weight.shape[1], weight.shape[2]
    dst = torch.empty((n_dst, c_out), dtype=_acc_dtype(src.dtype), device=src.device)
    if n_dst == 0:
        return dst
    bn, bk = _tile(c_out), _tile(c_in)
    grid = (triton.cdiv(n_dst, bm), triton.cdiv(c_out, bn))
    _implicit_gemm_kernel[grid](
        src.contiguous(), weight, dst, nbmap.contiguous(),
        n_dst, n_kernel, c_in, c_out, weight.stride(0), weight.stride(1), weight.stride(2),
        BM=bm, BN=bn, BK=bk, ACC64=src.dtype == torch.float64, PRECISION=dot_precision(),
    )  # fmt: skip
    return dst
