"""ResNet (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016), its plain twins
and the paper's CIFAR-10 nets.

ImageNet nets, Table 1: a 7x7/2 conv and a 3x3/2 max-pool stem, four stages (conv2_x..conv5_x)
of BasicBlocks (two 3x3 convs; 18/34 layers) or Bottlenecks (1x1-3x3-1x1, expansion 4; 50/101/152
layers), global average pooling and a 1000-way fc. This is **ResNet v1.5**, the variant of
torchvision (and of its published weights): a downsampling Bottleneck puts its stride on the 3x3
conv, not on the first 1x1 as in the paper (v1, which is what Keras's `ResNet50` implements, with
biased convs). State_dict keys and shapes are torchvision's, so its checkpoints load with
`strict=True`.

Plain nets (`plain18`, `plain34`, Sec. 4.1, Fig. 3 middle / Fig. 4 / Table 2): the same stacks with
the shortcuts removed, for reproducing the degradation problem. They have the keys of resnet18/34
minus the `layerN.0.downsample` projections.

CIFAR nets (Sec. 4.2, Table 6): a 3x3 conv with 16 filters, three stages of n BasicBlocks at
32x32, 16x16 and 8x8 with 16/32/64 filters, global average pooling and a 10-way fc: 6n+2 layers
(n = 3, 5, 7, 9, 18 for ResNet-20/32/44/56/110). Shortcuts are identities; where the width
doubles, option A (the paper's default for CIFAR) subsamples by 2 and pads the new channels with
zeros (no parameters), option B uses a 1x1 projection conv + BN. Their `act` option replaces
every ReLU ('tanh', 'sigmoid', 'gelu', 'silu', 'leaky_relu'; the convs' He initialisation takes
that activation's gain); the modules keep torchvision's name `relu` whatever they compute.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from .base import Activation, Classifier, init_nonlinearity, make_activation, new_head
from .registry import ModelConfig, register_model, register_name_hint

# The shortcut options of Sec. 3.3: A zero-padding, B projection where the shape changes, none.
Shortcut = Literal["A", "B", "none"]

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class ShortcutA(nn.Module):
    """Option-A shortcut (Sec. 3.3): identity with stride-2 subsampling and zero-padded channels.

    The `out - in` new channels are split evenly before and after the input's channels, as in
    the widely used CIFAR ResNet code (akamaster/pytorch_resnet_cifar10), so that its checkpoints
    keep their meaning. No parameters: this is why option A is 2,752 parameters smaller than B
    on ResNet-20.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        extra = out_planes - in_planes
        self.pad = (extra // 2, extra - extra // 2)

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, *self.pad))


class BasicBlock(nn.Module):
    """Two 3x3 convs (Fig. 2 / Fig. 5 left); `shortcut=False` gives the plain-net block."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        shortcut: bool = True,
        act: Activation = "relu",
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = make_activation(act, inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.shortcut = shortcut

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand x4 (Fig. 5 right). Stride on the 3x3: ResNet v1.5."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        shortcut: bool = True,
        act: Activation = "relu",
    ) -> None:
        super().__init__()
        width = planes
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = make_activation(act, inplace=True)
        self.downsample = downsample
        self.shortcut = shortcut

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.shortcut:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)


Block = type[BasicBlock] | type[Bottleneck]


class ResNet(Classifier):
    """A residual (or plain) network.

    block, layers: the block type and the number of blocks per stage (the rows of Table 1).
    widths: the `planes` of each stage (64-128-256-512 on ImageNet, 16-32-64 on CIFAR).
    stem: 'imagenet' (7x7/2 conv + 3x3/2 max-pool) or 'cifar' (3x3/1 conv, no pool).
    shortcut: 'B' (1x1 projection where the shape changes: torchvision's ImageNet nets), 'A'
        (zero-padding, parameter-free: the paper's CIFAR nets) or 'none' (plain net).
    act: the activation in place of every ReLU (`models.base.ACTIVATIONS`).

    `forward_intermediates(x)` returns the stem's output and each stage's output (strides 2, 4, 8,
    16, 32 on ImageNet) with channel counts `feature_channels`, e.g. for a U-Net encoder.
    """

    def __init__(
        self,
        block: Block,
        layers: list[int],
        *,
        widths: tuple[int, ...] = (64, 128, 256, 512),
        stem: str = "imagenet",
        shortcut: Shortcut = "B",
        num_classes: int = 1000,
        in_chans: int = 3,
        act: Activation = "relu",
    ) -> None:
        super().__init__()
        if shortcut not in ("A", "B", "none"):
            raise ValueError(f"shortcut must be 'A', 'B' or 'none', got {shortcut!r}")
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
        self.shortcut_type = shortcut
        self.act_type = act
        self.inplanes = widths[0]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_chans, self.inplanes, 7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = conv3x3(in_chans, self.inplanes)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = make_activation(act, inplace=True)
        # The CIFAR nets have no pooling stem; Identity keeps forward() one code path.
        self.maxpool: nn.Module = (
            nn.MaxPool2d(3, stride=2, padding=1) if stem == "imagenet" else nn.Identity()
        )
        stem_stride = 4 if stem == "imagenet" else 1
        self.feature_channels = [widths[0]]
        self.feature_strides = [stem_stride // 2 if stem == "imagenet" else 1]
        stage_names = []
        for i, (planes, blocks) in enumerate(zip(widths, layers, strict=True)):
            stride = 1 if i == 0 else 2
            name = f"layer{i + 1}"
            setattr(self, name, self._make_layer(block, planes, blocks, stride))
            stage_names.append(name)
            self.feature_channels.append(planes * block.expansion)
            self.feature_strides.append(stem_stride * 2**i)
        self.stage_names = stage_names
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.num_features = widths[-1] * block.expansion
        self.num_classes = num_classes
        self.fc = new_head(self.num_features, num_classes)

        # torchvision's init (He et al. 2015 for convs), so random-init nets are comparable;
        # another `act` takes its own gain (tanh 5/3, sigmoid 1) instead of ReLU's sqrt(2).
        nonlinearity = init_nonlinearity(act)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity=nonlinearity)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        out_planes = planes * block.expansion
        downsample: nn.Module | None = None
        has_shortcut = self.shortcut_type != "none"
        if has_shortcut and (stride != 1 or self.inplanes != out_planes):
            if self.shortcut_type == "A":
                downsample = ShortcutA(self.inplanes, out_planes, stride)
            else:
                downsample = nn.Sequential(
                    conv1x1(self.inplanes, out_planes, stride), nn.BatchNorm2d(out_planes)
                )
        layers = [block(self.inplanes, planes, stride, downsample, has_shortcut, self.act_type)]
        self.inplanes = out_planes
        layers += [block(self.inplanes, planes, shortcut=has_shortcut, act=self.act_type)
                   for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _stem(self, x: Tensor) -> Tensor:
        return self.relu(self.bn1(self.conv1(x)))

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.maxpool(self._stem(x))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return x

    def forward_intermediates(self, x: Tensor) -> list[Tensor]:
        """The stem's output and every stage's output, at strides `feature_strides`."""
        x = self._stem(x)
        feats = [x]
        x = self.maxpool(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
            feats.append(x)
        return feats

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.avgpool(x).flatten(1)
        return x if pre_logits else self.fc(x)


# name: (block, blocks per stage) -- Table 1 of the paper.
IMAGENET_DEPTHS: dict[str, tuple[Block, list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet34": (BasicBlock, [3, 4, 6, 3]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
    "resnet101": (Bottleneck, [3, 4, 23, 3]),
    "resnet152": (Bottleneck, [3, 8, 36, 3]),
}
# name: n, the blocks per stage of the 6n+2-layer CIFAR nets (Sec. 4.2).
CIFAR_DEPTHS: dict[str, int] = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9,
                                "resnet110": 18}  # fmt: skip

_PAPER = "He et al., Deep Residual Learning for Image Recognition, CVPR 2016"


def _imagenet_builder(block: Block, layers: list[int], shortcut: str) -> Callable[..., ResNet]:
    def build(*, num_classes: int = 1000, in_chans: int = 3) -> ResNet:
        return ResNet(block, layers, shortcut=shortcut, num_classes=num_classes, in_chans=in_chans)

    return build


def _cifar_builder(n: int) -> Callable[..., ResNet]:
    def build(*, num_classes: int = 10, in_chans: int = 3, shortcut: Shortcut = "A",
              act: Activation = "relu") -> ResNet:
        return ResNet(
            BasicBlock, [n] * 3, widths=(16, 32, 64), stem="cifar", shortcut=shortcut,
            num_classes=num_classes, in_chans=in_chans, act=act,
        )  # fmt: skip

    return build


# The padded stride-2 convs and max-pool of ResNet shrink any side >= 1 to a map of at least 1x1,
# so every size runs; but below 32 pixels (total stride 32) the deep stages see padding rather
# than image, and in training the 100+ BatchNorms of resnet101/152 on 1x1 maps of a small batch
# blow gradients up to inf. 32 is the honest minimum for the ImageNet nets. The CIFAR nets
# (total stride 4) run at any size.
for _name, (_block, _layers) in IMAGENET_DEPTHS.items():
    register_model(
        ModelConfig(
            name=_name, family="resnet", paper=_PAPER, year=2016, min_size=32,
            notes="ResNet v1.5 (stride on the bottleneck's 3x3, as torchvision)",
        ),
        _imagenet_builder(_block, _layers, "B"),
    )  # fmt: skip

_PLAIN_NAMES = ("plain18", "plain34")
for _name, _src in zip(_PLAIN_NAMES, ("resnet18", "resnet34"), strict=True):
    register_model(
        ModelConfig(
            name=_name, family="resnet", paper=_PAPER, year=2016, min_size=32,
            notes=f"{_src} without shortcuts (Table 2, the degradation problem)",
        ),
        _imagenet_builder(*IMAGENET_DEPTHS[_src], "none"),
    )  # fmt: skip

for _name, _n in CIFAR_DEPTHS.items():
    register_model(
        ModelConfig(
            name=_name, family="resnet", paper=_PAPER, year=2016, input_size=(3, 32, 32),
            min_size=1, mean=CIFAR_MEAN, std=CIFAR_STD, num_classes=10,
            notes=(f"CIFAR ResNet, 6n+2 layers with n={_n}; shortcut='A' (default), 'B' or "
                   "'none' (plain)"),
            options=("shortcut", "act"),
        ),
        _cifar_builder(_n),
    )  # fmt: skip


def _plain_name_hint(name: str) -> str | None:
    """'plain56' / 'plain-56': the paper's plain CIFAR nets are the CIFAR ResNets with
    shortcut='none' (not registered twice); other depths: the plain nets there are."""
    match = re.fullmatch(r"plain[-_]?(\d+)", name)
    if match is None or f"plain{int(match.group(1))}" in _PLAIN_NAMES:
        return None  # plain18 spelt otherwise: the usual "did you mean"
    res = f"resnet{int(match.group(1))}"
    if res in CIFAR_DEPTHS:
        return (f"the plain {match.group(1)}-layer CIFAR net is {res} without shortcuts: "
                f"create_model('{res}', shortcut='none'), on the command line {res} "
                "--model-arg shortcut=none")
    cifar = "/".join(d.removeprefix("resnet") for d in CIFAR_DEPTHS)
    return (f"the plain nets are {', '.join(_PLAIN_NAMES)} (ImageNet) and resnet{cifar} with "
            "shortcut='none' (CIFAR, --model-arg shortcut=none)")


register_name_hint(_plain_name_hint)
