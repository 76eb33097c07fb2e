"""GoogLeNet (Inception v1): Szegedy et al., "Going Deeper with Convolutions", CVPR 2015
(arXiv:1409.4842). The layers follow Table 1 of the paper, the auxiliary classifiers Section 5.

    conv 7x7/2 64 - maxpool 3/2 - conv 1x1 64 - conv 3x3 192 - maxpool 3/2
    - inception 3a, 3b - maxpool 3/2 - inception 4a..4e - maxpool - inception 5a, 5b
    - global avg-pool - dropout - linear

Each Inception module concatenates four branches: 1x1; 1x1 reduce -> 3x3; 1x1 reduce -> "5x5";
3x3 max-pool -> 1x1 projection. The two auxiliary classifiers sit on inception 4a and 4d
(Section 5: 5x5/3 average pool, 1x1 conv 128, fc 1024, dropout 0.7, linear); their losses are
added with weight 0.3 during training and they are discarded at inference.

Differences from the paper, all inherited from torchvision so that its checkpoints load with
`strict=True` and give the same outputs:
- every conv is conv (no bias) + BatchNorm (eps 1e-3) + ReLU, a later addition (the paper has
  biased convs and no BatchNorm);
- the "5x5" branch uses a 3x3 kernel (a long-standing quirk of the weights torchvision ported);
- pools use ceil_mode, the final pool before 5a is 2x2, and the auxiliary heads pool adaptively
  to 4x4 (the paper's 5x5/3 average pool gives 4x4 at 224 px), so any input >= 15 px works;
- `transform_input=True` re-normalises ImageNet-normalised input to (x - 0.5) / 0.5 inside the
  net, which torchvision's ImageNet weights expect (its factory turns it on when loading them).
  cnnzoo defaults to False: pass `transform_input=True` when loading torchvision's weights.

Two options, for the lesson of what the 1x1 reductions buy (Section 4: "1x1 convolutions are
used to compute reductions before the expensive 3x3 and 5x5 convolutions"); neither loads
torchvision's weights, whose shapes they change:
- `paper_5x5=True` gives the "5x5" branch the paper's 5x5 kernel;
- `reductions=False` drops the 1x1 reduce before the 3x3 and "5x5" convs, which then read every
  input channel. Unlike Figure 2(a)'s naive module the pool branch keeps its 1x1 projection, so
  each module's output, and the rest of the net, stay as they are: only the reductions differ.
  In inception 3a (28x28x192 input at 224 px), the paper's 5x5 branch with its 16-channel
  reduction costs 28*28*(192*16 + 25*16*32) = 12.4 M multiply-adds, without it
  28*28*25*192*32 = 120.4 M.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import CnnzooError
from .base import AuxOutputs, Classifier, check_input_size, new_head, placed_like
from .registry import IMAGENET_MEAN, IMAGENET_STD, ModelConfig, register_model

PAPER = "Szegedy et al., Going Deeper with Convolutions"

# Smallest input for which every (ceil-mode) pool still has an output (found by experiment,
# checked in the tests; torchvision's weights metadata says the same).
MIN_SIZE = 15

# Loss weight of each auxiliary classifier (Section 5).
AUX_WEIGHT = 0.3

# Table 1: name -> (in, #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj); 'pool' marks a
# max-pool between modules.
INCEPTION_TABLE: list[tuple[str, tuple[int, ...]] | str] = [
    ("inception3a", (192, 64, 96, 128, 16, 32, 32)),
    ("inception3b", (256, 128, 128, 192, 32, 96, 64)),
    "maxpool3",
    ("inception4a", (480, 192, 96, 208, 16, 48, 64)),
    ("inception4b", (512, 160, 112, 224, 24, 64, 64)),
    ("inception4c", (512, 128, 128, 256, 24, 64, 64)),
    ("inception4d", (512, 112, 144, 288, 32, 64, 64)),
    ("inception4e", (528, 256, 160, 320, 32, 128, 128)),
    "maxpool4",
    ("inception5a", (832, 256, 160, 320, 32, 128, 128)),
    ("inception5b", (832, 384, 192, 384, 48, 128, 128)),
]


class BasicConv2d(nn.Module):
    """conv (no bias) -> BatchNorm -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **kwargs: Any) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _reduced(in_channels: int, reduce: int | None, out: int, kernel: int) -> nn.Sequential:
    """[1x1 reduce ->] kxk conv: the 3x3 and "5x5" branches; reduce=None reads every input
    channel (the `reductions=False` lesson)."""
    if reduce is None:
        return nn.Sequential(BasicConv2d(in_channels, out, kernel_size=kernel,
                                         padding=kernel // 2))  # fmt: skip
    return nn.Sequential(
        BasicConv2d(in_channels, reduce, kernel_size=1),
        BasicConv2d(reduce, out, kernel_size=kernel, padding=kernel // 2),
    )


class Inception(nn.Module):
    """Figure 2(b): four parallel branches concatenated along channels. `reductions=False`
    drops the 1x1 reduce of the 3x3 and "5x5" branches; `kernel5` is the "5x5" branch's kernel
    (3 as in torchvision's weights, see the module docstring)."""

    def __init__(
        self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int,
        ch5x5: int, pool_proj: int, *, reductions: bool = True, kernel5: int = 3,
    ) -> None:
        super().__init__()
        self.branch1 = BasicConv2d(in_channels, ch1x1, kernel_size=1)
        self.branch2 = _reduced(in_channels, ch3x3red if reductions else None, ch3x3, 3)
        self.branch3 = _reduced(in_channels, ch5x5red if reductions else None, ch5x5, kernel5)
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
            BasicConv2d(in_channels, pool_proj, kernel_size=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionAux(nn.Module):
    """Auxiliary classifier (Section 5): pool to 4x4, 1x1 conv 128, fc 1024, dropout, linear."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.7) -> None:
        super().__init__()
        self.conv = BasicConv2d(in_channels, 128, kernel_size=1)
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(F.adaptive_avg_pool2d(x, (4, 4)))
        x = F.relu(self.fc1(torch.flatten(x, 1)), inplace=True)
        return self.fc2(self.dropout(x))


class GoogLeNet(Classifier):
    """Inception v1 with optional auxiliary classifiers.

    In training mode (and with `aux_logits=True`) `forward` returns
    `AuxOutputs(logits, aux2, aux1)` with `aux_weight=0.3` -- torchvision's order: aux2 sits on
    inception 4d, aux1 on 4a; in eval mode it returns the logits alone.
    `forward_features`/`forward_head` never compute the auxiliary heads.
    """

    def __init__(
        self,
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        aux_logits: bool = True,
        transform_input: bool = False,
        dropout: float = 0.2,
        dropout_aux: float = 0.7,
        reductions: bool = True,
        paper_5x5: bool = False,
    ) -> None:
        super().__init__()
        if transform_input and in_chans != 3:
            raise CnnzooError(
                f"transform_input=True re-normalises 3 RGB channels, got in_chans={in_chans}: "
                "use transform_input=False for other inputs."
            )
        self.num_classes = num_classes
        self.num_features = 1024
        # No head means no classes for the auxiliary heads to predict either.
        self.aux_logits = aux_logits and num_classes > 0
        self.transform_input = transform_input
        self.aux_weight = AUX_WEIGHT

        self.conv1 = BasicConv2d(in_chans, 64, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = BasicConv2d(64, 64, kernel_size=1)
        self.conv3 = BasicConv2d(64, 192, kernel_size=3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        for entry in INCEPTION_TABLE:
            if entry == "maxpool3":
                self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
            elif entry == "maxpool4":
                self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
            else:
                name, channels = entry
                self.add_module(name, Inception(*channels, reductions=reductions,
                                                kernel5=5 if paper_5x5 else 3))

        self.aux1: InceptionAux | None = None
        self.aux2: InceptionAux | None = None
        if self.aux_logits:
            self.aux1 = InceptionAux(512, num_classes, dropout=dropout_aux)
            self.aux2 = InceptionAux(528, num_classes, dropout=dropout_aux)

        # conv1, conv3, inception 3b, 4e and 5b: the last map at each stride
        # (`forward_intermediates`).
        self.feature_channels = [64, 192, 480, 832, 1024]
        self.feature_strides = [2, 4, 8, 16, 32]
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = new_head(1024, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's init_weights=True scheme: truncated normal, std 0.01.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _transform_input(self, x: Tensor) -> Tensor:
        # Undo ImageNet mean/std normalisation and apply (x - 0.5) / 0.5 instead, per channel.
        if not self.transform_input:
            return x
        mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return x * (std / 0.5) + (mean - 0.5) / 0.5

    def _stem_to_4a(self, x: Tensor) -> Tensor:
        x = self._transform_input(x)
        x = self.maxpool1(self.conv1(x))
        x = self.maxpool2(self.conv3(self.conv2(x)))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        return self.inception4a(x)

    def _4a_to_4d(self, x: Tensor) -> Tensor:
        return self.inception4d(self.inception4c(self.inception4b(x)))

    def _4d_to_end(self, x: Tensor) -> Tensor:
        x = self.maxpool4(self.inception4e(x))
        return self.inception5b(self.inception5a(x))

    def forward_features(self, x: Tensor) -> Tensor:
        return self._4d_to_end(self._4a_to_4d(self._stem_to_4a(x)))

    def forward_intermediates(self, x: Tensor) -> list[Tensor]:
        """The last map at each stride, 2 to 32 (`feature_channels`: conv1 64, conv3 192,
        inception 3b 480, 4e 832, 5b 1024), the stages a transfer head taps (`--stages`); the
        auxiliary heads are not run."""
        check_input_size(self, x)
        x = self.conv1(self._transform_input(x))
        feats = [x]
        x = self.conv3(self.conv2(self.maxpool1(x)))
        feats.append(x)
        x = self.inception3b(self.inception3a(self.maxpool2(x)))
        feats.append(x)
        x = self.maxpool3(x)
        for name in ("inception4a", "inception4b", "inception4c", "inception4d", "inception4e"):
            x = getattr(self, name)(x)
        feats.append(x)
        feats.append(self.inception5b(self.inception5a(self.maxpool4(x))))
        return feats

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.dropout(torch.flatten(self.avgpool(x), 1))
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor | AuxOutputs:  # type: ignore[override]
        check_input_size(self, x)
        if not (self.training and self.aux1 is not None and self.aux2 is not None):
            return self.forward_head(self.forward_features(x))
        x = self._stem_to_4a(x)
        aux1 = self.aux1(x)
        x = self._4a_to_4d(x)
        aux2 = self.aux2(x)
        logits = self.forward_head(self._4d_to_end(x))
        return AuxOutputs(logits, aux2, aux1, self.aux_weight)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        """New main head and, when present, new auxiliary output layers for `num_classes`.

        `num_classes=0` removes the head and the auxiliary classifiers.
        """
        self.fc = placed_like(new_head(self.num_features, num_classes), self)
        self._head_replaced(num_classes)
        if num_classes <= 0:
            self.aux1 = self.aux2 = None
            self.aux_logits = False
            return
        for aux in (self.aux1, self.aux2):
            if aux is not None:
                aux.fc2 = placed_like(nn.Linear(aux.fc1.out_features, num_classes), self)


def _build(*, num_classes: int, in_chans: int, **kwargs: Any) -> GoogLeNet:
    return GoogLeNet(num_classes=num_classes, in_chans=in_chans, **kwargs)


register_model(
    ModelConfig(
        name="googlenet",
        family="googlenet",
        paper=PAPER,
        year=2014,
        min_size=MIN_SIZE,
        options=("aux_logits", "transform_input", "dropout", "dropout_aux", "reductions",
                 "paper_5x5"),
        notes="Inception v1 with BatchNorm, 2 auxiliary classifiers (training only), Table 1",
    ),
    _build,
)
