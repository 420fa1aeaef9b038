"""What a task means to training and search: its loss, its batch accuracy and its evaluation metric.

* ``classification``: cross-entropy on pooled logits ``(B, K)``; metric top-1 accuracy (%).
* ``segmentation``: per-pixel cross-entropy on dense logits ``(B, K, H, W)`` against masks
  ``(B, H, W)`` whose pixels equal to ``IGNORE_INDEX`` (255, Pascal VOC's object boundaries and
  "void") count nowhere; metric mean intersection over union (mIoU, %) from the confusion matrix
  accumulated over the whole split, with pixel accuracy beside it. Background pixels (class 0)
  can weigh less in the loss (``TrainConfig.background_weight``): on mnistseg they are 92% of the
  pixels, and at equal weight a short run sits at the predict-background optimum.

``task_of(name)`` returns the task object; trainers, the supernet trainer and the search's
evaluator call it, so a new task is one class here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from nas.errors import ConfigError

IGNORE_INDEX = 255


class ConfusionMatrix:
    """``K x K`` counts, rows the true class, columns the predicted one; ignored pixels left out."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.counts = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add predictions (class indices, any shape) against ``target`` (same shape)."""
        k = self.num_classes
        valid = target != self.ignore_index
        t, p = target[valid].to(torch.int64), pred[valid].to(torch.int64)
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= k):
            bad = int(t[(t < 0) | (t >= k)][0])
            raise ConfigError("mask value", bad, f"class indices 0..{k - 1} or {self.ignore_index} (ignored)")
        self.counts += torch.bincount(t * k + p, minlength=k * k).reshape(k, k).cpu()

    def iou(self) -> list[float]:
        """Per-class IoU = TP / (TP + FP + FN); NaN for a class absent from both truth and predictions."""
        c = self.counts.double()
        tp = c.diag()
        union = c.sum(0) + c.sum(1) - tp
        return [float(v) if u > 0 else math.nan for v, u in zip((tp / union.clamp_min(1)).tolist(), union.tolist())]

    def miou(self) -> float:
        """Mean IoU (%) over the classes present in truth or predictions."""
        vals = [v for v in self.iou() if not math.isnan(v)]
        return 100.0 * sum(vals) / len(vals) if vals else 0.0

    def pixel_acc(self) -> float:
        total = int(self.counts.sum())
        return 100.0 * int(self.counts.diag().sum()) / total if total else 0.0


class Classification:
    """Image classification: cross-entropy on pooled logits, top-1 accuracy (module docstring)."""

    name = "classification"
    metric = "acc"  # the key after ``val_`` / ``test_`` in metrics.csv and summary.json
    metric_label = "accuracy"
    default_resolution = 32  # the bundled dataset's (mnist5k)

    def loss(self, logits: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0,
             background_weight: float = 1.0) -> torch.Tensor:
        # ``background_weight`` is a segmentation setting (TrainConfig refuses it for classification)
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing)

    def batch_acc(self, logits: torch.Tensor, y: torch.Tensor) -> float:
        return (logits.argmax(1) == y).float().mean().item()

    def meter(self, num_classes: int) -> "_AccuracyMeter | _SegmentationMeter":
        return _AccuracyMeter()


class Segmentation(Classification):
    """Semantic segmentation: per-pixel cross-entropy ignoring ``IGNORE_INDEX``, mIoU (module docstring)."""

    name = "segmentation"
    metric = "miou"
    metric_label = "mIoU"
    default_resolution = 64  # the bundled dataset's (mnistseg)

    def loss(self, logits: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0,
             background_weight: float = 1.0) -> torch.Tensor:
        """Per-pixel cross-entropy; a background (class 0) pixel counts ``background_weight`` times
        as much as another pixel (the mean is over the weights: PyTorch's weighted mean)."""
        weight = None
        if background_weight != 1.0:
            weight = torch.ones(logits.shape[1], dtype=logits.dtype, device=logits.device)
            weight[0] = background_weight
        return F.cross_entropy(logits, y, weight=weight, ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing)

    def batch_acc(self, logits: torch.Tensor, y: torch.Tensor) -> float:
        valid = y != IGNORE_INDEX
        return ((logits.argmax(1) == y) & valid).sum().item() / max(1, int(valid.sum()))

    def meter(self, num_classes: int) -> "_SegmentationMeter":
        return _SegmentationMeter(num_classes)


class _AccuracyMeter:
    def __init__(self):
        self.correct = self.total = 0
        self.loss = 0.0

    def update(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.loss += F.cross_entropy(logits, y, reduction="sum").item()
        self.correct += (logits.argmax(1) == y).sum().item()
        self.total += y.numel()

    def result(self, split: str) -> dict[str, float]:
        return {f"{split}_acc": 100.0 * self.correct / self.total, f"{split}_loss": self.loss / self.total}


class _SegmentationMeter:
    def __init__(self, num_classes: int):
        self.confusion = ConfusionMatrix(num_classes)
        self.loss = 0.0

    def update(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        self.loss += F.cross_entropy(logits, y, ignore_index=IGNORE_INDEX, reduction="sum").item()
        self.confusion.update(logits.argmax(1), y)

    def result(self, split: str) -> dict[str, float]:
        n = max(1, int(self.confusion.counts.sum()))
        return {f"{split}_miou": self.confusion.miou(), f"{split}_pixel_acc": self.confusion.pixel_acc(),
                f"{split}_loss": self.loss / n}


TASK_OBJECTS = {"classification": Classification(), "segmentation": Segmentation()}


def task_of(name: str) -> Classification:
    if name not in TASK_OBJECTS:
        raise ConfigError("task", name, f"allowed: {', '.join(TASK_OBJECTS)}")
    return TASK_OBJECTS[name]
