"""The Triton dataflows: adapters from a ``KernelMap`` to the kernels in ``sparseconv.kernels``.

``triton_gather_scatter`` accumulates with atomics (fast, order-dependent rounding);
``triton_implicit_gemm`` is output-stationary over ``nbmap`` and deterministic. Both use the
deterministic per-offset weight-gradient kernel. On CPU tensors they only run under
``TRITON_INTERPRET=1`` (tests). On CUDA, a float32 ``tl.dot`` runs at Triton's default input
precision (tf32 on tensor-core GPUs, relative error near 3e-4); see docs/conventions.md.
"""

from __future__ import annotations

import torch

from sparseconv.maps.kernel_map import KernelMap


def _transposed_view(kmap: KernelMap) -> KernelMap:
    """Map with inputs and outputs swapped (cached on the map: the backward pass reuses it)."""
    cached = getattr(kmap, "_transposed_cache", None)
    if cached is None:
        placeholder = torch.empty((kmap.n_in, 4), dtype=torch.int32, device=kmap.device)
        cached = kmap.transposed(placeholder)
        kmap._transposed_cache = cached  # type: ignore[attr-defined]
    return cached


def _blocks(kmap: KernelMap):
    """Per-program (offset, start, end) of the pair blocks, built once per map."""
    if "gs_blocks" not in kmap.plans:
        from sparseconv.kernels.gather_scatter import BM, pair_blocks

        kmap.plans["gs_blocks"] = pair_blocks(kmap.offset_ptr, BM, kmap.device)
    return kmap.plans["gs_blocks"]


def gs_forward(x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    from sparseconv.kernels.gather_scatter import gather_gemm_scatter

    return gather_gemm_scatter(x, weight, kmap.in_idx, kmap.out_idx, _blocks(kmap), kmap.n_out)


def gs_backward_input(dy: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    from sparseconv.kernels.gather_scatter import gather_gemm_scatter

    wt = weight.transpose(1, 2)
    return gather_gemm_scatter(dy, wt, kmap.out_idx, kmap.in_idx, _blocks(kmap), kmap.n_in)


def backward_weight(x: torch.Tensor, dy: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    from sparseconv.kernels.gather_scatter import weight_grad

    if "ptr_on_device" not in kmap.plans:  # a pageable host-to-device copy blocks the host
        kmap.plans["ptr_on_device"] = kmap.offset_ptr.to(x.device)
    ptrs = (kmap.offset_ptr, kmap.plans["ptr_on_device"])
    return weight_grad(x, dy.contiguous(), kmap.in_idx, kmap.out_idx, *ptrs)


def _row_order(kmap: KernelMap) -> torch.Tensor:
    """Output rows sorted by neighbour mask, built once per map (implicit GEMM skips offsets)."""
    if "ig_row_order" not in kmap.plans:
        from sparseconv.kernels.implicit_gemm import neighbour_mask_order

        kmap.plans["ig_row_order"] = neighbour_mask_order(kmap.nbmap)
    return kmap.plans["ig_row_order"]


def ig_forward(x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    from sparseconv.kernels.implicit_gemm import implicit_gemm

    return implicit_gemm(x, weight, kmap.nbmap, _row_order(kmap))


def ig_backward_input(dy: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    from sparseconv.kernels.implicit_gemm import implicit_gemm

    tmap = _transposed_view(kmap)
    return implicit_gemm(dy, weight.transpose(1, 2), tmap.nbmap, _row_order(tmap))
