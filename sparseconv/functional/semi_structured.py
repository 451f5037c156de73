"""Convolution with 2:4 semi-structured sparse weights (sparse tensor cores, Ampere and later).

An N:M-pruned weight ``[K, Cin, Cout]`` whose every group of 4 consecutive input channels holds
at most 2 non-zeros can run each offset's GEMM on the sparse tensor cores: the compressed operand
is ``W[k]^T`` (``[Cout, Cin]``, pattern along the reduction axis) and the product is
``F.linear(x[in], W[k]^T) = x[in] @ W[k]``. PyTorch's ``to_sparse_semi_structured`` does the
compression (cuSPARSELt or CUTLASS) and pads the dense operand to the kernels' tile sizes.

Inference only: the compressed copy is a snapshot, and the sparse GEMM has no weight gradient
here. Whether it is *faster* depends on the GEMM shapes (skinny gathered matrices often are not),
so :func:`sparseconv.prune.accelerate_nm` measures every layer before switching it on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sparseconv.maps.kernel_map import KernelMap
from sparseconv.utils.precision import accumulation_dtype


def is_2_4(weight: torch.Tensor) -> bool:
    """Every group of 4 consecutive input channels of every ``[K, Cin, Cout]`` column has <= 2
    non-zeros (1:2, 1:4 and 2:4 patterns all qualify)."""
    k, c_in, c_out = weight.shape
    if c_in % 4:
        return False
    groups = (weight.detach() != 0).reshape(k, c_in // 4, 4, c_out).sum(2)
    return bool((groups <= 2).all())


def unsupported_reason(weight: torch.Tensor) -> str | None:
    """Why ``weight`` cannot run on the semi-structured sparse GEMM here (None when it can)."""
    if weight.device.type != "cuda":
        return f"needs a CUDA GPU with compute capability >= 8.0 (weight on {weight.device})"
    major, minor = torch.cuda.get_device_capability(weight.device)
    if major < 8:
        return f"needs compute capability >= 8.0, this GPU has {major}.{minor}"
    if weight.dtype not in (torch.float16, torch.bfloat16):
        return f"needs float16 or bfloat16 weights, got {weight.dtype}"
    if not is_2_4(weight):
        return "weight is not 2:4 sparse along Cin (more than 2 non-zeros in a group of 4)"
    return None


def pack(weight: torch.Tensor) -> list[torch.Tensor]:
    """Compressed ``W[k]^T`` per offset. Raises ValueError naming the layout PyTorch refused."""
    from torch.sparse import to_sparse_semi_structured

    reason = unsupported_reason(weight)
    if reason is not None:
        raise ValueError(f"cannot pack weight {list(weight.shape)}: {reason}")
    try:
        return [to_sparse_semi_structured(w.t().contiguous()) for w in weight.detach()]
    except (RuntimeError, NotImplementedError) as err:
        raise ValueError(f"cannot pack weight {list(weight.shape)}: {err}") from err


def forward(x: torch.Tensor, packed: list[torch.Tensor], kmap: KernelMap) -> torch.Tensor:
    """``out[j] += F.linear(x[i], packed[k])`` over the pairs of each offset ``k``.

    ``packed[k]`` is anything ``F.linear`` accepts as a ``[Cout, Cin]`` weight: the compressed
    tensors of :func:`pack`, or dense ``W[k]^T`` (which the CPU tests use to check the data path).
    """
    acc = accumulation_dtype(x.dtype)
    c_out = packed[0].shape[0]
    ptr = kmap.offset_ptr.tolist()
    ident = kmap.kernel_volume // 2 if kmap.submanifold else None
    if ident is not None:
        out = F.linear(x, packed[ident]).to(acc)
    else:
        out = torch.zeros((kmap.n_out, c_out), dtype=acc, device=x.device)
    for k in range(kmap.kernel_volume):
        lo, hi = ptr[k], ptr[k + 1]
        if k == ident or hi == lo:
            continue
        part = F.linear(x.index_select(0, kmap.in_idx[lo:hi]), packed[k])
        out.index_add_(0, kmap.out_idx[lo:hi], part.to(acc))
    return out.to(x.dtype)
