"""Tile routine shared by the conv kernels: gathered input rows times one offset's weight tile."""

import triton
import triton.language as tl


@triton.jit
def accumulate_gathered_dot(
    acc, src_ptr, src_rows, row_mask, w_ptr, k, cn, nmask,
    c_in, stride_wk, stride_wi, stride_wo, BK: tl.constexpr,
):  # fmt: skip
    """``acc += src[src_rows, :] @ W[k][:, cn]``, looping over the input channels in BK chunks."""
    for c0 in range(0, c_in, BK):
        ck = c0 + tl.arange(0, BK)
        kmask = ck < c_in
        a = tl.load(
            src_ptr + src_rows[:, None] * c_in + ck[None, :],
            mask=row_mask[:, None] & kmask[None, :],
            other=0.0,
        )
        b = tl.load(
            w_ptr + k * stride_wk + ck[:, None] * stride_wi + cn[None, :] * stride_wo,
            mask=kmask[:, None] & nmask[None, :],
            other=0.0,
        )
        acc += tl.dot(a, b)
    return acc
