"""Per-coordinate-set cache of hash tables and kernel maps (a CoordinateManager).

Every ``SparseTensor`` derived from the same input (by a conv, a norm, an activation) shares one
``MapCache``, so each distinct map is built once per forward pass: all submanifold layers at a
stride reuse one map, and a transposed conv finds the map of the strided conv that it inverts and
the coordinates it must return to. Keys are ``(tensor_stride, kernel_size, stride, dilation,
transposed, downsample_mode, padding, output_bounds, submanifold)``, and ``("offsets", key,
kept)`` for a submanifold map built for some kernel offsets only (kernel-offset pruning); the mapper (hash or merge-sort) is not part of the key because both
produce identical maps.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sparseconv.maps.hashtable import HashTable
from sparseconv.maps.kernel_map import KernelMap
from sparseconv.maps.offsets import Triple

MapKey = tuple[Triple, Triple, Triple, Triple, bool, str, Triple, "Triple | None", bool]


@dataclass
class MapCache:
    coords: dict[Triple, torch.Tensor] = field(default_factory=dict)
    tables: dict[Triple, HashTable] = field(default_factory=dict)
    # packed int64 keys of coords[stride]: the submanifold map there and the strided map leaving
    # it read the same keys, so they are packed once per stride
    keys: dict[Triple, torch.Tensor] = field(default_factory=dict)
    kmaps: dict[MapKey | tuple, KernelMap] = field(default_factory=dict)
    # which rule produced each stride's coordinates: a strided conv reuses them only by the same rule
    rules: dict[Triple, tuple] = field(default_factory=dict)
    # under torch.compile / export (sparseconv.functional.traced): maps as plain tensors
    traced_maps: dict[MapKey, tuple] = field(default_factory=dict)
    traced_coords: dict[Triple, tuple] = field(default_factory=dict)
    # set by a cell-granular VoxelPrune on the cache it starts: which rows of which full set
    # this one keeps (sparseconv.nn.voxel_prune.PrunedSubset), so scatter_to can go back
    pruned_from: object | None = None

    def register(self, tensor_stride: Triple, coords: torch.Tensor, rule: tuple) -> torch.Tensor:
        """The coordinate set to use at ``tensor_stride`` for outputs ``coords`` made by ``rule``.

        The first set at a stride is kept, so later layers there find their maps; a set made by
        the same rule from the same inputs is equal, so the cached one is shared; a set made by
        another rule (spconv's padding, other bounds) stays outside the cache.
        """
        if tensor_stride not in self.coords:
            self.coords[tensor_stride] = coords
            self.rules[tensor_stride] = rule
            return coords
        if self.rules.get(tensor_stride) == rule:
            return self.coords[tensor_stride]
        return coords

    def table(self, tensor_stride: Triple, coords: torch.Tensor, keys: torch.Tensor) -> HashTable:
        """Hash table of the coordinates at ``tensor_stride`` (built on first use)."""
        cached = self.coords.get(tensor_stride)
        if cached is not coords:
            return HashTable.build(keys)
        if tensor_stride not in self.tables:
            self.tables[tensor_stride] = HashTable.build(keys)
        return self.tables[tensor_stride]
