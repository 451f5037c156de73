"""The accumulation dtype: half-precision operands are summed in float32 by every dataflow."""

from __future__ import annotations

import torch

HALF_DTYPES = (torch.float16, torch.bfloat16)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for float16/bfloat16 (their sums lose digits fast), else ``dtype`` itself."""
    return torch.float32 if dtype in HALF_DTYPES else dtype
