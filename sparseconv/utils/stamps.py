"""What identifies a tensor's current contents without reading them.

Derived data kept between calls (packed weights, a norm's folded affine map, compressed 2:4
operands) must be rebuilt when its source changes. A tensor's storage
address, layout and version counter change whenever its contents can have: every in-place
write bumps the version, ``.data =`` and ``.to()`` give new storage.
"""

from __future__ import annotations

import torch


def stamp(t: torch.Tensor) -> tuple:
    """``t``'s device, dtype, storage address, shape, strides and version counter: equal stamps
    mean unchanged contents (a changed stamp may still hold the same values)."""
    return (t.device, t.dtype, t.data_ptr(), tuple(t.shape), t.stride(), t._version)
