"""Layers that act on features only (coordinates unchanged): norms, activations, dropout.

Each wraps the torch layer of the same name and applies it to ``x.feats``, so state_dict keys,
``.half()``, DDP and pruning tools see ordinary torch parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from sparseconv.tensor import SparseTensor


class _OnFeatures:
    """Mixin placed before a torch layer: apply that layer to ``x.feats``, keep the coordinates."""

    def forward(self, x: SparseTensor) -> SparseTensor:
        return x.replace_feats(super().forward(x.feats))  # type: ignore[misc]


class BatchNorm(_OnFeatures, nn.BatchNorm1d):
    """Batch norm over all points of the batch (``BatchNorm1d`` on ``[N, C]``)."""


class GroupNorm(nn.GroupNorm):
    """Group norm computed per sample of the batch (statistics never mix scans)."""

    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        feats = x.feats
        out = torch.empty_like(feats)
        batch = x.coords[:, 0].long()
        for b in torch.unique(batch).tolist():
            rows = batch == b
            # [n, C] -> [1, C, n] so torch's GroupNorm normalises this sample alone
            out[rows] = super().forward(feats[rows].t().unsqueeze(0)).squeeze(0).t()
        return x.replace_feats(out)


class ReLU(_OnFeatures, nn.ReLU):
    pass


class LeakyReLU(_OnFeatures, nn.LeakyReLU):
    pass


class Dropout(_OnFeatures, nn.Dropout):
    pass


class Sequential(nn.Sequential):
    """``torch.nn.Sequential`` for layers that take and return ``SparseTensor``."""
