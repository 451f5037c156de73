"""Voxel (activation) pruning: drop the least important voxels before a conv, so that every
later map is smaller (SPS-Conv, Ada3D).

``VoxelPrune(keep_ratio=0.7)`` keeps, per scan of the batch, the voxels with the largest feature
L2 norm (``score="magnitude"``) or the largest learned score (``score="learned"``: a linear
scorer trained through a straight-through factor that is 1 in the forward pass, so kept
features are unchanged and the scorer still gets gradients); ``threshold=`` keeps the voxels
scoring at least that instead. Selection is deterministic (ties go to the lower row).

The pruned tensor starts a fresh map cache: the coordinates at its stride are now a subset, and
the layers after it must not reuse the full set's maps. A decoder that returns to that stride
lands on the subset; :func:`scatter_to` puts such a tensor back on the full set (zeros for the
dropped voxels), which ``MinkUNet`` and ``SPVCNN`` do before concatenating their skips, so every
input voxel, and through it every point, still gets a prediction.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sparseconv.maps import keys as coord_keys
from sparseconv.maps.cache import MapCache
from sparseconv.tensor import SparseTensor
from sparseconv.voxelize import row_lookup

SCORES = ("magnitude", "learned")


class VoxelPrune(nn.Module):
    """Keep ``keep_ratio`` of each scan's voxels (or those scoring ``>= threshold``)."""

    def __init__(self, keep_ratio: float | None = None, threshold: float | None = None,
                 score: str = "magnitude", channels: int | None = None) -> None:  # fmt: skip
        super().__init__()
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
        self.scorer = nn.Linear(channels, 1) if score == "learned" else None

    def scores(self, x: SparseTensor) -> torch.Tensor:
        """``[N]``: each voxel's importance."""
        if self.scorer is None:
            return x.feats.detach().float().norm(dim=1)
        return torch.sigmoid(self.scorer(x.feats)).squeeze(1)

    def kept_rows(self, x: SparseTensor, scores: torch.Tensor) -> torch.Tensor:
        """Sorted rows kept: per batch entry the top ``keep_ratio`` (at least one), or
        everything scoring at least ``threshold``."""
        s = scores.detach()
        if self.threshold is not None:
            return torch.nonzero(s >= self.threshold).flatten()
        batch = x.coords[:, 0]
        if len(batch) == 0:
            return batch.new_zeros(0, dtype=torch.long)
        if bool((batch == batch[0]).all()):  # one scan: no per-scan split
            return _top_rows(s, max(1, math.ceil(self.keep_ratio * len(s))))
        kept = []
        for b in torch.unique(batch).tolist():
            rows = torch.nonzero(batch == b).flatten()
            kept.append(rows[_top_rows(s[rows], max(1, math.ceil(self.keep_ratio * len(rows))))])
        return torch.sort(torch.cat(kept)).values

    def forward(self, x: SparseTensor) -> SparseTensor:
        if self.keep_ratio == 1 and self.scorer is None:
            return x  # the identity: same tensor, same maps
        scores = self.scores(x)
        rows = self.kept_rows(x, scores)
        feats = x.feats[rows]
        if self.scorer is not None:  # straight-through: 1 forward, d/dscore backward
            s = scores[rows][:, None]
            feats = feats * (1 + s - s.detach())
        return SparseTensor(feats, x.coords[rows], x.stride, cache=MapCache(), check=False)

    def extra_repr(self) -> str:
        rule = (
            f"keep_ratio={self.keep_ratio}"
            if self.threshold is None
            else f"threshold={self.threshold}"
        )
        return f"{rule}, score={self.score_kind}"


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
    cache, zero features where ``y`` has no voxel; ``y`` itself when it already is on them."""
    if y.coords is full.coords:
        return y
    if y.stride != full.stride:
        raise ValueError(f"scatter_to needs equal strides, got {y.stride} and {full.stride}")
    rows = row_lookup(full)(coord_keys.pack(y.coords)).long()
    if bool((rows < 0).any()):
        raise ValueError("scatter_to: y has voxels that are not in full")
    out = y.feats.new_zeros((full.coords.shape[0], y.feats.shape[1]))
    out = out.index_copy(0, rows, y.feats)
    return SparseTensor(out, full.coords, full.stride, cache=full.cache, check=False)
