"""The Triton dataflows: adapters from a ``KernelMap`` to the kernels in ``sparseconv.kernels``.

``triton_gather_scatter`` accumulates with atomics (fast, order-dependent rounding);
``triton_implicit_gemm`` is output-stationary over ``nbmap`` and deterministic. Both use the
deterministic per-offset weight-gradient kernel. On CPU tensors they only run under
``TRITON_INTERPRET=1`` (tests). A float32 ``tl.dot`` follows PyTorch's tf32 switch
(``sparseconv.kernels.tiles.dot_precision``); see docs/conventions.md. Index layouts the kernels
need (pair blocks, row orders, the transposed map) are built once per map in ``kmap.plans``.
"""

from __future__ import annotations

import torch

from sparseconv.maps.kernel_map import KernelMap, PlanKind


def _blocks(kmap: KernelMap):
    """Per-program (offset, start, end) of the pair blocks of the gather-scatter kernel."""
    from sparseconv.kernels.gather_scatter import BM, pair_blocks

    return kmap.plan(
        PlanKind.GATHER_SCATTER_BLOCKS, lambda: pair_blocks(kmap.offset_ptr, BM, kmap.device)
    )


def gs_forward(x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    from sparseconv.kernels.gather_scatter import gather_gemm_scatter

    return gather_gemm_scatter(x, weight, kmap.in_idx, kmap.out_idx, _blocks(kmap), kmap.n_out)


def gs_backward_input(dy: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    from sparseconv.kernels.gather_scatter import gather_gemm_scatter

    wt = weight.transpose(1, 2)
    return gather_gemm_scatter(dy, wt, kmap.out_idx, kmap.in_idx, _blocks(kmap), kmap.n_in)


def backward_weight(x: torch.Tensor, dy: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    from sparseconv.kernels.gather_scatter import weight_grad

    # kept on the device: a pageable host-to-device copy per call blocks the host
    ptr_dev = kmap.plan(PlanKind.OFFSET_PTR_ON_DEVICE, lambda: kmap.offset_ptr.to(x.device))
    return weight_grad(x, dy.contiguous(), kmap.in_idx, kmap.out_idx, kmap.offset_ptr, ptr_dev)


def _row_order(kmap: KernelMap) -> torch.Tensor:
    """Output rows sorted by neighbour mask (the implicit GEMM's tiles skip absent offsets)."""
    from sparseconv.kernels.implicit_gemm import neighbour_mask_order

    return kmap.plan(PlanKind.ROW_ORDER, lambda: neighbour_mask_order(kmap.nbmap))


def ig_forward(x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    from sparseconv.kernels.implicit_gemm import implicit_gemm

    return implicit_gemm(x, weight, kmap.nbmap, _row_order(kmap))


def ig_backward_input(dy: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    from sparseconv.kernels.implicit_gemm import implicit_gemm

    tmap = kmap.transposed_view()
    return implicit_gemm(dy, weight.transpose(1, 2), tmap.nbmap, _row_order(tmap))
