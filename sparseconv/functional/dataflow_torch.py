"""The ``torch`` dataflow: gather -> GEMM -> scatter-add, offsets batched by adaptive grouping.

This is the reference dataflow: plain torch ops, any device, any float dtype. For offset ``k``
with pairs ``(i, j)``: ``dst[j] += src[i] @ W[k]``. One routine serves the forward pass (src = x,
pairs in->out, W) and the input gradient (src = dy, pairs out->in, W^T); the weight gradient is
``dW[k] = x[i]^T @ dy[j]``. The identity offset of a submanifold map (``i == j == arange``) is a
single dense GEMM with no gather or scatter. Half-precision inputs accumulate in float32.
"""

from __future__ import annotations

import torch

from sparseconv.functional.grouping import plan_groups
from sparseconv.maps.kernel_map import KernelMap


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def gather_gemm_scatter(
    src: torch.Tensor,
    weight: torch.Tensor,
    src_idx: torch.Tensor,
    dst_idx: torch.Tensor,
    ptr: list[int],
    n_dst: int,
    identity_offset: int | None,
    max_waste: float,
) -> torch.Tensor:
    """``dst[dst_idx] += src[src_idx] @ weight[k]`` over all offsets; returns ``[n_dst, Cout]``."""
    acc = _acc_dtype(src.dtype)
    c_out = weight.shape[2]
    if identity_offset is not None:
        out = torch.mm(src, weight[identity_offset]).to(acc)
    else:
        out = torch.zeros((n_dst, c_out), dtype=acc, device=src.device)
    sizes = [ptr[k + 1] - ptr[k] for k in range(len(ptr) - 1)]
    for group in plan_groups(sizes, max_waste, skip=identity_offset):
        if len(group) == 1:
            k = group[0]
            lo, hi = ptr[k], ptr[k + 1]
            part = torch.mm(src.index_select(0, src_idx[lo:hi]), weight[k])
            out.index_add_(0, dst_idx[lo:hi], part.to(acc))
            continue
        s_idx, d_idx, valid = _padded_group(group, ptr, src_idx, dst_idx)
        gathered = src.index_select(0, s_idx.flatten()).view(len(group), -1, src.shape[1])
        part = torch.bmm(gathered, weight[group]).flatten(0, 1)[valid]
        out.index_add_(0, d_idx.flatten()[valid], part.to(acc))
    return out


def _padded_group(group, ptr, src_idx, dst_idx):
    """``[G, max_n]`` index matrices of a group; padding points at row 0 and is masked out."""
    longest = max(ptr[k + 1] - ptr[k] for k in group)
    s_idx = src_idx.new_zeros((len(group), longest))
    d_idx = dst_idx.new_zeros((len(group), longest))
    valid = torch.zeros((len(group), longest), dtype=torch.bool, device=src_idx.device)
    for g, k in enumerate(group):
        n = ptr[k + 1] - ptr[k]
        s_idx[g, :n] = src_idx[ptr[k] : ptr[k + 1]]
        d_idx[g, :n] = dst_idx[ptr[k] : ptr[k + 1]]
        valid[g, :n] = True
    return s_idx, d_idx, valid.flatten()


def forward(
    x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap, max_waste: float = 0.25
) -> torch.Tensor:
    ptr = kmap.offset_ptr.tolist()
    ident = kmap.kernel_volume // 2 if kmap.submanifold else None
    return gather_gemm_scatter(
        x, weight, kmap.in_idx, kmap.out_idx, ptr, kmap.n_out, ident, max_waste
    )


def backward_input(
    dy: torch.Tensor, weight: torch.Tensor, kmap: KernelMap, max_waste: float = 0.25
) -> torch.Tensor:
    ptr = kmap.offset_ptr.tolist()
    ident = kmap.kernel_volume // 2 if kmap.submanifold else None
    wt = weight.transpose(1, 2)
    return gather_gemm_scatter(dy, wt, kmap.out_idx, kmap.in_idx, ptr, kmap.n_in, ident, max_waste)


def backward_weight(x: torch.Tensor, dy: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    """``dW[k] = x[in_k]^T @ dy[out_k]`` (float32 accumulation for half inputs)."""
    acc = _acc_dtype(x.dtype)
    ptr = kmap.offset_ptr.tolist()
    dw = torch.zeros((kmap.kernel_volume, x.shape[1], dy.shape[1]), dtype=acc, device=x.device)
    for k in range(kmap.kernel_volume):
        lo, hi = ptr[k], ptr[k + 1]
        if hi == lo:
            continue
        if kmap.submanifold and k == kmap.kernel_volume // 2:
            dw[k] = torch.mm(x.t(), dy).to(acc)
            continue
        xs = x.index_select(0, kmap.in_idx[lo:hi])
        ds = dy.index_select(0, kmap.out_idx[lo:hi])
        dw[k] = torch.mm(xs.t(), ds).to(acc)
    return dw
