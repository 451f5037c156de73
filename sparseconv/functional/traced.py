"""``conv3d`` under ``torch.compile`` / ``torch.export``: the same maps and kernels through the
custom ops of :mod:`sparseconv.functional.ops`, with the map cache holding plain tensors.

The cache logic mirrors :func:`sparseconv.maps.build.build_kernel_map`: a stride's coordinate set
is registered by the rule that made it, submanifold and strided maps are kept per key, and a
transposed conv inverts the cached strided map it undoes (``transpose_map``) instead of
generating outputs. Nothing here reads a tensor's values, so a compiler traces it in one graph.
"""

from __future__ import annotations

import torch

from sparseconv.functional import ops
from sparseconv.maps.build import coordinate_rule
from sparseconv.maps.cache import MapCache
from sparseconv.maps.offsets import Triple
from sparseconv.tensor import SparseTensor


def conv3d(x: SparseTensor, weight: torch.Tensor, bias, ks: Triple, s: Triple, d: Triple,
           transposed: bool, mode: str, pad: Triple, bounds: Triple | None,
           submanifold: bool, offsets: tuple[int, ...] | None = None) -> SparseTensor:  # fmt: skip
    cache, ts = x.cache, x.stride
    submanifold = submanifold and s == (1, 1, 1) and not transposed
    if s == (1, 1, 1) and not transposed and not submanifold:
        mode = "spconv"
    _register(cache, ts, x.coords, ("given",))
    known = cache.traced_coords[ts][0] is x.coords
    key = (ts, ks, s, d, transposed, mode, pad, bounds, submanifold)
    if known and key in cache.traced_maps:
        out_coords, nbmap = cache.traced_maps[key]
    elif submanifold:
        out_coords = x.coords
        nbmap = ops.submanifold_map(x.coords, list(ks), list(d), list(ts))
    elif transposed:
        out_coords, nbmap = _transposed(x, cache, ks, s, d, mode, pad, bounds, known)
    else:
        out_coords, nbmap = ops.strided_map(x.coords, list(ks), list(s), list(d), list(ts),
                                            list(pad), mode, list(bounds or ()), False, False)  # fmt: skip
        ts_out = tuple(a * b for a, b in zip(ts, s))
        out_coords = _register(cache, ts_out, out_coords,
                               coordinate_rule(mode, ts, ks, s, d, pad, bounds))  # fmt: skip
    if known:
        cache.traced_maps[key] = (out_coords, nbmap)
    if offsets is not None:  # kernel-offset pruning: the kept offsets' columns only
        nbmap = nbmap[:, list(offsets)]
        submanifold = False
    feats = ops.conv(x.feats, weight, nbmap, submanifold)
    if bias is not None:
        feats = feats + bias
    if submanifold:
        out_ts = ts
    elif transposed:
        out_ts = tuple(a // b for a, b in zip(ts, s))
    else:
        out_ts = tuple(a * b for a, b in zip(ts, s))
    return SparseTensor(feats, out_coords, out_ts, cache=cache, check=False)


def _transposed(x, cache: MapCache, ks, s, d, mode, pad, bounds, known: bool):
    ts = x.stride
    if any(a % b for a, b in zip(ts, s)):
        raise ValueError(
            f"a transposed conv with stride {s} needs a tensor stride divisible by it, got {ts}"
        )
    ts_out = tuple(a // b for a, b in zip(ts, s))
    fine = cache.traced_coords.get(ts_out)
    if known and fine is not None:
        for key, (coarse, down) in cache.traced_maps.items():
            if key[:7] == (ts_out, ks, s, d, False, mode, pad) and coarse is x.coords:
                return fine[0], ops.transpose_map(down, fine[0].shape[0])
    return ops.strided_map(x.coords, list(ks), list(s), list(d), list(ts), list(pad), mode,
                           list(bounds or ()), True, False)  # fmt: skip


def _register(cache: MapCache, ts: Triple, coords: torch.Tensor, rule: tuple) -> torch.Tensor:
    """:meth:`MapCache.register` for the traced cache."""
    if ts not in cache.traced_coords:
        cache.traced_coords[ts] = (coords, rule)
        return coords
    if cache.traced_coords[ts][1] == rule and rule != ("given",):
        return cache.traced_coords[ts][0]
    return coords
