"""TorchSparse 2.1's ``SparseTensor``: sparseconv's own tensor under TorchSparse's names.

TorchSparse 2.1 and sparseconv agree on coordinates: ``(batch, x, y, z)``, in voxel units of the
input grid, multiples of the tensor stride (TorchSparse <= 2.0 put the batch last: move that
column first when porting such code). A single sample may carry ``[N, 3]`` coordinates without a
batch column, as TorchSparse's datasets produce them for :func:`sparse_collate`.
"""

from __future__ import annotations

import numpy as np
import torch

from sparseconv import tensor as native


class SparseTensor(native.SparseTensor):
    """``SparseTensor(feats, coords, stride=1, spatial_range=None)``; ``.F``, ``.C``, ``.s``."""

    def __init__(self, feats, coords, stride=1, spatial_range=None, **kwargs) -> None:
        feats = torch.as_tensor(feats) if isinstance(feats, np.ndarray) else feats
        coords = torch.as_tensor(coords) if isinstance(coords, np.ndarray) else coords
        if (
            not isinstance(coords, torch.Tensor)
            or coords.dim() != 2
            or coords.shape[1] not in (3, 4)
        ):
            raise ValueError(
                "coords must be an int [N, 4] tensor (batch, x, y, z; TorchSparse 2.1 order) or "
                f"[N, 3] for one sample, got {getattr(coords, 'shape', coords)}"
            )
        if coords.dtype != torch.int32:
            if coords.is_floating_point():
                raise TypeError(
                    f"coords must be integers (quantize them first), got {coords.dtype}"
                )
            coords = coords.int()
        self.batched = coords.shape[1] == 4
        if not self.batched:
            coords = torch.cat([coords.new_zeros(len(coords), 1), coords], 1)
        self.spatial_range = spatial_range
        super().__init__(feats, coords, stride, **kwargs)

    @classmethod
    def wrap(cls, x: native.SparseTensor) -> SparseTensor:
        """A native tensor under this API (shares everything, checks nothing)."""
        out = cls.__new__(cls)
        out.__dict__.update(x.__dict__)
        out.batched = True
        out.spatial_range = getattr(x, "spatial_range", None)
        return out

    @property
    def F(self) -> torch.Tensor:  # noqa: N802 (TorchSparse's name)
        return self.feats

    @property
    def C(self) -> torch.Tensor:  # noqa: N802 (TorchSparse's name)
        """The coordinates as given: ``[N, 4]``, or ``[N, 3]`` for an uncollated sample."""
        return self.coords if self.batched else self.coords[:, 1:]

    @property
    def s(self) -> tuple[int, int, int]:
        return self.stride

    def replace_feats(self, feats: torch.Tensor) -> SparseTensor:
        out = SparseTensor.wrap(super().replace_feats(feats))
        out.batched = self.batched
        return out

    def __add__(self, other) -> SparseTensor:
        return self.replace_feats(
            self.feats + (other.feats if isinstance(other, native.SparseTensor) else other)
        )


def cat(inputs: list[SparseTensor]) -> SparseTensor:
    """``torchsparse.cat``: features side by side on the coordinates of the first input."""
    if not inputs:
        raise ValueError("cat needs at least one tensor")
    n = len(inputs[0].feats)
    for x in inputs[1:]:
        if len(x.feats) != n or x.stride != inputs[0].stride:
            raise ValueError("cat needs tensors on the same coordinates (same length and stride)")
    return inputs[0].replace_feats(torch.cat([x.feats for x in inputs], dim=1))
