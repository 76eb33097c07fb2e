"""U-Net: the contracting/expanding network for biomedical segmentation.

Ronneberger, Fischer & Brox, "U-Net: Convolutional Networks for Biomedical Image Segmentation",
MICCAI 2015, Fig. 1. The contracting path repeats two unpadded 3x3 convs + ReLU and a 2x2 max-pool
(stride 2), doubling the channels 64 -> 128 -> 256 -> 512 -> 1024; the expanding path repeats a 2x2
up-convolution that halves the channels, a concatenation with the cropped feature map of the same
level ("copy and crop"), and two 3x3 convs; a 1x1 conv maps the 64 channels to the classes.
With 1 input channel and 2 classes the paper's net has 31,030,658 parameters (31,030,593 with a
single output channel, the figure usually quoted).

`padding='valid'` is the paper: every 3x3 conv trims 2 pixels, a 572x572 tile gives a 388x388
map, and the input size must let every 2x2 pooling see an even size (`valid_input_size`,
`valid_output_size`; legal sizes are 188, 204, 220, ... = 16k + 188). Large images are segmented
tile by tile with mirrored borders (the paper's overlap-tile strategy, in `cnnzoo.segmentation`).
`padding='same'` pads each 3x3 conv by 1, so the output has the input's size; any size >= 16
works (odd sizes too: the up-sampled map is padded to its skip connection's size).

Batch normalisation after each conv is on by default: the paper has none (2015 predates its
spread to segmentation), but with it a net trained from scratch on a CPU for minutes converges
markedly faster and tolerates larger learning rates. `batchnorm=False` gives the paper's net.

The contracting path is a module with the same encoder protocol as the zoo's classifiers
(`forward_intermediates(x)` -> feature maps, `feature_channels`, `feature_strides`), and the
decoder is built from those numbers, so a pretrained classifier (e.g. `efficientnet_lite0`, whose
features are at strides 2..32) can replace it: `UNet(encoder=...)`, or by name,
`create_model("unet", encoder_name="resnet34", encoder_weights="imagenet")` (the words of
segmentation_models_pytorch) for resnet18/34/50, vgg16_bn and efficientnet_lite0/1/2.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputSizeError, ModelOptionError
from .base import check_input_size, is_whole, tapped_outputs
from .registry import ModelConfig, register_model

Padding = Literal["valid", "same"]
DEPTH = 4  # poolings in Fig. 1
SAME_MIN_SIZE = 2**DEPTH  # the bottom level must keep at least one pixel


class Encoder(Protocol):
    """What the decoder needs from a contracting path."""

    feature_channels: tuple[int, ...]
    feature_strides: tuple[int, ...]

    def forward_intermediates(self, x: Tensor) -> list[Tensor]: ...


def _trim(n: int, padding: Padding) -> int:
    """Size after two 3x3 convs."""
    return n if padding == "same" else n - 4


def _valid_chain(in_size: int, depth: int = DEPTH) -> int | None:
    """Output size of the valid-padding U-Net, or None if some pooling sees an odd/empty size."""
    n = in_size
    for _ in range(depth):
        n = _trim(n, "valid")
        if n <= 0 or n % 2:
            return None
        n //= 2
    n = _trim(n, "valid")
    for _ in range(depth):
        if n <= 0:
            return None
        n = _trim(2 * n, "valid")
    return n if n > 0 else None


def valid_output_size(in_size: int, depth: int = DEPTH) -> int:
    """Output height/width of the paper's U-Net (padding='valid') for an input of `in_size`.

    572 -> 388 (Fig. 1). For 4 levels the output is in_size - 184. Raises `InputSizeError` for
    sizes where a 2x2 pooling would see an odd size (the paper's tiling rule), naming the nearest
    legal sizes.
    """
    out = _valid_chain(in_size, depth)
    if out is None:
        lower = next((n for n in range(in_size, 0, -1) if _valid_chain(n, depth)), None)
        upper = valid_input_size(1 if lower is None else _valid_chain(lower, depth) + 1, depth)
        options = " or ".join(str(n) for n in (lower, upper) if n is not None)
        raise InputSizeError(
            f"unet with padding='valid' cannot take {in_size}x{in_size} pixels (every 2x2 pooling "
            f"needs an even size): use {options}, or padding='same' for any size >= "
            f"{2**depth}."
        )
    return out


def valid_input_size(out_size: int, depth: int = DEPTH) -> int:
    """Smallest legal input size whose valid-padding output is at least `out_size` pixels.

    For 4 levels the legal inputs are 188 + 16k with outputs 4 + 16k, so 388 -> 572.
    """
    n = max(out_size, 1)
    while True:
        out = _valid_chain(n, depth)
        if out is not None and out >= out_size:
            return n
        n += 1


def _double_conv(in_ch: int, out_ch: int, padding: Padding, batchnorm: bool) -> nn.Sequential:
    """Two 3x3 convs, each followed by (BatchNorm and) ReLU: one level of Fig. 1."""
    pad = 1 if padding == "same" else 0
    layers: list[nn.Module] = []
    for c_in in (in_ch, out_ch):
        # A conv followed by BN needs no bias: BN's shift replaces it.
        layers.append(nn.Conv2d(c_in, out_ch, 3, padding=pad, bias=not batchnorm))
        if batchnorm:
            layers.append(nn.BatchNorm2d(out_ch))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class UNetEncoder(nn.Module):
    """The contracting path: double convs at widths w, 2w, 4w, 8w, 16w with 2x2 max-pools between.

    `forward_intermediates` returns the output of each level (strides 1, 2, 4, 8, 16); the last is
    the bottom of the U.
    """

    def __init__(
        self, in_chans: int = 1, base_width: int = 64, *, padding: Padding = "valid",
        batchnorm: bool = True, depth: int = DEPTH, dropout: float = 0.0,
    ):
        super().__init__()
        widths = [base_width * 2**i for i in range(depth + 1)]
        chans = [in_chans, *widths]
        self.levels = nn.ModuleList(
            _double_conv(chans[i], chans[i + 1], padding, batchnorm) for i in range(depth + 1)
        )
        self.pool = nn.MaxPool2d(2)
        # The paper: "Drop-out layers at the end of the contracting path".
        self.dropout = nn.Dropout(dropout)
        self.feature_channels = tuple(widths)
        self.feature_strides = tuple(2**i for i in range(depth + 1))

    def forward_intermediates(self, x: Tensor) -> list[Tensor]:
        feats: list[Tensor] = []
        for i, level in enumerate(self.levels):
            if i:
                x = self.pool(x)
            x = level(x)
            feats.append(x)
        feats[-1] = self.dropout(feats[-1])
        return feats


def _center_crop(x: Tensor, h: int, w: int) -> Tensor:
    top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    return x[..., top : top + h, left : left + w]


def _fit(x: Tensor, h: int, w: int) -> Tensor:
    """Centre-crop or zero-pad `x` to h x w (same mode, odd sizes: off by one pixel at most)."""
    dh, dw = h - x.shape[-2], w - x.shape[-1]
    if dh < 0 or dw < 0:
        x = _center_crop(x, min(h, x.shape[-2]), min(w, x.shape[-1]))
        dh, dw = max(dh, 0), max(dw, 0)
    if dh or dw:
        x = F.pad(x, [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2])
    return x


def decoder_widths(decoder_channels: object, steps: int) -> list[int] | None:
    """None (the default decoder) or the `steps` up-step widths from a sequence of whole
    numbers >= 1 or, as `--model-arg` gives them, "a,b,c,d"."""
    if decoder_channels is None:
        return None
    given = decoder_channels
    bad = ModelOptionError(f"decoder_channels takes {steps} whole numbers >= 1, one per "
                           f"up-step (e.g. \"{','.join(['32'] * steps)}\"), not {given!r}")
    if isinstance(given, str):
        try:
            widths: list[object] = [int(v) for v in given.split(",")]
        except ValueError:
            raise bad from None
    elif isinstance(given, list | tuple):
        widths = list(given)
    else:
        raise bad
    if len(widths) != steps:
        raise ModelOptionError(f"decoder_channels needs {steps} widths, one per up-step, not "
                               f"{given!r}")  # fmt: skip
    if not all(is_whole(w) for w in widths):
        raise bad
    return [int(w) for w in widths]  # type: ignore[call-overload]


class UNetDecoder(nn.Module):
    """The expanding path, built from an encoder's `feature_channels` and `feature_strides`.

    Each step: 2x2 up-conv (stride 2) to the skip's width, concatenate with the skip ("copy and
    crop": the skip is centre-cropped in valid mode), double conv. If the encoder's shallowest
    feature is coarser than the input (a classifier's stride-2 map), further up-steps without a
    skip bring the map back to full resolution.
    """

    def __init__(
        self, feature_channels: tuple[int, ...], feature_strides: tuple[int, ...], *,
        padding: Padding = "valid", batchnorm: bool = True,
        decoder_channels: tuple[int, ...] | None = None,
    ):
        super().__init__()
        skips = list(feature_channels[:-1])[::-1]  # deepest skip first
        n_extra = int(round(math.log2(feature_strides[0])))
        widths = decoder_widths(decoder_channels, len(skips) + n_extra) \
            or [*skips, *[max(skips[-1] // 2, 16)] * n_extra]
        self.padding = padding
        self.ups = nn.ModuleList()
        self.blocks = nn.ModuleList()
        c = feature_channels[-1]
        for i, w in enumerate(widths):
            skip = skips[i] if i < len(skips) else 0
            self.ups.append(nn.ConvTranspose2d(c, w, 2, stride=2))
            self.blocks.append(_double_conv(w + skip, w, padding, batchnorm))
            c = w
        self.out_channels = c

    def forward(self, feats: list[Tensor]) -> Tensor:
        x = feats[-1]
        skips = feats[:-1][::-1]
        for i, (up, block) in enumerate(zip(self.ups, self.blocks, strict=True)):
            x = up(x)
            if i < len(skips):
                skip = skips[i]
                if self.padding == "valid":
                    skip = _center_crop(skip, x.shape[-2], x.shape[-1])
                else:
                    x = _fit(x, skip.shape[-2], skip.shape[-1])
                x = torch.cat([skip, x], dim=1)
            x = block(x)
        return x


class UNet(nn.Module):
    """U-Net (Ronneberger et al. 2015, Fig. 1); see the module docstring.

    in_chans: image channels (1 for the paper's grey microscopy).
    num_classes: output channels, one logit map per class (2 in the paper: cell / background).
    base_width: channels of the first level (64 in the paper; 16 or 32 train far faster on a CPU).
    padding: 'valid' (paper, output smaller than input) or 'same' (output size == input size).
    batchnorm: BatchNorm after every 3x3 conv (default True; the paper: False).
    dropout: before the expanding path (the paper uses dropout there; 0 by default).
    encoder: optional contracting path with `forward_intermediates`, `feature_channels`,
        `feature_strides` (e.g. a zoo classifier); replaces the paper's own.
    """

    def __init__(
        self, num_classes: int = 2, in_chans: int = 1, *, base_width: int = 64,
        padding: Padding = "valid", batchnorm: bool = True, dropout: float = 0.0,
        encoder: nn.Module | None = None, decoder_channels: tuple[int, ...] | None = None,
    ):
        super().__init__()
        if padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
        if encoder is not None and padding == "valid":
            # A classifier's convs are padded: only the 'same' decoder lines its maps up.
            raise ValueError("a custom encoder needs padding='same'")
        self.padding: Padding = padding
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.custom_encoder = encoder is not None
        self.encoder = encoder or UNetEncoder(
            in_chans, base_width, padding=padding, batchnorm=batchnorm, dropout=dropout
        )
        self.decoder = UNetDecoder(
            tuple(self.encoder.feature_channels), tuple(self.encoder.feature_strides),
            padding=padding, batchnorm=batchnorm, decoder_channels=decoder_channels,
        )
        self.head = nn.Conv2d(self.decoder.out_channels, num_classes, 1)
        self._default_cfg: ModelConfig | None = None
        self._init_weights(self.decoder, self.head, *([] if encoder else [self.encoder]))

    @staticmethod
    def _init_weights(*modules: nn.Module) -> None:
        # The paper: Gaussian with std sqrt(2/N), N = incoming nodes of one neuron (He et al.).
        # For a 2x2 stride-2 up-conv every output pixel sees one tap per input channel: N = in.
        for module in modules:
            for m in module.modules():
                if isinstance(m, nn.ConvTranspose2d):
                    nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / m.in_channels))
                elif isinstance(m, nn.Conv2d):
                    fan_in = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
                    nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_in))
                else:
                    continue
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def min_size(self) -> int:
        """Smallest input height/width: 188 for the paper's valid net, 16 in 'same' mode."""
        if self.padding == "same":
            return max(SAME_MIN_SIZE, max(self.encoder.feature_strides))
        return valid_input_size(1)

    @property
    def default_cfg(self) -> ModelConfig | None:
        return self._default_cfg

    @default_cfg.setter
    def default_cfg(self, cfg: ModelConfig | None) -> None:
        # create_model attaches the registered (valid-mode) config; keep min_size honest for the
        # padding this instance was built with.
        self._default_cfg = None if cfg is None else replace(cfg, min_size=self.min_size)

    def output_size(self, in_size: int) -> int:
        """Output height/width for an input of `in_size` (raises `InputSizeError` if illegal)."""
        if self.padding == "same":
            return in_size
        return valid_output_size(in_size)

    def _check(self, x: Tensor) -> None:
        # dtype, batch, channels as the classifiers say them (an encoder's own check named the
        # encoder, the others left torch's errors); the sizes below, with the padding's advice
        check_input_size(self, x, sizes=False)
        if torch.jit.is_tracing():  # as check_input_size: a trace keeps no Python branch
            return
        h, w = x.shape[-2:]
        if min(h, w) < self.min_size:
            raise InputSizeError(
                f"unet (padding={self.padding!r}) needs inputs of at least {self.min_size}x"
                f"{self.min_size} pixels, got {h}x{w}: resize or pad the images"
                + (", or use padding='same'." if self.padding == "valid" else ".")
            )
        if self.padding == "valid" and not self.custom_encoder:
            valid_output_size(h)
            valid_output_size(w)

    def forward(self, x: Tensor) -> Tensor:
        """Image (N, in_chans, H, W) -> logits (N, num_classes, H', W'); H' = H in 'same' mode."""
        self._check(x)
        y = self.decoder(self.encoder.forward_intermediates(x))
        if self.padding == "same" and y.shape[-2:] != x.shape[-2:]:
            y = _fit(y, x.shape[-2], x.shape[-1])  # a coarse encoder with odd input sizes
        return self.head(y)


ENCODERS = ("resnet18", "resnet34", "resnet50", "vgg16_bn", "efficientnet_lite0",
            "efficientnet_lite1", "efficientnet_lite2")
# segmentation_models_pytorch's decoder widths: a decoder as wide as ResNet-50's 2048-channel
# maps would hold most of the parameters and the compute; these keep it light.
ENCODER_DECODER_CHANNELS = (256, 128, 64, 32, 16)


class VGGEncoder(nn.Module):
    """A zoo VGG's `features` as a contracting path: the map before each 2x2 max-pool (strides
    1, 2, 4, 8, 16), like the paper's own encoder; the last pool and the dense layers go."""

    def __init__(self, features: nn.Sequential) -> None:
        super().__init__()
        pools = [i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d)]
        self.features = features[: pools[-1]]  # keeps torchvision's `features.N` indices
        self._taps = tuple(i - 1 for i in pools)
        self.feature_channels = tuple(
            [m for m in features[:i] if isinstance(m, nn.Conv2d)][-1].out_channels for i in pools
        )
        self.feature_strides = tuple(2**i for i in range(len(pools)))

    def forward_intermediates(self, x: Tensor) -> list[Tensor]:
        return tapped_outputs(self.features, x, self._taps)


def build_encoder(name: str, in_chans: int, weights: object = None) -> tuple[nn.Module, ModelConfig]:
    """A zoo classifier (with `weights`: 'imagenet' or a file) as a U-Net contracting path,
    without the parts the decoder never uses (pooling head, classifier, EfficientNet's 1280-wide
    head conv), so that every parameter trains; returns (encoder, the classifier's config)."""
    from .registry import create_model, get_config

    if name not in ENCODERS:
        raise ValueError(f"encoder_name must be one of {', '.join(ENCODERS)}, not {name!r}")
    cfg = get_config(name)
    # The full head is kept while loading, so that a checkpoint with its classifier fits.
    net = create_model(name, in_chans=in_chans, weights=weights)
    if name.startswith("vgg"):
        return VGGEncoder(net.features), cfg
    net.reset_classifier(0)
    for attr in ("_conv_head", "_bn1", "_dropout", "fc"):  # EfficientNet's head conv; ResNet's fc
        if hasattr(net, attr):
            setattr(net, attr, nn.Identity())
    return net, cfg


def unet(
    num_classes: int = 2, in_chans: int = 1, *, encoder_name: str | None = None,
    encoder_weights: object = None, **kwargs,
) -> UNet:
    """The paper's U-Net (Fig. 1); kwargs: base_width, padding, batchnorm, dropout, encoder.

    encoder_name: a zoo classifier as the contracting path (`ENCODERS`; padding 'same');
    encoder_weights: its pretrained weights ('imagenet' or a checkpoint file), as in
    segmentation_models_pytorch. The model's `encoder_cfg` then holds the classifier's config
    (its mean/std are the preprocessing its weights expect).
    """
    if encoder_name is None:
        if encoder_weights is not None:
            raise ValueError("encoder_weights needs encoder_name (e.g. 'resnet34')")
        return UNet(num_classes=num_classes, in_chans=in_chans, **kwargs)
    encoder, cfg = build_encoder(encoder_name, in_chans, encoder_weights)
    kwargs.setdefault("padding", "same")
    steps = len(encoder.feature_channels) - 1 + int(round(math.log2(encoder.feature_strides[0])))
    kwargs.setdefault("decoder_channels", ENCODER_DECODER_CHANNELS[:steps])
    model = UNet(num_classes=num_classes, in_chans=in_chans, encoder=encoder, **kwargs)
    model.encoder_cfg = cfg
    return model


register_model(
    ModelConfig(
        name="unet",
        family="unet",
        paper="Ronneberger et al., U-Net: Convolutional Networks for Biomedical Image "
        "Segmentation (MICCAI 2015)",
        year=2015,
        input_size=(1, 572, 572),
        min_size=valid_input_size(1),  # 188 (output 4x4); padding='same' accepts 16
        mean=(0.5,),
        std=(0.5,),
        num_classes=2,
        task="segmentation",
        notes="padding='valid' (572 -> 388) or 'same'; legal valid sizes 188 + 16k",
        options=("padding", "batchnorm", "dropout", "base_width", "decoder_channels",
                 "encoder_name", "encoder_weights"),
    ),
    unet,
    # As UNet.min_size: 'same' padding takes 16 px (32 with a stride-32 classifier encoder; the
    # VGG encoder's deepest map has stride 16).
    min_size=lambda *, padding="valid", encoder_name=None, **_: (
        valid_input_size(1) if padding == "valid"
        else 32 if encoder_name and not encoder_name.startswith("vgg") else SAME_MIN_SIZE),
)
