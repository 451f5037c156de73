"""Weight layout converters between sparseconv and its peers.

* sparseconv: ``[K, Cin, Cout]``, offsets x-major (z fastest).
* spconv 2.x: ``[Cout, kx, ky, kz, Cin]`` — the same offset order once flattened.
* MinkowskiEngine: ``[K, Cin, Cout]``, but for an odd kernel volume its offsets run x fastest
  (z outermost); for even volumes the order is x-major like ours (as TorchSparse documents when
  it converts MinkowskiEngine checkpoints).
"""

from __future__ import annotations

import math

import torch

from sparseconv.maps.offsets import as_triple


def from_spconv(weight: torch.Tensor) -> torch.Tensor:
    """spconv ``[Cout, kx, ky, kz, Cin]`` to ``[K, Cin, Cout]``."""
    if weight.dim() != 5:
        raise ValueError(
            f"spconv weight must have shape [Cout, kx, ky, kz, Cin], got {list(weight.shape)}"
        )
    c_out, kx, ky, kz, c_in = weight.shape
    return weight.permute(1, 2, 3, 4, 0).reshape(kx * ky * kz, c_in, c_out).contiguous()


def to_spconv(weight: torch.Tensor, kernel_size: int | tuple[int, int, int]) -> torch.Tensor:
    """``[K, Cin, Cout]`` to spconv ``[Cout, kx, ky, kz, Cin]``."""
    kx, ky, kz = _checked_kernel(weight, kernel_size)
    return (
        weight.reshape(kx, ky, kz, weight.shape[1], weight.shape[2])
        .permute(4, 0, 1, 2, 3)
        .contiguous()
    )


def from_minkowski(weight: torch.Tensor, kernel_size: int | tuple[int, int, int]) -> torch.Tensor:
    """MinkowskiEngine ``[K, Cin, Cout]`` (x-fastest for odd volumes) to ours."""
    kx, ky, kz = _checked_kernel(weight, kernel_size)
    return _swap_offset_order(weight, (kz, ky, kx))


def to_minkowski(weight: torch.Tensor, kernel_size: int | tuple[int, int, int]) -> torch.Tensor:
    """Ours to MinkowskiEngine ``[K, Cin, Cout]``."""
    kx, ky, kz = _checked_kernel(weight, kernel_size)
    return _swap_offset_order(weight, (kx, ky, kz))


def _swap_offset_order(weight: torch.Tensor, dims: tuple[int, int, int]) -> torch.Tensor:
    """Between x-major and x-fastest offset order (its own inverse); even volumes keep the order."""
    if dims[0] * dims[1] * dims[2] % 2 == 0:
        return weight.clone()
    w = weight.reshape(*dims, weight.shape[1], weight.shape[2]).permute(2, 1, 0, 3, 4)
    return w.reshape(-1, weight.shape[1], weight.shape[2]).contiguous()


def _checked_kernel(weight: torch.Tensor, kernel_size) -> tuple[int, int, int]:
    ks = as_triple(kernel_size, "kernel_size")
    if weight.dim() != 3 or weight.shape[0] != math.prod(ks):
        raise ValueError(
            f"weight must have shape [{math.prod(ks)}, Cin, Cout] for kernel_size {ks}, got {list(weight.shape)}"
        )
    return ks
