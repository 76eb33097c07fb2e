"""The lecture's small residual network: one skip connection around two convolutions.

    input (C x H x W)
    -> conv 32 3x3 'same' + ReLU -> conv 32 3x3 'same'
    -> add the input (through a 1x1 projection when C != 32) -> ReLU
    -> 2x2 max-pool -> flatten -> dense `hidden` + ReLU -> dense `num_classes`

The lecture adds the block's input to the output of the second conv; that sum needs equal shapes,
and the lecture's input tensor already has 32 channels. An image has 1 or 3, so the skip path
carries He et al.'s (2016, Eq. 2) projection shortcut `W_s x`, a 1x1 conv to 32 channels, exactly
when the channel counts differ (in_chans=32 gives the lecture's pure identity shortcut). The
residual branch stays the lecture's two convolutions; nothing is added in front of the block.
No batch norm, as in the lecture.

The dense layers see the flattened pooled map, as Keras's Flatten + Dense do, so a model is built
for one input size (`img_size`, default 28 for Fashion-MNIST/MNIST) and rejects others with a
one-line error. Any even size >= 2 can be built.

`act` replaces every ReLU ('tanh', 'sigmoid', 'gelu', 'silu', 'leaky_relu'). `shortcut` is spelt
as the CIFAR ResNets': 'B' (the default above: projection where the channels change, else
identity; the paper's option B), 'A' (the input's channels zero-padded to `width`, no
parameters) or 'none' (no skip connection: the same two convs as a plain net, to see what the
skip adds).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import InputSizeError, ModelOptionError
from .base import Activation, Classifier, check_input_size, make_activation, new_head
from .registry import ModelConfig, register_model
from .resnet import Shortcut, ShortcutA

FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)


class ResidualNet(Classifier):
    """Two 3x3 convs with an identity (or projection) skip, max-pool, two dense layers."""

    head_name = "fc2"

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_chans: int = 1,
        img_size: int = 28,
        width: int = 32,
        hidden: int = 128,
        act: Activation = "relu",
        shortcut: Shortcut = "B",
    ) -> None:
        super().__init__()
        if img_size < 2:
            raise InputSizeError(f"residual_net needs img_size >= 2 (the 2x2 pool), got {img_size}")
        self.img_size = img_size
        self.conv1 = nn.Conv2d(in_chans, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        # Identity when the input already has `width` channels (the lecture's case); None: no
        # skip at all (no `shortcut.weight` in the state_dict then, as option A has none).
        self.shortcut: nn.Module | None
        if shortcut == "none":
            self.shortcut = None
        elif in_chans == width:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            if in_chans > width:
                raise ModelOptionError(f"residual_net: shortcut='A' zero-pads the {in_chans} input "
                                       f"channels to {width}, so it needs at most {width}; use "
                                       "shortcut='B' (a 1x1 projection)")  # fmt: skip
            self.shortcut = ShortcutA(in_chans, width, stride=1)
        elif shortcut == "B":
            self.shortcut = nn.Conv2d(in_chans, width, 1, bias=False)
        else:
            raise ModelOptionError(f"residual_net: shortcut must be one of A, B, none, not "
                                   f"{shortcut!r}")  # fmt: skip
        self.act = make_activation(act, inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(width * (img_size // 2) ** 2, hidden)
        self.num_features = hidden
        self.num_classes = num_classes
        self.fc2 = new_head(hidden, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        out = self.conv2(self.act(self.conv1(x)))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return self.pool(self.act(out))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.act(self.fc1(x.flatten(1)))
        return x if pre_logits else self.fc2(x)

    def forward(self, x: Tensor) -> Tensor:
        check_input_size(self, x)
        h, w = x.shape[-2:]
        # Not while tracing, as check_input_size: a trace keeps no Python branch.
        if not torch.jit.is_tracing() and (h, w) != (self.img_size, self.img_size):
            rebuild = f" or build it with create_model('residual_net', img_size={h})" if h == w else ""
            raise InputSizeError(
                f"residual_net was built for {self.img_size}x{self.img_size} inputs, got "
                f"{h}x{w}: resize the images{rebuild}."
            )
        return self.forward_head(self.forward_features(x))


def residual_net(
    *, num_classes: int = 10, in_chans: int = 1, img_size: int = 28, hidden: int = 128,
    act: Activation = "relu", shortcut: Shortcut = "B",
) -> ResidualNet:
    return ResidualNet(num_classes=num_classes, in_chans=in_chans, img_size=img_size,
                       hidden=hidden, act=act, shortcut=shortcut)  # fmt: skip


register_model(
    ModelConfig(
        name="residual_net", family="residual_net", year=2016, input_size=(1, 28, 28), min_size=2,
        paper="lecture example of a skip connection (He et al., CVPR 2016)",
        mean=FASHION_MNIST_MEAN, std=FASHION_MNIST_STD, num_classes=10,
        notes="fixed input size: create_model('residual_net', img_size=...) for others",
        options=("img_size", "hidden", "act", "shortcut"),
    ),
    residual_net,
    min_size=lambda *, img_size=28, **_: img_size,  # its dense layer takes one size only
)  # fmt: skip
