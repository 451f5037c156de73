"""spconv's ``SparseConvTensor`` over sparseconv's coordinates and map cache.

spconv indexes every level of a network on its own grid: ``indices`` are ``(batch, i0, i1, i2)``
cells of ``spatial_shape``. sparseconv keeps one coordinate system per input (voxel units of the
finest grid, multiples of the tensor stride) so that all layers share one ``MapCache``. This
tensor holds the latter and derives spconv's ``indices`` (``coords // stride``) when read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sparseconv.maps.cache import MapCache
from sparseconv.maps.kernel_map import KernelMap
from sparseconv.maps.offsets import Triple
from sparseconv.tensor import SparseTensor

# spconv arguments that only steer its own allocation, timing or algorithm choice
_IGNORED_ARGUMENTS = ("grid", "voxel_num", "benchmark", "permanent_thrust_allocator",
                      "enable_timer", "force_algo")  # fmt: skip


@dataclass
class IndiceData:
    """What a layer stores under its ``indice_key`` (spconv's ``IndiceData``, with the map in
    sparseconv's form instead of spconv's pair arrays)."""

    indices: torch.Tensor  # the input coordinates (sparseconv units)
    out_indices: torch.Tensor  # the output coordinates (sparseconv units)
    kernel_map: KernelMap
    spatial_shape: list[int]
    out_spatial_shape: list[int]
    is_subm: bool
    ksize: Triple
    stride: Triple
    padding: Triple
    dilation: Triple
    in_stride: Triple  # tensor stride of the input, to rebuild it on an inverse conv
    inverse_map: KernelMap | None = None  # the transposed map, built by the first inverse conv


class SparseConvTensor:
    """``SparseConvTensor(features, indices, spatial_shape, batch_size)`` as in spconv 2.x."""

    def __init__(
        self,
        features: torch.Tensor,
        indices: torch.Tensor,
        spatial_shape,
        batch_size: int,
        indice_dict: dict | None = None,
        **ignored: Any,
    ) -> None:
        unknown = sorted(set(ignored) - set(_IGNORED_ARGUMENTS))
        if unknown:
            raise TypeError(f"SparseConvTensor got unsupported argument(s): {', '.join(unknown)}")
        shape = _check_shape(spatial_shape)
        _check_inputs(features, indices, shape, batch_size)
        self._init(features, indices, (1, 1, 1), shape, int(batch_size), indice_dict, None)
        self._indices = indices
        SparseTensor(features, indices, cache=self._cache)  # duplicates raise; caches the set

    def _init(self, features, coords, stride, shape, batch_size, indice_dict, cache) -> None:
        self._features = features
        self._coords = coords
        self._stride: Triple = tuple(stride)  # type: ignore[assignment]
        self.spatial_shape = [int(v) for v in shape]
        self.batch_size = batch_size
        self.indice_dict = {} if indice_dict is None else indice_dict
        self._cache = cache if cache is not None else MapCache()
        self._indices: torch.Tensor | None = None

    @classmethod
    def _derived(cls, like: SparseConvTensor, features, coords, stride, shape, cache=None):
        """A layer's output: shares the input's ``indice_dict`` and map cache."""
        out = cls.__new__(cls)
        out._init(features, coords, stride, shape, like.batch_size, like.indice_dict,
                  like._cache if cache is None else cache)  # fmt: skip
        return out

    # -- spconv's attributes -----------------------------------------------------------------
    @property
    def features(self) -> torch.Tensor:
        return self._features

    @features.setter
    def features(self, value) -> None:
        raise ValueError("you can't set features directly; use x = x.replace_feature(new_features)")

    @property
    def indices(self) -> torch.Tensor:
        """int32 ``[N, 4]``: ``(batch, i0, i1, i2)`` cells of ``spatial_shape``."""
        if self._indices is None:
            if self._stride == (1, 1, 1):
                self._indices = self._coords
            else:
                scale = self._coords.new_tensor([1, *self._stride])
                self._indices = torch.div(self._coords, scale, rounding_mode="floor")
        return self._indices

    def replace_feature(self, feature: torch.Tensor) -> SparseConvTensor:
        if not isinstance(feature, torch.Tensor) or feature.dim() != 2:
            raise ValueError(
                f"features must be a [N, C] tensor, got {getattr(feature, 'shape', feature)}"
            )
        if feature.shape[0] != self._coords.shape[0]:
            raise ValueError(
                f"replace_feature got {feature.shape[0]} rows for {self._coords.shape[0]} indices"
            )
        out = SparseConvTensor._derived(self, feature, self._coords, self._stride,
                                        self.spatial_shape)  # fmt: skip
        out._indices = self._indices
        return out

    def dense(self, channels_first: bool = True) -> torch.Tensor:
        """``[B, C, *spatial_shape]`` (or channels last), zeros where no voxel is."""
        c = self._features.shape[1]
        out = self._features.new_zeros((self.batch_size, *self.spatial_shape, c))
        idx = self.indices.long()
        out[idx[:, 0], idx[:, 1], idx[:, 2], idx[:, 3]] = self._features
        return out.permute(0, 4, 1, 2, 3).contiguous() if channels_first else out

    @property
    def spatial_size(self) -> int:
        return self.spatial_shape[0] * self.spatial_shape[1] * self.spatial_shape[2]

    def find_indice_pair(self, key) -> IndiceData | None:
        return None if key is None else self.indice_dict.get(key)

    def shadow_copy(self) -> SparseConvTensor:
        return self.replace_feature(self._features)

    def minus(self) -> SparseConvTensor:
        return self.replace_feature(-self._features)

    def __add__(self, other) -> SparseConvTensor:
        return self.replace_feature(self._features + _features_of(other))

    __radd__ = __add__

    def __iadd__(self, other) -> SparseConvTensor:
        self._features += _features_of(other)
        return self

    def __repr__(self) -> str:
        return f"SparseConvTensor[shape={tuple(self._features.shape)}]"

    # -- sparseconv's view -------------------------------------------------------------------
    def native(self) -> SparseTensor:
        """The same voxels as a sparseconv ``SparseTensor`` sharing this tensor's map cache."""
        return SparseTensor(self._features, self._coords, self._stride, cache=self._cache,
                            check=False)  # fmt: skip


def _features_of(other) -> torch.Tensor:
    if isinstance(other, SparseConvTensor):
        return other.features
    if isinstance(other, torch.Tensor):
        return other
    raise TypeError(f"cannot add {type(other).__name__} to a SparseConvTensor")


def _check_shape(spatial_shape) -> Triple:
    try:
        shape = tuple(int(v) for v in spatial_shape)
    except TypeError:
        raise TypeError(f"spatial_shape must be 3 ints, got {spatial_shape!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"spatial_shape must be 3 positive ints, got {list(shape)}")
    return shape  # type: ignore[return-value]


def _check_inputs(features, indices, shape: Triple, batch_size) -> None:
    """spconv asserts these; wrong values there corrupt memory, so here they are errors."""
    if not isinstance(features, torch.Tensor) or features.dim() != 2:
        raise ValueError(
            f"features must be a [N, C] tensor, got {getattr(features, 'shape', features)}"
        )
    if not isinstance(indices, torch.Tensor) or indices.dim() != 2 or indices.shape[1] != 4:
        raise ValueError(
            f"indices must be an int32 [N, 4] tensor (batch, i0, i1, i2), got {getattr(indices, 'shape', indices)}"
        )
    if indices.dtype != torch.int32:
        raise TypeError(f"indices must be int32 (as spconv requires), got {indices.dtype}")
    if features.shape[0] != indices.shape[0]:
        raise ValueError(
            f"features and indices must have the same length, got {features.shape[0]} and {indices.shape[0]}"
        )
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if indices.shape[0] == 0:
        return
    low = indices.amin(0).tolist()
    high = indices.amax(0).tolist()
    if low[0] < 0 or high[0] >= batch_size:
        raise ValueError(f"batch indices must lie in [0, {batch_size}), got [{low[0]}, {high[0]}]")
    for axis in range(3):
        if low[axis + 1] < 0 or high[axis + 1] >= shape[axis]:
            raise ValueError(
                f"indices[:, {axis + 1}] must lie in [0, {shape[axis]}) (spatial_shape "
                f"{list(shape)}), got [{low[axis + 1]}, {high[axis + 1]}]"
            )
