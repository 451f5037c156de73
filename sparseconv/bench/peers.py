"""Peer libraries timed in the same run (spconv, when installed)."""

from __future__ import annotations

import torch


def spconv_available() -> bool:
    try:
        import spconv.pytorch  # noqa: F401
    except Exception:
        return False
    return True


def grid_shift(coords: torch.Tensor) -> torch.Tensor:
    """Origin making coords non-negative; a multiple of 16 so strides up to 16 divide exactly."""
    return torch.div(coords[:, 1:].amin(0) - 16, 16, rounding_mode="floor") * 16


def nonnegative(coords: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """spconv wants non-negative indices and a spatial shape."""
    c = coords.clone()
    c[:, 1:] -= grid_shift(coords)
    return c, (c[:, 1:].amax(0) + 16).tolist()


def spconv_index_fn(coords: torch.Tensor, kernel: int, stride: int, subm: bool):
    """A callable that runs spconv's own index (pair) generation once."""
    from spconv.core import ConvAlgo
    from spconv.pytorch import ops

    c, shape = nonnegative(coords)
    batch = int(c[:, 0].max()) + 1 if len(c) else 1
    pad = kernel // 2 if subm else 0

    def run():
        return ops.get_indice_pairs(
            c,
            batch,
            shape,
            ConvAlgo.Native,
            [kernel] * 3,
            [stride] * 3,
            [pad] * 3,
            [1] * 3,
            [0] * 3,
            subm,
            False,
        )

    return run
