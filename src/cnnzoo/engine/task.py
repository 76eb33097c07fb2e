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

from collections.abc import Callable
from typing import Any, Literal, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import TrainingError
from ..models.base import AuxOutputs

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


class ClassificationAccumulator:
    """Loss sum, top-1 / top-5 hits and the confusion matrix (rows = true, columns = predicted)."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.loss_sum = torch.zeros((), dtype=torch.float64)
        self.count = torch.zeros((), dtype=torch.float64)
        self.correct5 = torch.zeros((), dtype=torch.float64)
        self.confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)

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
        for t in (self.loss_sum, self.count, self.correct5, self.confusion):
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


class ClassificationTask:
    """Cross-entropy with label smoothing (Szegedy et al. 2016, "Rethinking the Inception
    Architecture", Sec. 7); for `AuxOutputs` (GoogLeNet, Szegedy et al. 2015, Sec. 5) the loss is
    main + aux_weight * sum(aux losses). Monitors validation loss (lower is better).
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
    ) -> None:
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.class_names = class_names or [str(i) for i in range(num_classes)]
        self.monitor = monitor
        self.mode = mode

    def _ce(self, logits: Tensor, targets: Tensor) -> Tensor:
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            # Else "Target 8 is out of bounds", or a silently wrong confusion matrix.
            raise TrainingError(f"the model outputs {tuple(logits.shape)} for a "
                                f"{self.num_classes}-class task: build it with "
                                f"num_classes={self.num_classes}")  # fmt: skip
        # fp32 loss even under bf16 autocast: log-softmax in bf16 loses the small probabilities.
        return F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)

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
