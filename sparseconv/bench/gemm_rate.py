"""The machine's GEMM rate as a benchmark contender (a large square ``torch.mm``)."""

from __future__ import annotations

from collections.abc import Callable

import torch


def gemm_reference(
    device: str = "cpu", n: int = 2048, dtype: torch.dtype = torch.float32
) -> tuple[Callable[[], object], float]:
    """An ``n^3`` ``torch.mm`` (the machine's GEMM rate) as a contender, and its flop count.

    Timed in the same rounds as a layer, it gives that layer's fraction of the GEMM rate under
    the same machine state (this machine's speed drifts by tens of percent within a minute).
    """
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    return (lambda: torch.mm(a, b)), 2.0 * n**3
