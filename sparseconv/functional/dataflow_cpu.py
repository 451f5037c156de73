"""The ``cpu_implicit_gemm`` dataflow: adapters from a ``KernelMap`` to the fused C kernels.

Output-stationary like ``triton_implicit_gemm``, but for the CPU: the forward pass walks
``kmap.nbmap``, the input gradient the transposed map's ``nbmap`` with ``W^T``, and the weight
gradient the CSR pairs (``sparseconv.kernels.cpu_implicit_gemm``). No atomics: the forward
pass and the input gradient are deterministic, the weight gradient is deterministic for a
fixed thread count. float32 on CPU only; other dtypes use the ``torch`` dataflow.
"""

from __future__ import annotations

import torch

from sparseconv.kernels import cpu_implicit_gemm as kernels
from sparseconv.maps.kernel_map import KernelMap


def unsupported(x: torch.Tensor) -> str:
    """Why this dataflow cannot run on ``x`` ('' when it can)."""
    if x.device.type != "cpu":
        return f"it runs on CPU tensors only, got {x.device}"
    if x.dtype != torch.float32:
        return f"it runs float32 only, got {x.dtype} (use dataflow='torch')"
    if not kernels.available():
        return f"its C kernels could not be built: {kernels.unavailable_reason()}"
    return ""


def forward(x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    return kernels.implicit_gemm(x, weight, kmap.nbmap)


def backward_input(dy: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    return kernels.implicit_gemm(dy, weight.transpose(1, 2), kmap.transposed_view().nbmap)


def backward_weight(x: torch.Tensor, dy: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    return kernels.weight_grad(x, dy, kmap.in_idx, kmap.out_idx, kmap.offset_ptr)
