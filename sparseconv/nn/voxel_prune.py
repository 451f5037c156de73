"""Voxel (activation) pruning: drop the least important voxels before a conv, so that every
later map is smaller (SPS-Conv, Ada3D).

``VoxelPrune(keep_ratio=0.7)`` keeps, per scan of the batch, the voxels with the largest feature
L2 norm (``score="magnitude"``) or the largest learned score (``score="learned"``: a linear
scorer trained through a straight-through factor that is 1 in the forward pass, so kept
features are unchanged and the scorer still gets gradients), or seeded uniform scores
(``score="random"``, the baseline); ``threshold=`` keeps the voxels scoring at least that
instead. Selection is deterministic (ties go to the lower row).

The pruned tensor starts a fresh map cache: the coordinates at its stride are now a subset, and
the layers after it must not reuse the full set's maps. A decoder that returns to that stride
lands on the subset; :func:`scatter_to` puts such a tensor back on the full set (zeros for the
dropped voxels), and :func:`cat_skip` does that and appends the skip's features in one pass
(what ``MinkUNet`` and ``SPVCNN`` call for their skips), so every input voxel, and through it
every point, still gets a prediction.

``cell=(2, 2, 2)`` (the stride of the conv it sits before; what ``voxel_prune`` gives by
default) drops whole output cells of that conv instead of single voxels, and always keeps the
best cell of every parent block (twice the cell's size): a voxel-level pick leaves most coarse
cells alive, and a global pick of cells drops whole regions (magnitude clusters), so that a
dropped cell has no kept voxel near it. With a kept cell in every block, ``scatter_to`` gives a
dropped cell's voxels the decoder features of the nearest kept cell of their block (its first
kept voxel), and the decoder keeps context everywhere (zeros there instead cost 15 mIoU on the
demo base, see docs/benchmarks.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from sparseconv.kernels import cpu_features, cpu_kernel_map
from sparseconv.maps import keys as coord_keys
from sparseconv.maps import tables
from sparseconv.maps.cache import MapCache
from sparseconv.maps.offsets import Triple
from sparseconv.tensor import SparseTensor
from sparseconv.voxelize import row_lookup

SCORES = ("magnitude", "learned", "random")
# NEAREST[o]: a block's octants by Hamming distance from octant o (ties: the lower), o first;
# a dropped cell's voxels take the features of the first kept cell in that order
NEAREST = [sorted(range(8), key=lambda p, o=o: ((o ^ p).bit_count(), p)) for o in range(8)]


@dataclass(frozen=True)
class PrunedSubset:
    """What a cell-granular :class:`VoxelPrune` leaves in the pruned tensor's map cache, so that
    :func:`scatter_to` goes back to the full set with one gather and no lookup: every full row's
    ``source`` row of the subset (its own, or, for a dropped row, the first kept row of the
    nearest kept cell of its block)."""

    full_coords: torch.Tensor
    coords: torch.Tensor  # the subset's coordinates (a decoder lands on this very tensor)
    source: torch.Tensor  # [N] row of the subset each full row takes its features from


class VoxelPrune(nn.Module):
    """Keep ``keep_ratio`` of each scan's voxels, or of its cells with ``cell=`` (or those
    scoring ``>= threshold``)."""

    def __init__(self, keep_ratio: float | None = None, threshold: float | None = None,
                 score: str = "magnitude", channels: int | None = None,
                 cell: Triple | None = None) -> None:  # fmt: skip
        super().__init__()
        if cell is not None and (len(cell) != 3 or min(cell) < 1 or max(cell) < 2):
            raise ValueError(f"cell must be a conv stride above 1 (e.g. (2, 2, 2)), got {cell}")
        if (keep_ratio is None) == (threshold is None):
            raise ValueError("give exactly one of keep_ratio and threshold")
        if keep_ratio is not None and not (
            isinstance(keep_ratio, (int, float)) and 0 < keep_ratio <= 1
        ):
            raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio!r}")
        if score not in SCORES:
            raise ValueError(f"score must be one of {SCORES}, got {score!r}")
        if score == "learned" and (not isinstance(channels, int) or channels < 1):
            raise ValueError("score='learned' needs channels= (the feature width it scores)")
        self.keep_ratio, self.threshold, self.score_kind = keep_ratio, threshold, score
        self.cell = tuple(cell) if cell is not None else None
        self.scorer = nn.Linear(channels, 1) if score == "learned" else None

    def scores(self, x: SparseTensor) -> torch.Tensor:
        """``[N]``: each voxel's importance (``"random"``: the baseline that ignores the data,
        uniform scores from a fixed seed, so one scan is always pruned alike)."""
        if self.scorer is not None:
            return torch.sigmoid(self.scorer(x.feats)).squeeze(1)
        if self.score_kind == "random":
            generator = torch.Generator(device=x.feats.device).manual_seed(0)
            return torch.rand(x.feats.shape[0], generator=generator, device=x.feats.device)
        return x.feats.detach().float().norm(dim=1)

    def kept_rows(self, x: SparseTensor, scores: torch.Tensor) -> torch.Tensor:
        """Sorted rows kept: per batch entry the top ``keep_ratio`` (at least one), or
        everything scoring at least ``threshold``."""
        s = scores.detach()
        if self.threshold is not None:
            return torch.nonzero(s >= self.threshold).flatten()
        batch = x.coords[:, 0]
        if len(batch) == 0:
            return batch.new_zeros(0, dtype=torch.long)
        scans = _per_scan(batch)
        if len(scans) == 1:  # one scan: every row is a member, no split
            return _top_rows(s, max(1, math.ceil(self.keep_ratio * len(s))))
        kept = [rows[_top_rows(s[rows], max(1, math.ceil(self.keep_ratio * len(rows))))]
                for rows in scans]  # fmt: skip
        return torch.sort(torch.cat(kept)).values

    def kept_cells(
        self, x: SparseTensor, scores: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        """``(rows, source)``: the sorted rows of the kept cells and, per row, the position in
        ``rows`` of itself or, when dropped, of the first kept row of the nearest kept cell of
        its block. Cell ``8 * block + octant`` scores its best voxel; kept are the best cell of
        every block, then per scan the best others up to ``keep_ratio`` of the cells (or those
        scoring at least ``threshold``); ties to the lower cell. ``scores=None``: the module's
        own (:meth:`scores`); on CPU one C pass, which computes the magnitude score itself."""
        cell = tuple(t * c for t, c in zip(x.stride, self.cell))
        block = tuple(2 * c for c in cell)
        keys = _cached_keys(x)
        if keys is None:
            keys = coord_keys.pack(x.coords)
        native = tables.native(keys.device) and tables.is_sorted(keys)
        if scores is None and not (native and self.score_kind == "magnitude"):
            scores = self.scores(x)  # else the C pass takes the feature norms itself
        if native:
            block_keys, block_of, _ = cpu_kernel_map.downsample(keys, block)
            return cpu_kernel_map.select_cells(keys, block_of, block_keys, cell, scores,
                                               self.keep_ratio, self.threshold,
                                               feats=x.feats if scores is None else None)  # fmt: skip
        return self._kept_cells_torch(x, scores, cell)

    def _kept_cells_torch(self, x: SparseTensor, scores: torch.Tensor, cell: Triple):
        """The reference of :meth:`kept_cells` (any device)."""
        device = x.coords.device
        cells = _floor_div(x.coords, cell)  # (scan, cell index) per row
        block_keys, block_of = torch.unique(
            coord_keys.pack(_floor_div(cells, (2, 2, 2))), return_inverse=True
        )
        n_blocks = len(block_keys)
        halves = cells[:, 1:] & 1  # the cell's octant within its block
        cell_of = 8 * block_of + (halves[:, 0] << 2 | halves[:, 1] << 1 | halves[:, 2])
        s = scores.detach().float()
        cell_score = s.new_full((8 * n_blocks,), -math.inf).scatter_reduce(0, cell_of, s, "amax")
        occupied = torch.zeros(8 * n_blocks, dtype=torch.bool, device=device)
        occupied[cell_of] = True
        keep = torch.zeros_like(occupied)
        if n_blocks:
            best = cell_score.masked_fill(~occupied, -math.inf).view(n_blocks, 8).argmax(1)
            keep[8 * torch.arange(n_blocks, device=device) + best] = True
        if self.threshold is not None:
            keep |= occupied & (cell_score >= self.threshold)
        else:
            block_scan = coord_keys.unpack(block_keys)[:, 0]
            for blocks in _per_scan(block_scan):
                cells = (8 * blocks[:, None] + torch.arange(8, device=device)).flatten()
                members = cells[occupied[cells]]
                forced = keep[members]
                budget = math.ceil(self.keep_ratio * len(members)) - int(forced.sum())
                if budget > 0:  # the best cells not kept already
                    free = cell_score[members].masked_fill(forced, -math.inf)
                    keep[members[_top_rows(free, budget)]] = True
        kept = keep[cell_of]
        rows = torch.nonzero(kept).flatten()
        first = torch.full((8 * n_blocks,), -1, device=device, dtype=torch.long)
        first = first.scatter_reduce(0, cell_of[rows], torch.arange(len(rows), device=device),
                                     "amin", include_self=False)  # fmt: skip
        octant = cell_of - 8 * block_of
        nearest = torch.tensor(NEAREST, device=device)[octant]  # [N, 8]
        kept_cells = keep[8 * block_of[:, None] + nearest]
        choice = nearest.gather(1, kept_cells[:, 1:].int().argmax(1, keepdim=True) + 1)[:, 0]
        position = torch.cumsum(kept, 0) - 1
        return rows, torch.where(kept, position, first[8 * block_of + choice])

    def forward(self, x: SparseTensor) -> SparseTensor:
        if self.keep_ratio == 1 and self.scorer is None:
            return x  # the identity: same tensor, same maps
        # scores here only for a voxel pick or the learned scorer's straight-through factor; a
        # cell pick takes its own (kept_cells: in the C pass itself for the magnitude)
        scores = self.scores(x) if self.cell is None or self.scorer is not None else None
        cache, source = MapCache(), None
        if self.cell is None:
            rows = self.kept_rows(x, scores)
        else:
            rows, source = self.kept_cells(x, scores)
        # index_select: a third of advanced indexing's time on CPU
        feats = x.feats.index_select(0, rows)
        if self.scorer is not None:  # straight-through: 1 forward, d/dscore backward
            s = scores.index_select(0, rows)[:, None]
            feats = feats * (1 + s - s.detach())
        coords = x.coords.index_select(0, rows)
        if source is not None:
            cache.pruned_from = PrunedSubset(x.coords, coords, source)
        keys = _cached_keys(x)
        if keys is not None:  # a sorted subset of sorted keys: no packing again
            cache.keys[x.stride] = keys.index_select(0, rows)
        return SparseTensor(feats, coords, x.stride, cache=cache, check=False)

    def extra_repr(self) -> str:
        rule = (
            f"keep_ratio={self.keep_ratio}"
            if self.threshold is None
            else f"threshold={self.threshold}"
        )
        cell = f", cell={self.cell}" if self.cell is not None else ""
        return f"{rule}, score={self.score_kind}{cell}"


def _cached_keys(x: SparseTensor) -> torch.Tensor | None:
    """The packed keys the map cache holds for ``x``'s own coordinates, if it has them."""
    if x.cache.coords.get(x.stride) is not x.coords:
        return None
    return x.cache.keys.get(x.stride)


def _floor_div(coords: torch.Tensor, size: Triple) -> torch.Tensor:
    """``floor(coords / size)`` per axis, the batch column kept."""
    divisor = torch.tensor([1, *size], dtype=coords.dtype, device=coords.device)
    return torch.div(coords, divisor, rounding_mode="floor")


def _per_scan(batch: torch.Tensor) -> list[torch.Tensor]:
    """The indices of each scan's members (one slice for a single scan: no split)."""
    if len(batch) == 0 or bool((batch == batch[0]).all()):
        return [torch.arange(len(batch), device=batch.device)]
    return [torch.nonzero(batch == b).flatten() for b in torch.unique(batch).tolist()]


def _top_rows(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The rows of the ``k`` largest scores in row order, ties to the lower rows: the k-th
    largest value splits them, no sort (sorting a scan's scores cost half the pruning step)."""
    if k >= len(scores):
        return torch.arange(len(scores), device=scores.device)
    kth = -torch.kthvalue(-scores, k).values
    above, tie = scores > kth, scores == kth
    need = k - int(above.sum())
    return torch.nonzero(above | (tie & (torch.cumsum(tie, 0) <= need))).flatten()


def scatter_to(y: SparseTensor, full: SparseTensor) -> SparseTensor:
    """``y`` (on a subset of ``full``'s coordinates, same stride) on ``full``'s coordinates and
    cache; ``y`` itself when it already is on them. The voxels ``y`` lacks get zeros, or, when
    ``y`` lies on the cells a cell-granular :class:`VoxelPrune` kept of ``full``, the features
    of the first kept voxel of their block (every block keeps one)."""
    if y.coords is full.coords:
        return y
    if y.stride != full.stride:
        raise ValueError(f"scatter_to needs equal strides, got {y.stride} and {full.stride}")
    source = _fill_source(y, full)
    if source is not None:
        out = y.feats.index_select(0, source)
        return SparseTensor(out, full.coords, full.stride, cache=full.cache, check=False)
    rows = row_lookup(full)(coord_keys.pack(y.coords)).long()
    if bool((rows < 0).any()):
        raise ValueError("scatter_to: y has voxels that are not in full")
    out = y.feats.new_zeros((full.coords.shape[0], y.feats.shape[1]))
    out = out.index_copy(0, rows, y.feats)
    return SparseTensor(out, full.coords, full.stride, cache=full.cache, check=False)


def cat_skip(y: SparseTensor, skip: SparseTensor) -> SparseTensor:
    """A decoder's skip connection: ``y`` back on ``skip``'s voxels (:func:`scatter_to`) with
    ``skip``'s features appended, on ``skip``'s coordinates and cache. On CPU without autograd
    one C pass writes every output row once (the fill and ``torch.cat`` each wrote all of
    them: about 0.6 and 0.9 ms of a voxel-pruned width-0.25 MinkUNet call at 38 k voxels)."""
    if y.stride != skip.stride:
        raise ValueError(f"cat_skip needs equal strides, got {y.stride} and {skip.stride}")
    index = None if y.coords is skip.coords else _fill_source(y, skip)
    if index is None:  # on skip's voxels already, or any other subset (zeros where y has none)
        y = scatter_to(y, skip)
    if _native_rows(y.feats, skip.feats):
        out = cpu_features.gather_concat(y.feats, index, skip.feats)
    else:
        feats = y.feats if index is None else y.feats.index_select(0, index)
        out = torch.cat([feats, skip.feats], 1)
    return SparseTensor(out, skip.coords, skip.stride, cache=skip.cache, check=False)


def _fill_source(y: SparseTensor, full: SparseTensor) -> torch.Tensor | None:
    """Every ``full`` row's source row in ``y`` when ``y`` lies on the cells a cell-granular
    :class:`VoxelPrune` kept of ``full`` (one gather, no lookup), else None."""
    subset = getattr(y.cache, "pruned_from", None)
    if subset is not None and subset.full_coords is full.coords and subset.coords is y.coords:
        return subset.source
    return None


def _native_rows(*feats: torch.Tensor) -> bool:
    """Whether the C row gather applies: float32 CPU features, no autograd graph to record, and
    no tracer that must see the ``torch.cat`` (the compiler, ``torch.export``, a function mode
    such as the channel-pruning dependency graph)."""
    return (  # the compiler check first: what follows is not for it to trace
        not torch.compiler.is_compiling()
        and not torch._C._is_torch_function_mode_enabled()
        and cpu_features.available()
        and all(f.dtype == torch.float32 and f.device.type == "cpu" for f in feats)
        and not (torch.is_grad_enabled() and any(f.requires_grad for f in feats))
    )
