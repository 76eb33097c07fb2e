"""AlexNet: Krizhevsky, Sutskever & Hinton, "ImageNet Classification with Deep Convolutional
Neural Networks", NeurIPS 2012 (Figure 2, Section 3.5), in the single-tower form of
Krizhevsky, "One weird trick for parallelizing convolutional neural networks", arXiv:1404.5997.

The 2012 net split its convs over two GPUs (48+48, 128+128, 192+192, 192+192, 128+128 kernels);
the "one weird trick" variant, which torchvision ships, is a single tower with 64, 192, 384, 256,
256 kernels and no local response normalisation:

    conv 11x11/4 64 - pool 3/2 - conv 5x5 192 - pool 3/2 - conv 3x3 384 - conv 3x3 256
    - conv 3x3 256 - pool 3/2 - [adaptive avg-pool 6x6] - dropout - fc 4096 - dropout - fc 4096
    - fc classes

All activations are ReLU (Section 3.1); dropout 0.5 precedes the first two dense layers
(Section 4.2). The `act` option replaces every ReLU ('tanh', 'sigmoid', 'gelu', 'silu',
'leaky_relu'), the comparison of the paper's Figure 1 (ReLU reached 25% training error six times
sooner than tanh). Names and shapes equal torchvision's (`features.N`, `classifier.{1,4,6}`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .base import (
    Activation,
    Classifier,
    check_input_size,
    make_activation,
    new_head,
    tapped_outputs,
)
from .registry import ModelConfig, register_model

PAPER = "Krizhevsky et al., ImageNet Classification with Deep Convolutional Neural Networks"

# The smallest input the three 3x3/2 pools survive (found by experiment, checked in the tests).
MIN_SIZE = 63


class AlexNet(Classifier):
    """Single-tower AlexNet; `forward_head(x, pre_logits=True)` returns the 4096-d fc7 vector."""

    head_name = "classifier.6"

    def __init__(
        self, *, num_classes: int = 1000, in_chans: int = 3, dropout: float = 0.5,
        act: Activation = "relu",
    ) -> None:
        super().__init__()
        make_activation(act)  # an unknown name fails here, before 60M parameters are drawn

        def a() -> nn.Module:  # a fresh module for every place torchvision has a ReLU
            return make_activation(act, inplace=True)

        self.num_classes = num_classes
        self.num_features = 4096
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 64, kernel_size=11, stride=4, padding=2),
            a(),
            nn.MaxPool2d(kernel_size=3, stride=2),  # overlapping pooling, Section 3.4
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            a(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            a(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            a(),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            a(),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        # The last map at each stride (`forward_intermediates`): conv1's and conv2's ReLUs
        # (strides 4 and 8), conv5's ReLU (16) and the last max-pool (32). conv1's stride 4 is
        # the first, so AlexNet has four stages where the others have a stride-2 one too.
        self._taps = frozenset((1, 4, 11, 12))
        self.feature_channels = [64, 192, 256, 256]
        self.feature_strides = [4, 8, 16, 32]
        # 6x6 is the map size at 224x224; the adaptive pool lets other input sizes reach fc6.
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(256 * 6 * 6, 4096),
            a(),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            a(),
            new_head(4096, num_classes),
        )

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)

    def forward_intermediates(self, x: Tensor) -> list[Tensor]:
        """The last map at each stride, 4 to 32 (`feature_strides`; `feature_channels` 64, 192,
        256, 256: conv1's, conv2's and conv5's ReLUs and the last max-pool, 55, 27, 13 and 6 px
        at 224), the stages a transfer head taps (`--stages`)."""
        check_input_size(self, x)
        return tapped_outputs(self.features, x, self._taps)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        x = self.classifier[:6](x)
        return x if pre_logits else self.classifier[6](x)


def _build(*, num_classes: int, in_chans: int, **kwargs: Any) -> AlexNet:
    return AlexNet(num_classes=num_classes, in_chans=in_chans, **kwargs)


register_model(
    ModelConfig(
        name="alexnet",
        family="alexnet",
        paper=PAPER,
        year=2012,
        min_size=MIN_SIZE,
        options=("dropout", "act"),
        notes="single-tower variant (Krizhevsky 2014, 'one weird trick'), as in torchvision",
    ),
    _build,
)
