"""Shared by the conv kernels: the gathered-rows-times-weight routine, tile size, precision."""

import torch
import triton
import triton.language as tl


def dot_precision() -> str:
    """Input precision of float32 ``tl.dot``: the same rule as ``torch.mm`` on CUDA.

    Triton defaults to tf32 (relative error near 3e-4); PyTorch defaults to full float32 and
    switches to tf32 when ``torch.backends.cuda.matmul.allow_tf32`` is set. Following PyTorch's
    switch keeps a float32 sparse conv as exact as the dense layers around it unless the user
    opted into tf32 for the whole model.
    """
    return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"


def channel_tile(c: int) -> int:
    """Tile width for a channel axis of ``c``: a power of two in [16, 64] (``tl.dot`` needs 16)."""
    return max(16, min(64, triton.next_power_of_2(c)))


@triton.jit
def accumulate_gathered_dot(
    acc, src_ptr, src_rows, row_mask, w_ptr, k, cn, nmask,
    c_in, stride_wk, stride_wi, stride_wo, BK: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    """``acc += src[src_rows, :] @ W[k][:, cn]``, looping over the input channels in BK chunks.

    ``PRECISION`` ("ieee" or "tf32") only affects float32 operands; see ``dot_precision``.
    """
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
        acc += tl.dot(a, b, input_precision=PRECISION)
    return acc
