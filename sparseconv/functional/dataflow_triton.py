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


def gs_forward(x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    from sparseconv.kernels.gather_scatter import gather_gemm_scatter

    return gather_gemm_scatter(x, weight, kmap.in_idx, kmap.out_idx, kmap.offset_ptr, kmap.n_out)


def gs_backward_input(dy: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    from sparseconv.kernels.gather_scatter import gather_gemm_scatter

    wt = weight.transpose(1, 2)
    return gather_gemm_scatter(dy, wt, kmap.out_idx, kmap.in_idx, kmap.offset_ptr, kmap.n_in)


def backward_weight(x: torch.Tensor, dy: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    from sparseconv.kernels.gather_scatter import weight_grad

    return weight_grad(x, dy.contiguous(), kmap.in_idx, kmap.out_idx, kmap.offset_ptr)


def ig_forward(x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    from sparseconv.kernels.implicit_gemm import implicit_gemm

    return implicit_gemm(x, weight, kmap.nbmap)


def ig_backward_input(dy: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    from sparseconv.kernels.implicit_gemm import implicit_gemm

    return implicit_gemm(dy, weight.transpose(1, 2), _transposed_view(kmap).nbmap)
