"""Segmentation metrics: a global confusion matrix and IoU (the official SemanticKITTI definition).

IoU per class = TP / (TP + FP + FN) accumulated over the **whole** evaluation set (not averaged per
scan), at point level; mIoU averages the classes that occur in the ground truth or predictions
(a class absent from both has no IoU and is left out, and the report says which).
"""

from __future__ import annotations

import torch

from sparseconv.datasets.labels import IGNORE_INDEX


class ConfusionMatrix:
    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.n = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.long)  # [target, pred]

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        ok = target != self.ignore_index
        t, p = target[ok].long().cpu(), pred[ok].long().cpu()
        if t.numel() and (int(t.max()) >= self.n or int(p.max()) >= self.n):
            raise ValueError(f"labels or predictions outside 0..{self.n - 1} (and not ignore)")
        self.matrix += torch.bincount(t * self.n + p, minlength=self.n * self.n).view(
            self.n, self.n
        )

    def iou(self) -> torch.Tensor:
        """Per-class IoU; NaN where the class is absent from both targets and predictions."""
        m = self.matrix.double()
        tp = m.diag()
        denom = m.sum(0) + m.sum(1) - tp
        return torch.where(denom > 0, tp / denom.clamp(min=1), torch.full_like(tp, float("nan")))

    def miou(self) -> float:
        iou = self.iou()
        valid = ~torch.isnan(iou)
        return float(iou[valid].mean()) if bool(valid.any()) else float("nan")

    def accuracy(self) -> float:
        total = int(self.matrix.sum())
        return float(self.matrix.diag().sum()) / total if total else float("nan")

    def per_class(self, names: tuple[str, ...]) -> dict[str, float]:
        """IoU in percent for every class that has one."""
        return {n: 100 * float(v) for n, v in zip(names, self.iou()) if not torch.isnan(v)}

    def table(self, names: tuple[str, ...]) -> str:
        rows = [f"{'class':>20s}  IoU %"]
        rows += [f"{n:>20s}  {v:5.1f}" for n, v in self.per_class(names).items()]
        absent = [n for n, v in zip(names, self.iou()) if torch.isnan(v)]
        rows.append(f"{'mIoU':>20s}  {100 * self.miou():5.1f}")
        if absent:
            rows.append(f"(absent from targets and predictions, not averaged: {', '.join(absent)})")
        return "\n".join(rows) + "\n"
