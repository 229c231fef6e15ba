"""Classification metrics from a confusion matrix, computed on the device where the predictions are."""
from __future__ import annotations

from dataclasses import dataclass

import torch


def confusion_matrix(targets: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) int64 counts; rows are true classes, columns predicted classes."""
    flat = targets.to(torch.int64) * num_classes + preds.to(torch.int64)
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


@dataclass(frozen=True)
class PerClass:
    precision: list[float]
    recall: list[float]
    f1: list[float]
    support: list[int]


def per_class(confusion: torch.Tensor) -> PerClass:
    """Precision, recall and F1 per class; 0 where undefined (as scikit-learn's zero_division=0)."""
    cm = confusion.to(torch.float64)
    tp = cm.diagonal()
    predicted = cm.sum(dim=0)
    actual = cm.sum(dim=1)
    precision = torch.where(predicted > 0, tp / predicted.clamp_min(1), torch.zeros_like(tp))
    recall = torch.where(actual > 0, tp / actual.clamp_min(1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp_min(1e-300), torch.zeros_like(tp))
    return PerClass(precision.tolist(), recall.tolist(), f1.tolist(), actual.to(torch.int64).tolist())


def accuracy(confusion: torch.Tensor) -> float:
    total = confusion.sum()
    return int(confusion.diagonal().sum()) / int(total) if total > 0 else 0.0


def macro_f1(confusion: torch.Tensor) -> float:
    """Mean F1 over the classes that occur in the targets or the predictions, as scikit-learn's
    `f1_score(average="macro")` does when it is not given the label list."""
    cm = confusion.to(torch.float64)
    tp = cm.diagonal()
    predicted, actual = cm.sum(dim=0), cm.sum(dim=1)
    present = (predicted + actual) > 0
    if not present.any():
        return 0.0
    f1 = 2 * tp / (predicted + actual).clamp_min(1)  # 2TP / (2TP + FP + FN), the same as 2PR / (P + R)
    return float(f1[present].mean())
