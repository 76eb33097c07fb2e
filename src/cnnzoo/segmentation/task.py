"""`SegmentationTask`: the engine's `Task` protocol for per-pixel classification.

The engine's one training loop (`cnnzoo.engine.loop.Trainer`) calls `task.loss(outputs, targets)`
per batch and accumulates `task.metrics()` over the epoch; nothing else about segmentation needs
to live in the loop. Outputs may be smaller than the targets (valid-convolution U-Net): the loss
and the metrics centre-crop the targets to the output size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from torch import Tensor

from ..errors import UsageError
from .losses import LOSSES, segmentation_loss
from .metrics import SegmentationAccumulator


class SegmentationTask:
    """Loss: 'ce', 'dice', 'ce+dice' or 'weighted_ce' (U-Net's border-weighted CE; needs
    (mask, weight map) targets, see `segmentation.data`). Metrics over the whole epoch: per-class
    Dice/IoU, pixel accuracy, and the cell count error when `count_instances`.

    monitor: the validation metric that picks the best epoch (default foreground Dice).
    """

    name = "segmentation"

    def __init__(
        self,
        num_classes: int,
        *,
        loss: str = "ce+dice",
        class_names: Sequence[str] | None = None,
        count_instances: bool = False,
        min_area: int = 10,
        monitor: str = "dice",
        mode: Literal["min", "max"] = "max",
    ) -> None:
        if loss not in LOSSES:
            raise UsageError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
        self.num_classes = num_classes
        self.loss_name = loss
        self.class_names = list(class_names or [str(i) for i in range(num_classes)])
        self.count_instances = count_instances
        self.min_area = min_area
        self.monitor = monitor
        self.mode = mode

    def __repr__(self) -> str:
        return (f"SegmentationTask({self.num_classes} classes, loss={self.loss_name!r}, "
                f"monitor={self.monitor!r})")

    @property
    def line_quiet(self) -> frozenset[str]:
        """The metrics the engine's epoch line leaves out (metrics.jsonl, curves.png and the
        final line keep them): each class's Dice and IoU beyond two classes. Pascal VOC's 21
        made a line of about 90 numbers an epoch, and four classes one of 24; the foreground
        means `dice` and `iou` sum them up."""
        if self.num_classes <= 2:
            return frozenset()
        return frozenset(f"{m}_{name}" for name in self.class_names for m in ("dice", "iou"))

    @property
    def needs_weight_map(self) -> bool:
        return self.loss_name == "weighted_ce"

    def loss(self, outputs: Any, targets: Tensor) -> Tensor:
        logits = getattr(outputs, "logits", outputs)
        return segmentation_loss(logits, targets, self.loss_name)

    def metrics(self) -> SegmentationAccumulator:
        return SegmentationAccumulator(
            self.num_classes,
            self.class_names,
            count_instances=self.count_instances,
            min_area=self.min_area,
        )
