"""DenseNet (Huang et al., "Densely Connected Convolutional Networks", CVPR 2017).

Every layer of a dense block receives the concatenation of all earlier feature maps of the block
and adds `growth_rate` (k) new channels. The ImageNet nets (Table 1) are DenseNet-BC: each layer is
BN-ReLU-1x1 conv (4k channels, the "B"ottleneck) then BN-ReLU-3x3 conv (k channels); transition
layers between blocks (BN-ReLU-1x1 conv-2x2 avg-pool) halve the channels (compression 0.5, the
"C"). Stem: 7x7/2 conv, 3x3/2 max-pool; head: BN-ReLU, global average pool, fc.

  densenet121: k=32, blocks (6, 12, 24, 16), 64 stem channels
  densenet169: k=32, blocks (6, 12, 32, 32)
  densenet201: k=32, blocks (6, 12, 48, 32)
  densenet161: k=48, blocks (6, 12, 36, 24), 96 stem channels

State_dict keys and shapes are torchvision's current ones (`features.denseblock1.denselayer1.
norm1.weight`, `features.transition1.conv.weight`, `classifier.weight`, ...); torchvision's old
checkpoints spell them `norm.1`, which the weights loader renames.

`densenet_bc_100_k12` is the paper's CIFAR net (Sec. 3 "Implementation Details", Table 2):
L=100, k=12, three dense blocks of 16 bottleneck layers at 32x32, 16x16 and 8x8, a 3x3 stem conv
with 2k = 24 channels and no pooling, compression 0.5 -- 0.8M parameters.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Classifier, check_input_size, new_head
from .registry import ModelConfig, register_model
from .resnet import CIFAR_MEAN, CIFAR_STD


class DenseLayer(nn.Module):
    """BN-ReLU-Conv(1x1, bn_size*k)-BN-ReLU-Conv(3x3, k) on the concatenated earlier maps."""

    def __init__(self, num_input_features: int, growth_rate: int, bn_size: int, drop_rate: float):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(num_input_features, bn_size * growth_rate, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)
        self.drop_rate = drop_rate

    def forward(self, features: list[Tensor]) -> Tensor:
        x = self.conv1(self.relu1(self.norm1(torch.cat(features, 1))))
        x = self.conv2(self.relu2(self.norm2(x)))
        if self.drop_rate > 0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x


class DenseBlock(nn.ModuleDict):
    """`num_layers` dense layers; each sees the block input and every earlier layer's output."""

    def __init__(
        self, num_layers: int, num_input_features: int, bn_size: int, growth_rate: int,
        drop_rate: float,
    ) -> None:  # fmt: skip
        super().__init__()
        for i in range(num_layers):
            layer = DenseLayer(num_input_features + i * growth_rate, growth_rate, bn_size, drop_rate)
            self.add_module(f"denselayer{i + 1}", layer)

    def forward(self, x: Tensor) -> Tensor:
        # A list of maps, concatenated once per layer: the layers own their torch.cat.
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    """BN-ReLU-1x1 conv (compressing the channels)-2x2 average pool, between dense blocks."""

    def __init__(self, num_input_features: int, num_output_features: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(num_input_features)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(num_input_features, num_output_features, 1, bias=False)
        self.pool = nn.AvgPool2d(2, stride=2)


class DenseNet(Classifier):
    """DenseNet-BC.

    growth_rate: k, the channels each layer adds. block_config: layers per dense block.
    num_init_features: the stem conv's channels. bn_size: bottleneck width as a multiple of k.
    compression: the transition's channel factor (theta = 0.5). stem: 'imagenet' (7x7/2 conv,
    BN-ReLU, 3x3/2 max-pool) or 'cifar' (a single 3x3 conv). drop_rate: dropout after each
    layer (the paper uses 0.2 on CIFAR without augmentation).
    """

    head_name = "classifier"

    def __init__(
        self,
        growth_rate: int = 32,
        block_config: tuple[int, ...] = (6, 12, 24, 16),
        num_init_features: int = 64,
        *,
        bn_size: int = 4,
        compression: float = 0.5,
        stem: str = "imagenet",
        drop_rate: float = 0.0,
        num_classes: int = 1000,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        if stem == "imagenet":
            stem_layers = [
                ("conv0", nn.Conv2d(in_chans, num_init_features, 7, stride=2, padding=3, bias=False)),
                ("norm0", nn.BatchNorm2d(num_init_features)),
                ("relu0", nn.ReLU(inplace=True)),
                ("pool0", nn.MaxPool2d(3, stride=2, padding=1)),
            ]  # fmt: skip
        elif stem == "cifar":
            # The first dense layer starts with BN-ReLU, so the CIFAR stem is the bare conv.
            stem_layers = [("conv0", nn.Conv2d(in_chans, num_init_features, 3, padding=1, bias=False))]
        else:
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
        self.features = nn.Sequential(OrderedDict(stem_layers))
        # The last map at each stride (`forward_intermediates`): the stem's, each dense block's
        # but the last (its transition halves the size), and the final BN-ReLU's.
        self._taps = [stem_layers[-2][0] if stem == "imagenet" else "conv0"]
        self.feature_channels = [num_init_features]
        self.feature_strides = [2] if stem == "imagenet" else [1]
        stride = 4 if stem == "imagenet" else 1

        channels = num_init_features
        for i, num_layers in enumerate(block_config):
            block = DenseBlock(num_layers, channels, bn_size, growth_rate, drop_rate)
            self.features.add_module(f"denseblock{i + 1}", block)
            channels += num_layers * growth_rate
            if i != len(block_config) - 1:
                self._taps.append(f"denseblock{i + 1}")
                self.feature_channels.append(channels)
                self.feature_strides.append(stride)
                stride *= 2
                out = int(channels * compression)
                self.features.add_module(f"transition{i + 1}", Transition(channels, out))
                channels = out
        self.features.add_module("norm5", nn.BatchNorm2d(channels))
        self._taps.append("norm5")
        self.feature_channels.append(channels)
        self.feature_strides.append(stride)

        self.num_features = channels
        self.num_classes = num_classes
        self.classifier = new_head(channels, num_classes)

        # torchvision's init, so random-init nets are comparable.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        # norm5 is the last module of `features`; its ReLU belongs to the head, as in torchvision.
        return self.features(x)

    def forward_intermediates(self, x: Tensor) -> list[Tensor]:
        """The last map at each stride (`feature_strides`: 2, 4, 8, 16, 32 for the ImageNet
        nets; `feature_channels` 64, 256, 512, 1024, 1024 for densenet121): the stem's ReLU,
        dense blocks 1-3 and the final BN-ReLU, the stages a transfer head taps (`--stages`)."""
        check_input_size(self, x)
        feats: list[Tensor] = []
        for name, module in self.features.named_children():
            x = module(x)
            if name in self._taps:
                feats.append(F.relu(x) if name == "norm5" else x)
        return feats

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = F.adaptive_avg_pool2d(F.relu(x), 1).flatten(1)
        return x if pre_logits else self.classifier(x)


# name: (growth rate k, layers per dense block, stem channels) -- Table 1 of the paper.
IMAGENET_CONFIGS: dict[str, tuple[int, tuple[int, ...], int]] = {
    "densenet121": (32, (6, 12, 24, 16), 64),
    "densenet161": (48, (6, 12, 36, 24), 96),
    "densenet169": (32, (6, 12, 32, 32), 64),
    "densenet201": (32, (6, 12, 48, 32), 64),
}

_PAPER = "Huang et al., Densely Connected Convolutional Networks, CVPR 2017"


def _imagenet_builder(k: int, blocks: tuple[int, ...], init: int) -> Callable[..., DenseNet]:
    def build(*, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0) -> DenseNet:
        return DenseNet(
            k, blocks, init, drop_rate=drop_rate, num_classes=num_classes, in_chans=in_chans
        )

    return build


def densenet_bc_100_k12(
    *, num_classes: int = 10, in_chans: int = 3, drop_rate: float = 0.0
) -> DenseNet:
    """DenseNet-BC (L=100, k=12): (100 - 4) / 6 = 16 bottleneck layers per block, 3 blocks."""
    return DenseNet(
        12, (16, 16, 16), 24, stem="cifar", drop_rate=drop_rate, num_classes=num_classes,
        in_chans=in_chans,
    )  # fmt: skip


# Minimum sizes by experiment: the ImageNet stem divides by 4 with padding (ceil), then three
# unpadded 2x2 average pools need an 8x8 map, so 29 pixels is the smallest input (28 fails); the
# CIFAR net has two such pools and needs 4 pixels.
for _name, (_k, _blocks, _init) in IMAGENET_CONFIGS.items():
    register_model(
        ModelConfig(name=_name, family="densenet", paper=_PAPER, year=2017, min_size=29,
                    options=("drop_rate",)),
        _imagenet_builder(_k, _blocks, _init),
    )

register_model(
    ModelConfig(
        name="densenet_bc_100_k12", family="densenet", paper=_PAPER, year=2017,
        input_size=(3, 32, 32), min_size=4, mean=CIFAR_MEAN, std=CIFAR_STD, num_classes=10,
        notes="CIFAR DenseNet-BC, L=100, k=12, compression 0.5",
        options=("drop_rate",),
    ),
    densenet_bc_100_k12,
)  # fmt: skip
