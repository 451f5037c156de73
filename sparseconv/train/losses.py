"""Losses: cross-entropy plus the Lovász-softmax surrogate of the IoU (Berman et al., CVPR 2018)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sparseconv.datasets.labels import IGNORE_INDEX


def _lovasz_grad(fg_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovász extension of the Jaccard loss at the sorted errors."""
    gts = fg_sorted.sum()
    intersection = gts - fg_sorted.cumsum(0)
    union = gts + (1 - fg_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    jaccard[1:] = jaccard[1:] - jaccard[:-1]
    return jaccard


def lovasz_softmax(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Mean over the classes present in ``labels`` of the Lovász hinge on softmax probabilities."""
    ok = labels != ignore_index
    probs, labels = F.softmax(logits[ok].float(), dim=1), labels[ok]
    if labels.numel() == 0:
        return logits.sum() * 0.0
    losses = []
    for c in labels.unique():
        fg = (labels == c).float()
        errors = (fg - probs[:, c]).abs()
        errors_sorted, perm = torch.sort(errors, descending=True)
        losses.append(torch.dot(errors_sorted, _lovasz_grad(fg[perm])))
    return torch.stack(losses).mean()


def segmentation_loss(
    logits: torch.Tensor, labels: torch.Tensor, lovasz_weight: float = 0.0, class_weights=None
) -> torch.Tensor:
    loss = F.cross_entropy(logits.float(), labels, weight=class_weights, ignore_index=IGNORE_INDEX)
    if lovasz_weight:
        loss = loss + lovasz_weight * lovasz_softmax(logits, labels)
    return loss
