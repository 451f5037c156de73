"""``torchsparse.utils.quantize.sparse_quantize``: one point per occupied voxel."""

from __future__ import annotations

import numpy as np


def sparse_quantize(coords, voxel_size=1, *, return_index: bool = False,
                    return_inverse: bool = False):  # fmt: skip
    """Floor ``coords / voxel_size`` to int32 voxels and keep each voxel once, as TorchSparse:
    voxels in lexicographic order, ``indices`` the first point of each, ``inverse`` every
    point's voxel. Returns the voxels, then ``indices`` / ``inverse`` when asked for."""
    coords = np.asarray(coords)
    if coords.ndim != 2 or coords.shape[1] != 3:
        raise ValueError(f"coords must have shape [N, 3], got {list(coords.shape)}")
    if isinstance(voxel_size, (int, float)):
        voxel_size = (voxel_size,) * 3
    voxel = np.asarray(voxel_size, dtype=np.float64)
    if voxel.shape != (3,) or not (voxel > 0).all():
        raise ValueError(f"voxel_size must be a positive number or 3 of them, got {voxel_size!r}")
    cells = np.floor(coords / voxel).astype(np.int32)
    _, indices, inverse = np.unique(cells, axis=0, return_index=True, return_inverse=True)
    outputs = [cells[indices]]
    if return_index:
        outputs.append(indices)
    if return_inverse:
        outputs.append(inverse.reshape(-1))
    return outputs[0] if len(outputs) == 1 else outputs
