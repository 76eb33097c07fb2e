"""What a training run optimises and measures: the `Task` protocol and the classification task.

The engine has one loop (`engine/loop.py`); a task only says how to turn the model's outputs and
the targets into a loss, how to accumulate metrics over a whole epoch, and which metric early
stopping / best-checkpoint selection watches. Segmentation (`cnnzoo.segmentation`) implements the
same protocol; transfer learning is a classification task with parameter groups and frozen layers.

Metrics are accumulated as tensors (sums and counts), never as per-step Python floats, so the hot
loop does not synchronise on `.item()` and a distributed run can all-reduce the sums before the
epoch's numbers are computed (a mean over the whole epoch, not a mean of batch means).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import TrainingError, UsageError
from ..models.base import AuxOutputs
from ..text import listed

# What a run's `class_weight` setting may be: 'none' (every image counts the same) or
# 'balanced' (scikit-learn's class_weight='balanced', `balanced_weights`).
CLASS_WEIGHTS = ("none", "balanced")

# Applied in place to every accumulated tensor before `compute()`; the distributed engine passes
# an all-reduce(SUM), so every rank computes the metrics of the whole (global) epoch.
Reducer = Callable[[Tensor], Any]


@runtime_checkable
class MetricAccumulator(Protocol):
    """Sums over one epoch. `update` is called once per batch inside `torch.no_grad()`."""

    def update(self, outputs: Any, targets: Tensor, loss: Tensor) -> None:
        """Add one batch. `loss` is the batch's mean loss (a 0-d tensor, not yet synced)."""

    def reduce(self, fn: Reducer) -> None:
        """Apply `fn` in place to every accumulated tensor (all-reduce across processes)."""

    def compute(self) -> dict[str, float]:
        """The epoch's metrics, e.g. {'loss': 0.31, 'acc': 0.91}. Always contains 'loss'."""

    def running(self) -> dict[str, float]:
        """Metrics so far, for the progress bar (may sync; called every few steps only)."""


@runtime_checkable
class Task(Protocol):
    """A training objective.

    name: 'classification', 'segmentation', ...
    monitor: the validation metric that picks the best epoch and drives early stopping.
    mode: 'min' if lower `monitor` is better (a loss), 'max' otherwise (accuracy, Dice).
    """

    name: str
    monitor: str
    mode: Literal["min", "max"]

    def loss(self, outputs: Any, targets: Tensor) -> Tensor:
        """Mean loss of a batch as a 0-d float32 tensor (outputs may be bf16 or `AuxOutputs`)."""

    def metrics(self) -> MetricAccumulator:
        """A fresh accumulator for one epoch (train or validation)."""


def main_output(outputs: Any) -> Tensor:
    """The logits a metric looks at: the main head of `AuxOutputs`, else the outputs themselves."""
    return outputs.logits if isinstance(outputs, AuxOutputs) else outputs


def is_better(value: float, best: float | None, mode: str) -> bool:
    """True when `value` improves on `best` under `mode` ('min' or 'max')."""
    if best is None:
        return True
    return value < best if mode == "min" else value > best


def balanced_weights(counts: Sequence[float] | Tensor) -> Tensor:
    """w_k = n / (K n_k) for the K classes with n_k > 0 of n samples (scikit-learn's
    class_weight='balanced'), 0 for a class with none: each class then weighs as much in the
    loss as any other, and the weights average to 1 over the samples (float64)."""
    counts = torch.as_tensor(counts, dtype=torch.float64)
    present = counts > 0
    weights = torch.zeros_like(counts)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


def check_class_weight(kind: str | None, option: str = "--class-weight") -> str:
    """`kind` ('none' for None) when it is one of `CLASS_WEIGHTS`, else one `UsageError` line."""
    kind = "none" if kind is None else kind
    if kind not in CLASS_WEIGHTS:
        raise UsageError(f"class_weight ({option}) must be one of {', '.join(CLASS_WEIGHTS)}, "
                         f"not {kind!r}")
    return kind


def check_label_smoothing(value: object) -> None:
    """One `UsageError` line unless `value` lies in [0, 1) (`--label-smoothing`'s range): torch
    refuses others with a RuntimeError at the first step, after the data and precision trial."""
    if not (isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1):
        raise UsageError(f"label_smoothing must lie in [0, 1), not {value!r}")


def class_weights(kind: str | None, labels: Tensor, num_classes: int) -> Tensor | None:
    """The loss weight of each class a `class_weight` setting asks for, from the training
    `labels`: None for 'none' (None), `balanced_weights` of their counts for 'balanced'."""
    if check_class_weight(kind) == "none":
        return None
    return balanced_weights(torch.bincount(torch.as_tensor(labels), minlength=num_classes))


def class_weights_line(kind: str, weights: Tensor, class_names: list[str]) -> str:
    """'class weights (balanced, on the loss): crack 9.33, good 0.28, ...' for a run's log."""
    pairs = [f"{listed(name)} {w:.3g}"
             for name, w in zip(class_names[:12], weights.tolist(), strict=False)]  # fmt: skip
    more = ", ..." if len(class_names) > 12 else ""
    return f"class weights ({kind}, on the loss): {', '.join(pairs)}{more}"


class ClassificationAccumulator:
    """Loss sum, top-1 / top-5 hits and the confusion matrix (rows = true, columns = predicted)."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.loss_sum = torch.zeros((), dtype=torch.float64)
        self.count = torch.zeros((), dtype=torch.float64)
        self.correct5 = torch.zeros((), dtype=torch.float64)
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
        self.ce_sum = torch.zeros((), dtype=torch.float64)  # (`plain_loss`)

    def __repr__(self) -> str:  # the sums so far, in a line (`Bundle.evaluate`'s, in a notebook)
        n = int(self.count)
        acc = f", acc {float(self.correct) / n:.3f}" if n else ""
        return f"ClassificationAccumulator({self.num_classes} classes, {n} images{acc})"

    @property
    def correct(self) -> Tensor:
        """Top-1 hits: the trace of the confusion matrix (not summed separately per step)."""
        return self.confusion.diagonal().sum()

    @torch.no_grad()
    def update(self, outputs: Any, targets: Tensor, loss: Tensor) -> None:
        # Called every training step: a few small ops, no sync (LeNet-5 steps take ~15 ms).
        logits = main_output(outputs).detach()
        n = targets.shape[0]
        self.loss_sum.add_(loss.detach(), alpha=n)
        self.ce_sum.add_(F.cross_entropy(logits.float(), targets, reduction="sum"))
        self.count += n
        # Ties (bf16 logits have 8 bits: two classes of an unsure net often score the same)
        # go to the lower class index, as argmax -- and so `cnnzoo predict`, a bundle's
        # prediction and numpy -- breaks them; topk's order among ties is unspecified, and took
        # the other class of the tie for the confusion matrix, and so the accuracy. The
        # target's rank under that order decides top-5, so a top-1 hit is a top-5 hit. (Ranked
        # by the classes behind the target: a NaN ranks first, as in argmax, not last.)
        true = logits.gather(1, targets[:, None])
        higher = torch.arange(logits.shape[1], device=logits.device) > targets[:, None]
        behind = (logits < true) | (logits == true) & higher
        rank = logits.shape[1] - 1 - behind.sum(1)
        self.correct5 += (rank < 5).sum()
        c = self.num_classes
        pred = logits.argmax(1)
        self.confusion += torch.bincount(targets * c + pred, minlength=c * c).view(c, c)

    def reduce(self, fn: Reducer) -> None:
        for t in (self.loss_sum, self.count, self.correct5, self.confusion, self.ce_sum):
            fn(t)

    def running(self) -> dict[str, float]:
        n = max(float(self.count), 1.0)
        return {"loss": float(self.loss_sum) / n, "acc": float(self.correct) / n}

    def compute(self) -> dict[str, float]:
        n = max(float(self.count), 1.0)
        return {
            "loss": float(self.loss_sum) / n,
            "acc": float(self.correct) / n,
            "top5": float(self.correct5) / n,
        }

    def plain_loss(self) -> float:
        """The mean plain cross-entropy, `cnnzoo evaluate`'s loss: `compute()`'s is the task's,
        with the run's label smoothing and class weights (the loss it trained and monitored)."""
        return float(self.ce_sum) / max(float(self.count), 1.0)

    def per_class(self) -> dict[str, list[float | None]]:
        """Per-class precision and recall from the confusion matrix: precision 0 for a class
        never predicted that has images (scikit-learn's zero_division=0: each was missed);
        None for one with neither, and recall None for a class with no image here: not
        measured (a 0 read as a class never found)."""
        cm = self.confusion.double()
        tp = cm.diag()
        predicted, actual = cm.sum(0), cm.sum(1)
        precision = (tp / predicted.clamp(min=1)).tolist()
        recall = (tp / actual.clamp(min=1)).tolist()
        predicted, actual = predicted.tolist(), actual.tolist()
        return {"precision": [p if m > 0 or n > 0 else None
                              for p, m, n in zip(precision, predicted, actual, strict=True)],
                "recall": [r if n > 0 else None for r, n in zip(recall, actual, strict=True)]}

    def balanced(self) -> dict[str, float]:
        """What accuracy hides on imbalanced data (300 good parts, 12 of each defect: a net
        that never finds a defect scores 0.91): 'balanced_acc', the mean recall over the
        classes with images here (scikit-learn's balanced_accuracy_score), and 'macro_f1', the
        mean F1 over the classes with images or predictions here (f1_score(average='macro'),
        0 for a class never found). NaN when nothing was counted."""
        cm = self.confusion.double()
        tp = cm.diag()
        predicted, actual = cm.sum(0), cm.sum(1)
        seen = actual > 0
        counted = seen | (predicted > 0)
        if not bool(seen.any()):
            return {"balanced_acc": math.nan, "macro_f1": math.nan}
        recall = tp[seen] / actual[seen]
        f1 = 2 * tp[counted] / (predicted[counted] + actual[counted])
        return {"balanced_acc": float(recall.mean()), "macro_f1": float(f1.mean())}

    def summary(self) -> dict[str, float]:
        """`compute()` and `balanced()`: the metrics of a final evaluation (the per-epoch logs
        keep `compute()`'s)."""
        return {**self.compute(), **self.balanced()}


class ClassificationTask:
    """Cross-entropy with label smoothing (Szegedy et al. 2016, "Rethinking the Inception
    Architecture", Sec. 7); for `AuxOutputs` (GoogLeNet, Szegedy et al. 2015, Sec. 5) the loss is
    main + aux_weight * sum(aux losses). Monitors validation loss (lower is better).

    class_weights: a weight per class (`class_weights`), as torch's CrossEntropyLoss(weight=)
    applies them: each image's loss times its class's weight, the batch's mean divided by the
    sum of those weights. None: every image counts the same.
    """

    name = "classification"

    def __init__(
        self,
        num_classes: int,
        *,
        label_smoothing: float = 0.0,
        class_names: list[str] | None = None,
        monitor: str = "loss",
        mode: Literal["min", "max"] = "min",
        class_weights: Sequence[float] | Tensor | None = None,
    ) -> None:
        check_label_smoothing(label_smoothing)
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.class_weights = None
        if class_weights is not None:
            self.class_weights = torch.as_tensor(class_weights, dtype=torch.float32)
            if self.class_weights.shape != (num_classes,):
                raise UsageError(f"class_weights must hold one weight per class "
                                 f"({num_classes}), not {tuple(self.class_weights.shape)}")
        self.class_names = class_names or [str(i) for i in range(num_classes)]
        self.monitor = monitor
        self.mode = mode

    def __repr__(self) -> str:  # a line, as SegmentationTask's, not `<... at 0x...>`
        weighted = ", class_weights" if self.class_weights is not None else ""
        return (f"ClassificationTask({self.num_classes} classes, label_smoothing="
                f"{self.label_smoothing:g}{weighted}, monitor={self.monitor!r})")

    def _ce(self, logits: Tensor, targets: Tensor) -> Tensor:
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            # Else "Target 8 is out of bounds", or a silently wrong confusion matrix.
            raise TrainingError(f"the model outputs {tuple(logits.shape)} for a "
                                f"{self.num_classes}-class task: build it with "
                                f"num_classes={self.num_classes}")  # fmt: skip
        # fp32 loss even under bf16 autocast: log-softmax in bf16 loses the small probabilities.
        return F.cross_entropy(logits.float(), targets, weight=self.class_weights,
                               label_smoothing=self.label_smoothing)

    def loss(self, outputs: Any, targets: Tensor) -> Tensor:
        if isinstance(outputs, AuxOutputs):
            total = self._ce(outputs.logits, targets)
            if outputs.aux:
                aux = sum(self._ce(a, targets) for a in outputs.aux)
                total = total + outputs.aux_weight * aux
            return total
        return self._ce(outputs, targets)

    def metrics(self) -> ClassificationAccumulator:
        return ClassificationAccumulator(self.num_classes)
