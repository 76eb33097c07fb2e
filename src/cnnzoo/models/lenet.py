"""LeNet-5: LeCun, Bottou, Bengio & Haffner, "Gradient-Based Learning Applied to Document
Recognition", Proc. IEEE 86(11), 1998. Section II.B and Figure 2; Table I is C3's connection table.

    input 32x32 - C1 conv 5x5, 6 maps (28x28) - S2 subsample 2x2 (14x14)
    - C3 conv 5x5, 16 maps (10x10) - S4 subsample 2x2 (5x5) - C5 conv 5x5, 120 maps (1x1)
    - F6 dense 84 - output (10 classes)

Two registered forms:

- `lenet5_classic`, the paper's net: scaled tanh `1.7159 tanh(2x/3)` (Appendix A); S2/S4 sum
  each 2x2 window, multiply by one trainable coefficient per map and add a trainable bias
  (Section II.B), then squash; C3 connects each of its 16 maps to a subset of S2's maps
  (Table I), so its parameter count is the paper's 1,516 and the whole net's per-layer counts are
  the paper's (C1 156, S2 12, C3 1,516, S4 32, C5 48,120, F6 10,164). One change: the output
  layer is a linear layer trained with cross-entropy instead of the paper's Euclidean RBF units
  with fixed 7x12 bitmap codes (850 parameters instead of none trainable).
- `lenet5`, the modern form most courses teach: ReLU, 2x2 max-pooling, C3 fully connected to
  S2. Same layer sizes, 61,706 parameters at 10 classes. It trains faster and better. Its `act`
  option swaps ReLU for 'tanh', 'sigmoid' (the squashing functions of the 1990s), 'gelu', 'silu'
  or 'leaky_relu', everything else kept, to see what ReLU alone changes.

MNIST/Fashion-MNIST images are 28x28; the paper pads them to 32x32 (Section III.A), which is also
the minimum size here (C5's 5x5 kernel needs S4's 5x5 maps). Larger inputs work: C5's maps are
averaged to 1x1 before F6 (a no-op at 32x32).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ModelOptionError
from .base import Activation, Classifier, make_activation, new_head
from .registry import ModelConfig, register_model

PAPER = "LeCun et al., Gradient-Based Learning Applied to Document Recognition"

# Table I: for each of C3's 16 maps, the S2 maps (0-5) it reads. Maps 0-5 take 3 contiguous
# inputs, 6-11 take 4 contiguous, 12-14 take 4 discontinuous, 15 takes all 6.
C3_TABLE: tuple[tuple[int, ...], ...] = (
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (0, 4, 5), (0, 1, 5),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (0, 3, 4, 5), (0, 1, 4, 5), (0, 1, 2, 5),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)

MIN_SIZE = 32
# Fashion-MNIST's grey-level statistics (training set, pixels scaled to [0, 1]).
GREY_MEAN = (0.2860,)
GREY_STD = (0.3530,)


class ScaledTanh(nn.Module):
    """The paper's squashing function f(a) = A tanh(S a), A = 1.7159, S = 2/3 (Appendix A)."""

    def forward(self, x: Tensor) -> Tensor:
        return 1.7159 * torch.tanh(x * (2.0 / 3.0))


class Subsampling(nn.Module):
    """S2/S4: sum of each 2x2 window times a trainable per-map coefficient, plus a per-map bias."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        summed = F.avg_pool2d(x, 2) * 4.0
        return summed * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class SparseConv2d(nn.Module):
    """A 5x5 conv whose output maps read only the input maps a connection table lists (Table I).

    Only the listed kernels are parameters (C3: 60 kernels + 16 biases = 1,516); they are
    scattered into a dense, mostly-zero weight so the forward pass is a single convolution.
    """

    def __init__(self, table: tuple[tuple[int, ...], ...], in_channels: int, kernel_size: int):
        super().__init__()
        pairs = [(o, i) for o, ins in enumerate(table) for i in ins]
        self.out_channels, self.in_channels, self.kernel_size = len(table), in_channels, kernel_size
        self.register_buffer("out_idx", torch.tensor([o for o, _ in pairs]), persistent=False)
        self.register_buffer("in_idx", torch.tensor([i for _, i in pairs]), persistent=False)
        fan_in = [len(table[o]) * kernel_size**2 for o, _ in pairs]
        # Appendix C: weights uniform in +-2.4 / fan-in.
        bound = torch.tensor(fan_in, dtype=torch.float32).reciprocal().mul(2.4).view(-1, 1, 1)
        self.weight = nn.Parameter((torch.rand(len(pairs), kernel_size, kernel_size) * 2 - 1) * bound)
        self.bias = nn.Parameter(torch.zeros(len(table)))

    def dense_weight(self) -> Tensor:
        k = self.kernel_size
        w = self.weight.new_zeros(self.out_channels, self.in_channels, k, k)
        return w.index_put((self.out_idx, self.in_idx), self.weight)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.dense_weight(), self.bias)

    def unused_macs(self, out: Tensor) -> int:
        """Multiply-adds the dense weight's zeros add to this output `out` (N, C, H, W): what a
        count of operations (`models.flops`) takes off, as the paper counts connections."""
        unused = self.out_channels * self.in_channels - len(self.out_idx)
        return out.shape[0] * out.shape[2] * out.shape[3] * unused * self.kernel_size**2


class LeNet5(Classifier):
    """LeNet-5 in its classic (`classic=True`) or modern form; see the module docstring.

    `forward_features` returns C5's 120 maps; `forward_head(x, pre_logits=True)` F6's 84 units.
    """

    def __init__(self, *, num_classes: int = 10, in_chans: int = 1, classic: bool = False,
                 act: Activation | None = None):
        super().__init__()
        if classic and act is not None:
            raise ModelOptionError("lenet5_classic keeps the paper's scaled tanh (Appendix A); "
                                   "act is an option of lenet5")
        self.classic = classic
        self.num_classes = num_classes
        self.num_features = 84
        self.c1 = nn.Conv2d(in_chans, 6, kernel_size=5)
        self.s2 = Subsampling(6) if classic else nn.MaxPool2d(2)
        self.c3: nn.Module = SparseConv2d(C3_TABLE, 6, 5) if classic else nn.Conv2d(6, 16, 5)
        self.s4 = Subsampling(16) if classic else nn.MaxPool2d(2)
        self.c5 = nn.Conv2d(16, 120, kernel_size=5)
        self.f6 = nn.Linear(120, 84)
        # One module for every layer (no parameters, so the state_dict keys do not change).
        self.act = ScaledTanh() if classic else make_activation(act or "relu")
        self.fc = new_head(84, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        x = self.s2(self.act(self.c1(x)))
        if self.classic:  # the paper squashes the subsampling output (Section II.B)
            x = self.act(x)
        x = self.s4(self.act(self.c3(x)))
        if self.classic:
            x = self.act(x)
        return self.act(self.c5(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.act(self.f6(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))
        return x if pre_logits else self.fc(x)


def _build_modern(*, num_classes: int, in_chans: int, act: Activation = "relu",
                  **kwargs: Any) -> LeNet5:
    return LeNet5(num_classes=num_classes, in_chans=in_chans, classic=False, act=act, **kwargs)


def _build_classic(*, num_classes: int, in_chans: int, **kwargs: Any) -> LeNet5:
    return LeNet5(num_classes=num_classes, in_chans=in_chans, classic=True, **kwargs)


for _name, _build, _options, _note in (
    ("lenet5", _build_modern, ("act",), "modern form: ReLU, max-pool, full C3"),
    ("lenet5_classic", _build_classic, (),
     "paper's form: scaled tanh, trainable subsampling, Table I C3"),
):
    register_model(
        ModelConfig(
            name=_name,
            family="lenet",
            paper=PAPER,
            year=1998,
            input_size=(1, 32, 32),
            min_size=MIN_SIZE,
            mean=GREY_MEAN,
            std=GREY_STD,
            num_classes=10,
            options=_options,
            notes=_note,
        ),
        _build,
    )
