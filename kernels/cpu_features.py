"""Feature-row gathers in C (``cpu/features.c``): a decoder skip's fill and concatenation in
one pass. Reference: :func:`sparseconv.nn.voxel_prune.cat_skip`'s torch path."""

from __future__ import annotations

import torch

from sparseconv.kernels import cpu_library
from sparseconv.utils.threads import available_threads

available = cpu_library.available


def gather_concat(a: torch.Tensor, index: torch.Tensor | None, b: torch.Tensor) -> torch.Tensor:
    """``torch.cat([a[index] if index is not None else a, b], 1)`` in one pass (float32 CPU)."""
    for name, t in (("a", a), ("b", b)):
        if t.dtype != torch.float32 or t.is_cuda or t.dim() != 2:
            raise TypeError(f"{name} must be a 2-d float32 CPU tensor")
    n = b.shape[0]
    if index is not None:
        if index.dtype != torch.int64 or index.is_cuda or index.dim() != 1 or index.numel() != n:
            raise ValueError("index must be an int64 CPU vector with one entry per row of b")
        index = index.contiguous()
    elif a.shape[0] != n:
        raise ValueError(f"a has {a.shape[0]} rows, b {n}: give index= to gather a's rows")
    a, b = a.contiguous(), b.contiguous()
    out = torch.empty((n, a.shape[1] + b.shape[1]), dtype=torch.float32)
    if cpu_library.lib().sc_gather_concat(
        a.data_ptr(), a.shape[0], a.shape[1], None if index is None else index.data_ptr(),
        b.data_ptr(), b.shape[1], n, out.data_ptr(), available_threads(),
    ):  # fmt: skip
        raise IndexError("gather_concat: an index lies outside a's rows")
    return out
