"""VGG: Simonyan & Zisserman, "Very Deep Convolutional Networks for Large-Scale Image Recognition",
ICLR 2015 (arXiv:1409.1556).

The nets follow Table 1 of the paper: configurations A (11 weight layers), B (13), D (16) and
E (19). Every conv is 3x3 / stride 1 / padding 1 followed by ReLU, five 2x2 max-pools split the
convs into five stages, and three fully connected layers (4096, 4096, classes) with dropout 0.5
finish the net. The `_bn` forms insert BatchNorm after each conv (not in the paper; the form
torchvision ships). Module names and shapes are torchvision's (`features.N`, `classifier.{0,3,6}`),
so its checkpoints load with `strict=True`. As in torchvision, an adaptive average pool to 7x7 sits
between the convs and the dense layers, so inputs other than 224x224 work.

Small VGGs for a CPU: `width_mult` scales every conv width (d2l.ai trains VGG-11 with a quarter of
the channels on Fashion-MNIST), `fc_dim` replaces the 4096-wide dense layers and `pool_size` the
7x7 pooled grid, e.g. `create_model('vgg11', width_mult=0.25, fc_dim=256, pool_size=1)`;
`stages` keeps only the first stages of the configuration (`stages=3` of VGG-13 at half width is
32-32-pool-64-64-pool-128-128-pool, the small VGG that suits 28-32 px images on a CPU).
`width_mult` may also hold one multiplier per stage (a sequence, or "0.375,0.5,0.5" from the
command line): the first stage runs at full resolution and costs most per channel.
`act` replaces every ReLU ('tanh', 'sigmoid', 'gelu', 'silu', 'leaky_relu'; the convs' He
initialisation takes that activation's gain), e.g. to see a sigmoid VGG-11 fail to train where
the ReLU one learns.
Dense layers keep torchvision's N(0, 0.01) at 4096 inputs or more (a full-size VGG's init is
torchvision's bit for bit); narrower ones start with a larger std (`dense_init_std`), without
which a small `fc_dim` sat at chance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ModelOptionError
from .base import (
    Activation,
    Classifier,
    check_input_size,
    init_nonlinearity,
    make_activation,
    new_head,
    tapped_outputs,
)
from .registry import ModelConfig, register_model

PAPER = "Simonyan & Zisserman, Very Deep Convolutional Networks for Large-Scale Image Recognition"

# Table 1 of the paper: output channels of each 3x3 conv, 'M' = 2x2 max-pool closing a stage.
VGG_CONFIGS: dict[str, list[int | str]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
          512, 512, 512, 512, "M"],
}

# Registered depths: name -> configuration letter. A new depth is one line here.
VGG_DEPTHS: dict[str, str] = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}

# Five 2x2 pools halve the input five times; 32 is the smallest size that leaves a 1x1 map
# (31 -> 15 -> 7 -> 3 -> 1 -> 0 fails), checked in the tests. With `stages=s` the net has s pools
# and needs 2**s pixels (`min_size_for`): 8 px for the three-stage Fashion-MNIST VGG.
MIN_SIZE = 32


# torchvision draws VGG's dense weights from N(0, 0.01), a std sized for 4096 inputs: each unit
# of a 4096-input layer starts with 4096 * 0.01**2 = 0.41 times its inputs' mean square. With a
# narrow `fc_dim` the same std keeps 0.026 of it at 256 inputs and 0.0064 at 64, per layer, so
# three dense layers passed on 1e-5 of the signal or less and a small VGG sat at chance
# (vgg11_bn width_mult=0.25 pool_size=1 on digits, 6 epochs: fc_dim 64 0.11, 256 0.21, 1024
# 0.98). A layer with fewer inputs gets the std that keeps the 4096-input layer's 0.41: the same
# runs then reach 0.99 and 1.00. He's sqrt(2 / fan_in) (a gain of 2, five times more) diverged
# at fc_dim 64 (0.10) and reached 0.95 at 256. A layer with 4096 inputs or more (every dense
# layer of a full-size VGG: 25088, 4096, 4096) keeps 0.01, so that init stays torchvision's bit
# for bit. Only the std changes, not the number of draws: a seed draws the same numbers.
TORCHVISION_DENSE_STD = 0.01
TORCHVISION_DENSE_FAN_IN = 4096


def dense_init_std(fan_in: int) -> float:
    """The std of a VGG dense layer's normal init: torchvision's 0.01 for 4096 inputs or more,
    raised for fewer so each output starts with the variance a 4096-input layer gives it."""
    return TORCHVISION_DENSE_STD * max(1.0, (TORCHVISION_DENSE_FAN_IN / fan_in) ** 0.5)


def min_size_for(*, stages: int | None = None, **kwargs: Any) -> int:
    """The smallest input of a VGG built with `stages` (None: all five) -- one pixel per 2x2 pool
    halving, 2**stages."""
    del kwargs
    if stages is None:
        return MIN_SIZE
    if not (isinstance(stages, int) and 1 <= stages <= 5):
        # Checked here too: data are sized from this before the net is built (stages=9 would
        # have asked for 512-px images first).
        raise ModelOptionError(f"vgg: stages must lie in 1..5, not {stages!r}")
    return 2**stages


def stage_multipliers(width_mult: float | Sequence[float] | str, stages: int) -> list[float]:
    """One width multiplier per stage from a number, a sequence or "a,b,c" (one per stage)."""
    if isinstance(width_mult, str):
        try:
            width_mult = [float(v) for v in width_mult.split(",")]
        except ValueError:
            raise ValueError(f"width_mult must be a number or one number per stage separated by "
                             f"commas, not {width_mult!r}") from None
    if isinstance(width_mult, int | float):
        width_mult = [width_mult]
    mults = [float(v) for v in width_mult]
    if len(mults) == 1:  # one number: every stage
        mults = mults * stages
    if len(mults) != stages:
        raise ValueError(f"width_mult needs {stages} multipliers, one per stage (or one for "
                         f"all), not {len(mults)}: {mults}")
    if min(mults) <= 0:
        raise ValueError(f"width_mult must be positive, not {min(mults):g}")
    return mults


def make_layers(
    config: list[int | str], *, in_chans: int = 3, batch_norm: bool = False,
    width_mult: float | Sequence[float] | str = 1.0, act: Activation = "relu",
) -> nn.Sequential:
    """Turn a Table-1 channel list into the `features` stack (conv[-bn]-relu ..., max-pool)."""
    layers: list[nn.Module] = []
    channels = in_chans
    mults = stage_multipliers(width_mult, config.count("M"))
    stage = 0
    for item in config:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            stage += 1
            continue
        out = max(1, round(int(item) * mults[stage]))
        layers.append(nn.Conv2d(channels, out, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out))
        layers.append(make_activation(act, inplace=True))
        channels = out
    return nn.Sequential(*layers)


class VGG(Classifier):
    """A VGG network built from a Table-1 channel list (see `VGG_CONFIGS`).

    `forward_head(x, pre_logits=True)` returns the output of the second dense layer
    (`fc_dim`-wide, 4096 in the paper), the "fc7" features used for transfer learning.
    """

    head_name = "classifier.6"

    def __init__(
        self,
        config: list[int | str],
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        batch_norm: bool = False,
        width_mult: float | Sequence[float] | str = 1.0,
        fc_dim: int = 4096,
        pool_size: int = 7,
        dropout: float = 0.5,
        act: Activation = "relu",
    ) -> None:
        super().__init__()
        self.config = list(config)
        self.features = make_layers(
            config, in_chans=in_chans, batch_norm=batch_norm, width_mult=width_mult, act=act
        )
        last = [m for m in self.features if isinstance(m, nn.Conv2d)][-1].out_channels
        # Each stage's output after its max-pool (`forward_intermediates`, `--stages` taps).
        pools = [i for i, m in enumerate(self.features) if isinstance(m, nn.MaxPool2d)]
        self._taps = frozenset(pools)
        self.feature_channels = [
            [m for m in self.features[:i] if isinstance(m, nn.Conv2d)][-1].out_channels
            for i in pools
        ]
        self.feature_strides = [2 ** (s + 1) for s in range(len(pools))]
        self.avgpool = nn.AdaptiveAvgPool2d((pool_size, pool_size))
        self.num_features = fc_dim
        self.num_classes = num_classes
        self.classifier = nn.Sequential(
            nn.Linear(last * pool_size * pool_size, fc_dim),
            make_activation(act, inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(fc_dim, fc_dim),
            make_activation(act, inplace=True),
            nn.Dropout(p=dropout),
            new_head(fc_dim, num_classes),
        )
        self._init_weights(act)

    def _init_weights(self, act: str = "relu") -> None:
        # torchvision's scheme (He et al. 2015 for convs); the paper's pre-training of net A is
        # what this replaced, see Section 3.1's note on Glorot initialisation. Another `act`
        # takes its own gain (tanh 5/3, sigmoid 1) instead of ReLU's sqrt(2). Dense layers with
        # fewer than 4096 inputs (a narrow fc_dim) get a larger std, see `dense_init_std`.
        nonlinearity = init_nonlinearity(act)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity=nonlinearity)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, dense_init_std(m.in_features))
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(x)

    def forward_intermediates(self, x: Tensor) -> list[Tensor]:
        """Each stage's output, after its 2x2 max-pool: strides 2, 4, 8, 16, 32
        (`feature_strides`; `feature_channels` 64, 128, 256, 512, 512 at full width), the
        stages a transfer head taps (`--stages`). The U-Net encoder takes the maps before the
        pools instead (`models.unet.VGGEncoder`), as the paper's contracting path does."""
        check_input_size(self, x)
        return tapped_outputs(self.features, x, self._taps)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = torch.flatten(self.avgpool(x), 1)
        x = self.classifier[:6](x)
        return x if pre_logits else self.classifier[6](x)


@dataclass(frozen=True)
class VGGConvLayer:
    """One 3x3 conv of a VGG: its state_dict prefixes and its place in the stage structure.

    `stage` counts max-pools before the conv (0..4); `index` is the position inside the stage.
    Two VGGs of different depth share (stage, index) for the layers the paper copies when it
    grows net A into deeper nets (Section 3.1: the first four convs and the three dense layers).
    """

    stage: int
    index: int
    conv: str  # e.g. 'features.0'
    bn: str | None  # e.g. 'features.1' in the _bn forms, else None


def vgg_conv_layers(model: VGG) -> list[VGGConvLayer]:
    """The conv layers of a VGG in order, with their (stage, index-in-stage) and key prefixes."""
    layers: list[VGGConvLayer] = []
    stage = index = 0
    modules = list(model.features)
    for i, m in enumerate(modules):
        if isinstance(m, nn.MaxPool2d):
            stage, index = stage + 1, 0
        elif isinstance(m, nn.Conv2d):
            has_bn = i + 1 < len(modules) and isinstance(modules[i + 1], nn.BatchNorm2d)
            layers.append(
                VGGConvLayer(stage, index, f"features.{i}", f"features.{i + 1}" if has_bn else None)
            )
            index += 1
    return layers


# The three dense layers ("fc6", "fc7", "fc8") as state_dict prefixes.
VGG_DENSE_LAYERS = ("classifier.0", "classifier.3", "classifier.6")


def first_stages(config: list[int | str], stages: int) -> list[int | str]:
    """The first `stages` stages (up to and including their max-pools) of a Table-1 list: a
    shallow VGG for small images, e.g. 28-px Fashion-MNIST after three pools is 3x3."""
    pools = [i for i, item in enumerate(config) if item == "M"]
    if not 1 <= stages <= len(pools):
        raise ValueError(f"stages must lie in 1..{len(pools)}, not {stages}")
    return list(config[: pools[stages - 1] + 1])


def _builder(letter: str, batch_norm: bool):
    def build(*, num_classes: int, in_chans: int, stages: int | None = None,
              **kwargs: Any) -> VGG:
        return VGG(
            VGG_CONFIGS[letter] if stages is None else first_stages(VGG_CONFIGS[letter], stages),
            num_classes=num_classes,
            in_chans=in_chans,
            batch_norm=batch_norm,
            **kwargs,
        )

    return build


for _name, _letter in VGG_DEPTHS.items():
    for _bn in (False, True):
        _depth = sum(isinstance(c, int) for c in VGG_CONFIGS[_letter]) + 3
        register_model(
            ModelConfig(
                name=_name + ("_bn" if _bn else ""),
                family="vgg",
                paper=PAPER,
                year=2014,
                min_size=MIN_SIZE,
                notes=f"configuration {_letter} ({_depth} weight layers), Table 1"
                + (", BatchNorm after each conv" if _bn else ""),
                extra={"config": _letter},
                options=("stages", "width_mult", "fc_dim", "pool_size", "dropout", "act"),
            ),
            _builder(_letter, _bn),
            min_size=min_size_for,
        )
