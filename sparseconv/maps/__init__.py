"""Coordinate maps: key packing, hash and merge-sort neighbour search, kernel maps, the cache."""

from sparseconv.maps.build import DOWNSAMPLE_MODES, build_kernel_map
from sparseconv.maps.cache import MapCache
from sparseconv.maps.hashtable import HashTable
from sparseconv.maps.kernel_map import KernelMap
from sparseconv.maps.keys import pack, pack_offset, unpack
from sparseconv.maps.neighbors import METHODS

__all__ = [
    "DOWNSAMPLE_MODES",
    "METHODS",
    "HashTable",
    "KernelMap",
    "MapCache",
    "build_kernel_map",
    "pack",
    "pack_offset",
    "unpack",
]
