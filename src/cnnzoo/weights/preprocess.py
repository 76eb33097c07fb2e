"""The input pipeline a set of weights was trained with, applied to PIL images or uint8 tensors.

ImageNet classifiers are evaluated with "resize the shorter side to 256, centre-crop 224,
normalise" (torchvision's `ImageClassification` transform, Keras's and timm's crop_pct 0.875).
Image decoding and the resize/crop helpers are `cnnzoo.data.images`'s; this module only chains
them and normalises.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar, get_args

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..data.images import (
    Interpolation,
    array_to_uint8,
    convert_image,
    fit_image,
    least_side,
    load_image,
    to_tensor_uint8,
)
from ..errors import ImageError, NotAnImageError, UsageError
from ..limits import MAX_INPUT_SIZE
from ..models.base import finite_numbers, is_whole, stats_for_channels
from ..text import plural


def preprocessing_problem(pre: object) -> str | None:
    """What is wrong with a preprocessing read from a file (a bundle.json's, the metadata of
    a `cnnzoo convert` output) for `Preprocessing.from_dict` to use it, in one phrase naming
    the field ('preprocessing.std must be > 0 ...'), or None. Such a file edited or damaged
    otherwise ended in a traceback deep in decoding (a crop_size of 10^9: a MemoryError), or
    predicted nan (std 0)."""
    if not isinstance(pre, dict):
        return "preprocessing must be an object (crop_size, resize_size, mean, std, ...)"
    for key in ("crop_size", "resize_size"):
        if not is_whole(pre.get(key)):
            return f"preprocessing.{key} must be a whole number >= 1, not {pre.get(key)!r}"
    if pre["crop_size"] > MAX_INPUT_SIZE:  # every image is sized to it
        return (f"preprocessing.crop_size must be at most {MAX_INPUT_SIZE} (the largest input "
                f"a net takes here), not {pre['crop_size']!r}")
    interpolations = get_args(Interpolation)
    if pre.get("interpolation", "bilinear") not in interpolations:
        return (f"preprocessing.interpolation must be one of {', '.join(interpolations)}, "
                f"not {pre.get('interpolation')!r}")  # fmt: skip
    if pre.get("fit", "crop") not in ("crop", "resize"):
        return f"preprocessing.fit must be 'crop' or 'resize', not {pre.get('fit')!r}"
    mean = pre.get("mean")
    channels = pre.get("channels", len(mean) if isinstance(mean, list) else None)
    if not is_whole(channels):
        return f"preprocessing.channels must be a whole number >= 1, not {channels!r}"
    for key in ("mean", "std"):
        if not finite_numbers(pre.get(key), channels):
            return (f"preprocessing.{key} must be {plural(channels, 'number')}, one per "
                    f"channel, not {pre.get(key)!r}")  # fmt: skip
    if not all(v > 0 for v in pre["std"]):
        return f"preprocessing.std must be > 0 (it divides), not {pre['std']!r}"
    return None


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side to `resize_size` (`interpolation`), centre-crop `crop_size`,
    scale to [0, 1], then (x - mean) / std per channel. `channels` is 3 (RGB) or 1 (grey).
    fit "resize" squashes the whole image to `crop_size` instead of cropping: what `cnnzoo
    train` does, so its checkpoints predict as they were trained."""

    crop_size: int = 224
    resize_size: int = 256
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    channels: int = 3
    fit: str = "crop"
    # What to do with a batch given as one image (a subclass for another API says its own).
    batch_hint: ClassVar[str] = "use .batch(images)"

    @classmethod
    def for_model(
        cls,
        model: torch.nn.Module,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> Preprocessing:
        """The default for a model: its config's input size, crop ratio 0.875, its mean/std."""
        cfg = getattr(model, "default_cfg", None)
        if cfg is None:
            return cls()
        c, h, _ = cfg.input_size
        m = tuple(mean if mean is not None else cfg.mean)
        s = tuple(std if std is not None else cfg.std)
        pre = cls(crop_size=h, resize_size=round(h / 0.875), mean=m, std=s, channels=len(m))
        return pre.with_channels(c)  # e.g. a grey model built with in_chans=3, or the reverse

    @classmethod
    def of_training_run(cls, size: int, channels: int, mean: Sequence[float],
                        std: Sequence[float]) -> Preprocessing:  # fmt: skip
        """What `cnnzoo train` fed its net (and `evaluate` feeds it): the whole image squashed
        to `size`, then the training images' own mean and std."""
        return cls(crop_size=int(size), resize_size=int(size), mean=tuple(mean), std=tuple(std),
                   channels=int(channels), fit="resize")

    def with_channels(self, channels: int) -> Preprocessing:
        """The same pipeline for a model with `channels` input channels (statistics as
        `models.base.stats_for_channels` gives them)."""
        if channels == self.channels and len(self.mean) == channels:
            return self
        m, s = stats_for_channels(self.mean, self.std, channels)
        return replace(self, mean=m, std=s, channels=channels)

    def to_dict(self) -> dict:
        return {
            "crop_size": self.crop_size, "resize_size": self.resize_size,
            "interpolation": self.interpolation, "mean": list(self.mean), "std": list(self.std),
            "channels": self.channels, "fit": self.fit,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(
            crop_size=int(d["crop_size"]), resize_size=int(d["resize_size"]),
            interpolation=str(d.get("interpolation", "bilinear")), mean=tuple(d["mean"]),
            std=tuple(d["std"]), channels=int(d.get("channels", len(d["mean"]))),
            fit=str(d.get("fit", "crop")),
        )  # fmt: skip

    # -- applying it -------------------------------------------------------------------------

    def geometry(self, img: Image.Image) -> Image.Image:
        """Resize the shorter side and centre-crop, or squash with fit "resize" (no
        conversion, no normalisation)."""
        return fit_image(img, self.crop_size, method=self.fit,  # type: ignore[arg-type]
                         resize_size=self.resize_size,
                         interpolation=self.interpolation)  # type: ignore[arg-type]

    def normalize(self, x: Tensor) -> Tensor:
        """uint8 (..., C, H, W) or float in [0, 1] -> normalised float32."""
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        c = x.shape[-3]
        mean = torch.tensor(self.mean, dtype=torch.float32).view(c, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(c, 1, 1)
        return (x - mean) / std

    def image_to_uint8(self, img: Image.Image) -> Tensor:
        """A PIL image of any mode -> cropped uint8 (C, H, W), converted as `load_image` converts
        a file's (alpha composited on white, 16-bit scaled, EXIF orientation applied)."""
        if self.channels not in (1, 3):
            raise UsageError(
                f"the model takes {self.channels}-channel input, but images decode to grey or "
                f"RGB: stack the (N, {self.channels}, H, W) input yourself and normalize() it")
        return to_tensor_uint8(self.geometry(convert_image(img, 1 if self.channels == 1 else 3)))

    def __call__(self, img: Image.Image | Tensor | np.ndarray | str | os.PathLike[str]) -> Tensor:
        """A PIL image, a (C, H, W) tensor, an (H, W[, C]) array (what PIL, OpenCV after BGR ->
        RGB, and scikit-image give) or an image path -> the normalised (C, crop, crop) input.
        Tensors and arrays may be uint8, uint16, bool or float in [0, 1] (`array_to_uint8`)."""
        if isinstance(img, str | os.PathLike):
            return self.load(img)
        if isinstance(img, Tensor):
            if img.dim() == 4:
                raise ImageError(f"expected one image (C, H, W), not a batch {tuple(img.shape)}: "
                                 f"{self.batch_hint}")  # fmt: skip
            if img.dim() != 3:
                raise ImageError(f"expected an image tensor (C, H, W), not {tuple(img.shape)}")
            if img.shape[0] not in (1, 3, 4) and img.shape[-1] in (1, 3, 4):
                raise ImageError(f"expected a (C, H, W) tensor, not {tuple(img.shape)}: "
                                 "use img.permute(2, 0, 1)")  # fmt: skip
            img = img.detach().cpu()
            img = (img.float() if img.is_floating_point() else img).permute(1, 2, 0).numpy()
        if isinstance(img, np.ndarray):
            if img.ndim not in (2, 3):
                raise ImageError(f"expected an image array (H, W) or (H, W, C), not {img.shape}")
            # PIL said "Cannot handle this data type: (1, 1, 28), |u1" to a (C, H, W) array (a
            # tensor's .numpy()), and an empty array ended in a ZeroDivisionError.
            if img.ndim == 3 and img.shape[-1] not in (1, 2, 3, 4):
                hint = ": use img.transpose(1, 2, 0)" if img.shape[0] in (1, 3, 4) else ""
                raise ImageError(f"expected an image array (H, W) or (H, W, C) of 1 to 4 "
                                 f"channels, not {img.shape}{hint}")  # fmt: skip
            if img.size == 0:
                raise ImageError(f"expected an image, not an empty array {img.shape}")
            img = array_to_uint8(img)
            img = Image.fromarray(img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img)
        if not isinstance(img, Image.Image):
            raise NotAnImageError(f"expected a PIL image, uint8 tensor or array, or a path, not "
                            f"{type(img).__name__}")  # fmt: skip
        return self.normalize(self.image_to_uint8(img))

    def load(self, path: str | os.PathLike[str]) -> Tensor:
        """Decode an image file (any mode, EXIF-rotated; `ImageError` if unreadable) and apply."""
        shrink = least_side(self.crop_size, self.fit, self.resize_size)  # type: ignore[arg-type]
        return self(load_image(path, channels=1 if self.channels == 1 else 3, shrink_to=shrink))

    def batch(self, images: Sequence[Image.Image | Tensor | np.ndarray | str]) -> Tensor:
        """Stack several images into one (N, C, crop, crop) batch (N = 0 for none)."""
        out = [self(im) for im in images]
        if not out:  # torch.stack: "expects a non-empty TensorList"
            return torch.zeros(0, self.channels, self.crop_size, self.crop_size)
        return torch.stack(out)
