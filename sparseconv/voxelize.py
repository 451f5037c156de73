"""Points to voxels and back: ``voxelize`` and ``devoxelize`` (nearest and trilinear)."""

from __future__ import annotations

import warnings
from functools import partial

import torch

from sparseconv.maps import keys as coord_keys
from sparseconv.maps import tables
from sparseconv.tensor import SparseTensor

REDUCTIONS = ("mean", "first")
DEVOXELIZE_MODES = ("nearest", "trilinear")


def voxelize(
    points: torch.Tensor,
    voxel_size: float | tuple[float, float, float] = 0.05,
    features: torch.Tensor | None = None,
    reduce: str = "mean",
    batch: torch.Tensor | None = None,
) -> tuple[SparseTensor, torch.Tensor]:
    """Quantise points ``[N, 3]`` (or ``[N, 4]`` = batch, x, y, z) to unique voxels.

    Returns the ``SparseTensor`` (features reduced per voxel, ``"mean"`` or ``"first"`` point)
    and the point-to-voxel index ``[N]`` used by :func:`devoxelize`. ``features`` default to the
    points' xyz. Points with NaN or infinite coordinates are **dropped with a warning**; their
    entry in the returned index is -1 (so nothing is silently scored on them). Voxels are ordered
    by packed key (batch, x, y, z), which makes the result deterministic.
    """
    if not isinstance(points, torch.Tensor) or points.dim() != 2 or points.shape[1] not in (3, 4):
        raise ValueError(
            "points must be a float tensor of shape [N, 3] (x, y, z) or [N, 4] (batch, x, y, z)"
        )
    if not points.is_floating_point():
        raise TypeError(f"points must be floating point, got {points.dtype}")
    vs = torch.as_tensor(voxel_size, dtype=torch.float64).flatten()
    if vs.numel() not in (1, 3) or bool((~torch.isfinite(vs)).any()) or bool((vs <= 0).any()):
        raise ValueError(
            f"voxel_size must be positive and finite (a float or 3 floats), got {voxel_size}"
        )
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    xyz = points[:, -3:]
    if points.shape[1] == 4:
        if batch is not None:
            raise ValueError("give the batch index either as points[:, 0] or as batch, not both")
        batch = points[:, 0]
    if features is None:
        features = xyz
    if features.shape[0] != points.shape[0]:
        raise ValueError(f"features has {features.shape[0]} rows but points has {points.shape[0]}")
    finite = torch.isfinite(xyz).all(dim=1)
    n_bad = int((~finite).sum())
    if n_bad:
        warnings.warn(
            f"voxelize: dropped {n_bad} point(s) with NaN or infinite coordinates", stacklevel=2
        )
    grid = torch.floor(xyz[finite].double() / vs.to(points.device)).long()
    b = torch.zeros(grid.shape[0], dtype=torch.long, device=points.device)
    if batch is not None:
        b = _batch_index(batch, points.shape[0])[finite]
    coords = torch.cat([b[:, None], grid], dim=1)
    if coords.numel() and (
        coords[:, 1:].abs().max() > max(-coord_keys.COORD_MIN, coord_keys.COORD_MAX)
    ):
        raise ValueError(
            f"points span more than [{coord_keys.COORD_MIN}, {coord_keys.COORD_MAX}] voxels of size {voxel_size}; "
            "use a larger voxel_size or crop the range"
        )
    keys = coord_keys.pack(coords.int()) if coords.numel() else coords.new_zeros(0)
    uniq, inverse = torch.unique(keys, return_inverse=True)
    feats_in = features[finite]
    n_vox = uniq.numel()
    if reduce == "mean":
        acc = torch.zeros((n_vox, feats_in.shape[1]), dtype=torch.float64, device=points.device)
        acc.index_add_(0, inverse, feats_in.double())
        count = torch.bincount(inverse, minlength=n_vox).clamp(min=1)
        feats = (acc / count[:, None]).to(feats_in.dtype)
    else:
        first = torch.full((n_vox,), feats_in.shape[0], dtype=torch.long, device=points.device)
        first.scatter_reduce_(
            0, inverse, torch.arange(inverse.numel(), device=points.device), "amin"
        )
        feats = feats_in[first]
    p2v = torch.full((points.shape[0],), -1, dtype=torch.long, device=points.device)
    p2v[finite] = inverse
    return SparseTensor(feats, coord_keys.unpack(uniq), check=False), p2v


def _batch_index(batch: torch.Tensor, n: int) -> torch.Tensor:
    """The batch column as int64, refused unless it holds whole numbers in [0, BATCH_MAX]."""
    if not isinstance(batch, torch.Tensor) or batch.shape != (n,):
        raise ValueError(
            f"batch must be a tensor of shape [{n}], got {getattr(batch, 'shape', batch)}"
        )
    if batch.is_floating_point() and bool((batch != batch.round()).any()):
        raise ValueError("batch index must hold whole numbers (points[:, 0] or batch)")
    b = batch.long()
    if b.numel() and (int(b.min()) < 0 or int(b.max()) > coord_keys.BATCH_MAX):
        raise ValueError(
            f"batch index must be in [0, {coord_keys.BATCH_MAX}], got "
            f"[{int(b.min())}, {int(b.max())}] (points[:, 0] or batch)"
        )
    return b


def devoxelize(
    x: SparseTensor,
    p2v: torch.Tensor,
    mode: str = "nearest",
    points: torch.Tensor | None = None,
    voxel_size: float | tuple[float, float, float] | None = None,
) -> torch.Tensor:
    """Voxel features back to the points.

    ``"nearest"``: each point takes its voxel's features (index -1 gives zeros). ``"trilinear"``
    (SPVCNN's point-voxel fusion): each point interpolates the 8 voxel centres around it at the
    tensor's stride, with weights renormalised over the voxels that exist; needs ``points``
    (``[N, 3]`` or ``[N, 4]`` with batch first) and the ``voxel_size`` used by ``voxelize``.
    """
    if mode not in DEVOXELIZE_MODES:
        raise ValueError(f"mode must be one of {DEVOXELIZE_MODES}, got {mode!r}")
    if mode == "nearest":
        if not isinstance(p2v, torch.Tensor) or p2v.dim() != 1 or p2v.is_floating_point():
            raise ValueError("p2v must be the integer point-to-voxel index [N] from voxelize")
        if p2v.numel() and int(p2v.max()) >= len(x):
            raise ValueError(
                f"p2v names voxel {int(p2v.max())} but x has {len(x)} voxels "
                "(was x built from the same voxelize call?)"
            )
        out = x.feats.new_zeros((p2v.shape[0], x.feats.shape[1]))
        ok = p2v >= 0
        out[ok] = x.feats[p2v[ok]]
        return out
    if points is None or voxel_size is None:
        raise ValueError("trilinear devoxelize needs points and voxel_size")
    return _trilinear(x, points, voxel_size)


def row_lookup(x: SparseTensor):
    """Query function ``keys -> row of x`` (-1 where absent): the C hash table on CPU, else the
    cached torch / Triton table of ``x``'s stride."""
    keys = coord_keys.pack(x.coords)
    if torch.compiler.is_compiling():  # a custom op the compiler can trace
        from sparseconv.functional import ops

        return partial(ops.lookup, keys)
    if tables.native(x.coords.device):
        return tables.Lookup(keys)
    return x.cache.table(x.stride, x.coords, keys).query


def _trilinear(x: SparseTensor, points: torch.Tensor, voxel_size) -> torch.Tensor:
    vs = torch.as_tensor(voxel_size, dtype=points.dtype, device=points.device).flatten()
    stride = torch.tensor(x.stride, dtype=points.dtype, device=points.device)
    xyz = points[:, -3:]
    b = points[:, 0].long() if points.shape[1] == 4 else torch.zeros_like(xyz[:, 0]).long()
    # Position in units of this tensor's cells, measured from cell centres.
    pos = xyz / (vs * stride) - 0.5
    base = torch.floor(pos)
    frac = pos - base
    table = row_lookup(x)
    out = x.feats.new_zeros((points.shape[0], x.feats.shape[1]))
    wsum = torch.zeros(points.shape[0], dtype=x.feats.dtype, device=points.device)
    for corner in range(8):
        bits = torch.tensor(
            [(corner >> 2) & 1, (corner >> 1) & 1, corner & 1], device=points.device
        )
        cell = (base + bits).long() * stride.long()
        w = torch.prod(torch.where(bits.bool(), frac, 1 - frac), dim=1).to(x.feats.dtype)
        inside = (cell.abs() <= coord_keys.COORD_MAX).all(dim=1) & torch.isfinite(xyz).all(dim=1)
        # dense gathers, no boolean-mask indexing: absent or out-of-range corners weigh 0
        cell = cell.clamp(coord_keys.COORD_MIN, coord_keys.COORD_MAX)
        idx = table(coord_keys.pack(torch.cat([b[:, None], cell], dim=1).int())).long()
        w = torch.where(inside & (idx >= 0), w, torch.zeros_like(w))
        out.addcmul_(x.feats.index_select(0, idx.clamp(min=0)), w[:, None])
        wsum += w
    return out / wsum.clamp(min=1e-12)[:, None]


def points_to_voxels(
    x: SparseTensor, points: torch.Tensor, point_feats: torch.Tensor, voxel_size=1.0
) -> SparseTensor:
    """Average point features into the voxels of ``x`` at its stride (SPVCNN's point-to-voxel).

    ``points`` is ``[N, 4]`` (batch, x, y, z) in metres, quantised with ``voxel_size`` as
    :func:`voxelize` does. Points whose cell is not a voxel of ``x`` are left out; voxels that
    receive no point get zeros.
    """
    vs = torch.as_tensor(voxel_size, dtype=points.dtype, device=points.device).flatten()
    stride = torch.tensor(x.stride, dtype=torch.long, device=points.device)
    cell = torch.div(torch.floor(points[:, 1:] / vs).long(), stride, rounding_mode="floor") * stride
    coords = torch.cat([points[:, :1].long(), cell], 1).int()
    idx = row_lookup(x)(coord_keys.pack(coords)).long()
    # dense sums, no boolean-mask indexing (no data-dependent shape): a miss adds 0 to row 0
    hit = idx >= 0
    rows = idx.clamp(min=0)
    n = x.coords.shape[0]
    acc = point_feats.new_zeros((n, point_feats.shape[1]))
    acc.index_add_(0, rows, torch.where(hit[:, None], point_feats, 0.0))  # a miss may be NaN
    count = point_feats.new_zeros(n).index_add_(0, rows, hit.to(point_feats.dtype)).clamp(min=1)
    return x.replace_feats(acc / count[:, None])
