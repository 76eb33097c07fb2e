"""A classifier on several of a backbone's feature stages at once (Head2Toe-style taps).

A network's last feature vector is tuned to its source task; with images far from that task
(grey 28-pixel clothing against ImageNet photos) earlier, more generic stages can transfer
better. `StageTaps(backbone, stages, num_classes)` global-average-pools the output of each chosen
stage of `backbone.forward_intermediates` (numbered from 1 in its order: for ImageNet nets stage
1 at stride 2, ..., stage 5 at stride 32) and concatenates them into the pre-logits vector its
linear head reads (Evci et al., Head2Toe, ICML 2022, select features from every layer; two
stages are the cheap version). Transfer learning's features head uses it
(`TransferConfig.stages`; EfficientNet-Lite's default, `ModelConfig.transfer_stages`).

Measured (docs/transfer.md): a logistic regression on Lite0's stages 4 + 5 (112 + 320 pooled
channels) against its 1280-channel head features, hard Fashion-MNIST set, 3 draws: 0.645 against
0.609 at 10 images per class, 0.748 against 0.735 at 50.

The backbone's own classifier is removed; the layers between its last stage and that classifier
(for Lite0, the 1280-channel head conv) stay in the state dict, unused, so that the backbone
keeps its key names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import Tensor, nn

from .base import Classifier, new_head


def parse_stages(text: str | Sequence[int]) -> tuple[int, ...]:
    """'4,5' or [4, 5] -> (4, 5): distinct stage numbers from 1, in increasing order."""
    items = text.split(",") if isinstance(text, str) else list(text)
    try:
        stages = tuple(sorted({int(s) for s in items}))
    except ValueError:
        raise ValueError(f"stages must be numbers such as 4,5, not {text!r}") from None
    if not stages or stages[0] < 1:
        raise ValueError(f"stages are numbered from 1, not {text!r}")
    return stages


def check_stages(model: nn.Module, stages: str | Sequence[int]) -> tuple[int, ...]:
    """`parse_stages(stages)`, checked against the feature stages `model` has (ValueError)."""
    if not (hasattr(model, "forward_intermediates") and hasattr(model, "feature_channels")):
        raise ValueError(f"{type(model).__name__} has no feature stages to tap (models with "
                         "forward_intermediates: alexnet, vgg*, googlenet, resnet*, "
                         "densenet*, efficientnet_lite*)")  # fmt: skip
    stages = parse_stages(stages)
    n = len(model.feature_channels)
    if stages[-1] > n:
        raise ValueError(f"{type(model).__name__} has feature stages 1-{n} "
                         f"(strides {', '.join(map(str, model.feature_strides))}), "
                         f"not {stages[-1]}")  # fmt: skip
    return stages


class StageTaps(Classifier):
    """`backbone`'s chosen stages, each pooled to a vector, concatenated, then a linear head."""

    head_name = "fc"

    def __init__(self, backbone: nn.Module, stages: Sequence[int], num_classes: int) -> None:
        super().__init__()
        stages = check_stages(backbone, stages)
        backbone.reset_classifier(0)  # its own head is not used: no 1000-class layer in the bundle
        self.backbone = backbone
        self.stages = stages
        self.num_classes = num_classes
        self.in_chans = getattr(backbone, "in_chans", 3)
        self.num_features = sum(backbone.feature_channels[s - 1] for s in stages)
        self.fc = new_head(self.num_features, num_classes)
        cfg = getattr(backbone, "default_cfg", None)
        if cfg is not None:  # the input-size check of `forward`; the class count is this head's
            self.default_cfg = replace(cfg, num_classes=num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """Image -> the pooled, concatenated stage outputs (N, num_features)."""
        maps = self.backbone.forward_intermediates(x)
        return torch.cat([maps[s - 1].mean((2, 3)) for s in self.stages], 1)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        return x if pre_logits else self.fc(x)
