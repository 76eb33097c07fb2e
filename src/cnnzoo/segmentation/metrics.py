"""Segmentation metrics over a whole data set: per-class Dice and IoU, pixel accuracy, and the
instance count error for cells.

Everything is accumulated as sums over the whole validation set — one confusion matrix of pixel
counts (rows = true class, columns = predicted), as the classification task does — and the scores
are computed once from those sums. That is segmentation_models_pytorch's "micro" reduction; its
default "micro-imagewise"/per-image averaging weights a 20-pixel image like a 2-megapixel one and
punishes a single missed cell in an almost empty image, which is what users of it trip on.

Conventions (documented in docs/segmentation.md):
- Dice_k = 2 TP / (2 TP + FP + FN), IoU_k = TP / (TP + FP + FN) from the pixel counts of class k.
- A class that is absent from both the ground truth and the prediction scores 1 (nothing to find,
  nothing wrongly found); absent from the truth but predicted somewhere scores 0.
- `dice` and `iou` without a class name are the means over the foreground classes (1..K-1); the
  background class is reported per class only (it is large and easy, and would flatter the mean).
- Pixels labelled `IGNORE_INDEX` (255) count nowhere.
- Instance count error: per image, |number of predicted cells - number of true cells|, where the
  cells are the 4-connected components of the foreground (classes >= 1) with at least
  `min_area` pixels, in both the prediction and the truth; reported as the mean over images
  (`count_err`) and relative to the true count summed over images (`count_rel`). The
  accumulator sees what the loader gives: for validation images of mixed sizes, cut into tiles,
  "image" means tile (a cell on a tile's edge counts in both tiles, in truth and prediction).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from .losses import IGNORE_INDEX, crop_to

Reducer = Callable[[Tensor], Any]


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """(K, K) int64 pixel counts, rows = true class, columns = predicted; ignored pixels skipped."""
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    keep = target != IGNORE_INDEX
    k = num_classes
    idx = target[keep] * k + pred[keep].clamp(0, k - 1)
    return torch.bincount(idx, minlength=k * k).view(k, k)


def absent_classes(masks: Sequence[np.ndarray], num_classes: int) -> list[int]:
    """The classes on no pixel of `masks` (uint8 class indices; ignored pixels aside): they
    score 1 or 0 by the empty-class convention above, whatever the net has learnt."""
    seen = np.zeros(256, dtype=bool)
    for m in masks:
        seen |= np.bincount(np.asarray(m, dtype=np.uint8).ravel(), minlength=256) > 0
    return [c for c in range(num_classes) if not seen[c]]


def dice_iou(confusion: Tensor) -> tuple[Tensor, Tensor]:
    """Per-class Dice and IoU (float64) from a confusion matrix, with the empty-class convention
    above (absent from truth and prediction: 1)."""
    cm = confusion.double()
    tp = cm.diag()
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    union = tp + fp + fn
    empty = union == 0
    dice = torch.where(empty, torch.ones_like(tp), 2 * tp / (2 * tp + fp + fn).clamp(min=1))
    iou = torch.where(empty, torch.ones_like(tp), tp / union.clamp(min=1))
    return dice, iou


def count_cells(foreground: np.ndarray, min_area: int = 10) -> int:
    """Number of 4-connected foreground components with at least `min_area` pixels."""
    labels, n = ndimage.label(foreground)
    if n == 0:
        return 0
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    return int((areas >= min_area).sum())


class SegmentationAccumulator:
    """The engine's `MetricAccumulator` for segmentation: loss, confusion matrix and (optionally)
    cell counts, all summed over the epoch; `compute()` turns the sums into scores once."""

    def __init__(
        self,
        num_classes: int,
        class_names: Sequence[str] | None = None,
        *,
        count_instances: bool = False,
        min_area: int = 10,
    ) -> None:
        self.num_classes = num_classes
        self.class_names = list(class_names or [str(i) for i in range(num_classes)])
        self.count_instances = count_instances
        self.min_area = min_area
        self.loss_sum = torch.zeros((), dtype=torch.float64)
        self.images = torch.zeros((), dtype=torch.float64)
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self.count_abs_err = torch.zeros((), dtype=torch.float64)
        self.true_count = torch.zeros((), dtype=torch.float64)

    def __repr__(self) -> str:  # the sums so far, in a line
        counts = ", counting cells" if self.count_instances else ""
        return (f"SegmentationAccumulator({self.num_classes} classes, {int(self.images)} images, "
                f"{int(self.confusion.sum())} pixels{counts})")

    @torch.no_grad()
    def update(self, outputs: Any, targets: Tensor, loss: Tensor) -> None:
        logits = getattr(outputs, "logits", outputs).detach()
        mask = crop_to(targets, *logits.shape[-2:])
        if mask.dim() == 4:  # (mask, weight map) targets
            mask = mask[:, 0].round()
        self.loss_sum += loss.detach().double() * mask.shape[0]
        self.add_masks(logits.argmax(1), mask.long())

    def add_masks(self, pred: Tensor, truth: Tensor) -> None:
        """Add a batch of predicted and true class masks (N, H, W): what `update` adds for
        logits, and what `cnnzoo evaluate` adds for the masks of the overlap-tile prediction
        (no loss: the loss sum is left as it is)."""
        self.images += truth.shape[0]
        self.confusion += confusion_matrix(pred, truth, self.num_classes)
        if self.count_instances:
            self.add_counts(pred.numpy(), truth.numpy())

    def add_counts(self, pred: np.ndarray, truth: np.ndarray) -> None:
        """Add the count errors of a batch of predicted and true masks (N, H, W)."""
        for p, t in zip(pred, truth, strict=True):
            valid = t != IGNORE_INDEX
            n_true = count_cells((t > 0) & valid, self.min_area)
            n_pred = count_cells((p > 0) & valid, self.min_area)
            self.count_abs_err += abs(n_pred - n_true)
            self.true_count += n_true

    def reduce(self, fn: Reducer) -> None:
        for t in (self.loss_sum, self.images, self.confusion, self.count_abs_err, self.true_count):
            fn(t)

    def running(self) -> dict[str, float]:
        return {"loss": float(self.loss_sum) / max(float(self.images), 1.0)}

    def compute(self) -> dict[str, float]:
        n = max(float(self.images), 1.0)
        dice, iou = dice_iou(self.confusion)
        total = float(self.confusion.sum())
        fg = slice(1, None) if self.num_classes > 1 else slice(None)
        out = {
            "loss": float(self.loss_sum) / n,
            "pixel_acc": float(self.confusion.diag().sum()) / max(total, 1.0),
            "dice": float(dice[fg].mean()),
            "iou": float(iou[fg].mean()),
        }
        for name, d, j in zip(self.class_names, dice.tolist(), iou.tolist(), strict=True):
            out[f"dice_{name}"] = d
            out[f"iou_{name}"] = j
        if self.count_instances:
            out["count_err"] = float(self.count_abs_err) / n
            out["count_rel"] = float(self.count_abs_err) / max(float(self.true_count), 1.0)
        return out
