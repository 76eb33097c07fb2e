"""The overlap-tile strategy (Ronneberger et al. 2015, Sec. 2 and Fig. 2).

An image of any size is segmented tile by tile: the output is cut into abutting tiles of K x K
pixels, and each tile's prediction is computed from an input window that adds `margin` pixels of
context on every side. Context beyond the image border is the image mirrored at that border, so
border pixels see plausible surroundings instead of zeros. Memory is bounded by one batch of
tiles plus the output (a uint8 mask with `output='mask'`), whatever the image size.

- padding='valid' (the paper): the net itself trims 92 pixels per side (4 levels), the input
  tile is a legal size (188 + 16k) and its output 4 + 16k pixels; the kept part is cut to a
  multiple of 16 (2 more pixels per side), so every tile starts on the same 2x2-pooling grid and
  the stitched tiles are exactly the prediction of the whole mirrored image in one pass.
- padding='same': the output tile is the centre of the net's output. With `margin` at least the
  receptive-field radius (92 px for 4 levels: the same context the valid net trims) and tile
  offsets on the pooling grid (multiples of 16), every kept pixel equals the whole-image
  prediction, except within `margin` of the image border where mirroring replaces zero padding.
  A smaller margin is faster and in practice nearly as good (`--margin`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from ..data.images import array_to_uint8, check_unit_range, convert_image, load_image
from ..errors import ImageError, NotAnImageError, UsageError
from ..models.base import is_whole
from ..text import plural


@dataclass(frozen=True)
class TileGeometry:
    """in_size: input tile side; out_size: side of the part of each output kept; margin: context
    per side; trim: pixels the net itself removes per side (valid mode), 0 in 'same' mode."""

    in_size: int
    out_size: int
    margin: int
    trim: int


def receptive_margin(model: nn.Module) -> tuple[int, int]:
    """(context margin, alignment) for a zoo U-Net in 'same' mode.

    For the paper's encoder of depth D the receptive-field radius is what the valid net trims,
    6 * 2^D - 4 px (92 for D = 4); for a classifier encoder (stride 32, deep) the exact radius is
    several hundred pixels, so 3 * 32 is used (nearly exact in practice, see docs).
    """
    strides = tuple(getattr(getattr(model, "encoder", None), "feature_strides", (1, 2, 4, 8, 16)))
    align = max(strides)
    if getattr(model, "custom_encoder", False):
        return 3 * align, align
    depth = len(strides) - 1
    radius = 6 * 2**depth - 4
    return int(math.ceil(radius / align) * align), align


def tile_geometry(model: nn.Module, tile: int = 512, margin: int | None = None) -> TileGeometry:
    """The tiling for `model` with input tiles of about `tile` pixels."""
    padding = getattr(model, "padding", "same")
    if padding == "valid":
        from ..models.unet import valid_input_size

        in_size = valid_input_size(max(tile - 184, 20))  # at least 16 px kept
        out = model.output_size(in_size)
        trim = (in_size - out) // 2
        keep = out // 16 * 16  # tile offsets on the pooling grid: shift-equivariant stitching
        return TileGeometry(in_size, keep, trim + (out - keep) // 2, trim)
    default_margin, align = receptive_margin(model)
    m = default_margin if margin is None else int(math.ceil(margin / align) * align)
    in_size = max(int(math.ceil(tile / align) * align), 2 * m + align)
    return TileGeometry(in_size, in_size - 2 * m, m, 0)


def checked_geometry(model: nn.Module, tile: int = 512, margin: int | None = None) -> TileGeometry:
    """`tile_geometry`, refused in one line when its input tiles would not fit in memory
    (`--margin 5000`: 10,000-px tiles, a 25 GB MemoryError), before any tile is made."""
    from ..errors import UsageError
    from ..limits import MAX_INPUT_SIZE

    geo = tile_geometry(model, tile, margin)
    if geo.in_size > MAX_INPUT_SIZE:
        raise UsageError(f"--tile {tile} with {geo.margin} px of context per side makes "
                         f"input tiles of {geo.in_size} px, more than {MAX_INPUT_SIZE} px fit in "
                         "memory: choose a smaller --tile or --margin")  # fmt: skip
    return geo


def mirror_indices(start: int, size: int, n: int) -> Tensor:
    """Indices start..start+size-1 reflected into 0..n-1 (numpy's 'reflect': the edge pixel is
    not repeated), for any distance outside the image."""
    idx = torch.arange(start, start + size)
    if n == 1:
        return torch.zeros_like(idx)
    period = 2 * (n - 1)
    idx = idx.remainder(period)
    return torch.where(idx >= n, period - idx, idx)


def _channel_advice(shape: tuple[int, ...], chans: int) -> str:
    """One line for an image whose channel count is not the net's: what to pass instead (the
    conversions `cnnzoo segment` makes when it reads a file, via `cnnzoo.data.images`)."""
    flat = len(shape) == 2  # one grey (H, W) image
    last = not flat and shape[-1] in (1, 3, 4) and shape[0] not in (1, 3, 4)  # (H, W, C), PIL's
    c = 1 if flat else shape[-1] if last else shape[0]
    take = "image[None]" if flat else "image.transpose(2, 0, 1)" if last else "image"
    if chans == 1:
        how = ("a grey (H, W) image, e.g. np.asarray(PIL.Image.open(path).convert('L')), as "
               "cnnzoo segment reads files for a grey net")
    elif c == 4:
        how = f"its colour channels, {take}[:3] (3, H, W), without the alpha channel"
    elif c == 1:
        how = f"it as three channels (3, H, W), np.repeat({take}, 3, axis=0)"
    else:
        how = "an RGB image (3, H, W), e.g. np.asarray(PIL.Image.open(path).convert('RGB'))" \
            ".transpose(2, 0, 1)"
    layout = "(H, W)" if flat else "(H, W, C)" if last else "(C, H, W)"
    return (f"image of shape {shape} has {plural(c, 'channel')} {layout}, but the net takes "
            f"{chans}: "
            f"pass {how}")


def _check_options(chans: int | None, tile: object, margin: object, batch_size: object,
                   mean: object, std: object, output: object) -> None:
    """predict_tiled's settings, each refused in one line (`cnnzoo segment`'s parser refuses
    them on the command line): tile=0 and margin=-1 ran as if valid, batch_size=0 was range()'s
    "arg 3 must not be zero", mean without std a TypeError, and a mean of three numbers for a
    grey net broadcast the image to three channels, for the net to refuse them."""
    if output not in ("probs", "logits", "mask"):  # anything else gave logits
        raise UsageError(f"output must be probs, logits or mask, not {output!r}")
    for name, value, low in (("tile", tile, 1), ("batch_size", batch_size, 1),
                             ("margin", 0 if margin is None else margin, 0)):
        if not is_whole(value, low):
            raise UsageError(f"{name} must be a whole number >= {low}, not {value!r}")
    if (mean is None) != (std is None):
        raise UsageError("mean and std go together: pass both (the net's training meta holds "
                         "them: mean=meta['mean'], std=meta['std']) or neither")
    for name, values in (("mean", mean), ("std", std)):
        if values is not None and chans is not None and len(values) != chans:  # type: ignore[arg-type]
            raise UsageError(f"{name} needs one number per channel of the net ({chans}), "
                             f"not {list(values)}")  # type: ignore[call-overload]


def _unit_pixels(img: Tensor) -> Tensor:
    """The image's pixels as `Bundle.predict` and `cnnzoo segment` read them: uint8 as it is
    (divided by 255 per tile), float only in [0, 1], and bool, uint16 (a microscope's 16-bit
    frame) or other integers as `array_to_uint8` turns them into uint8. Before, anything but
    uint8 went in unscaled, so a uint16 frame or a float image of 0..255 gave the net values up
    to 65535 and a mask of one class, without a word."""
    if img.dtype == torch.uint8:
        return img
    if img.is_floating_point():
        if img.numel():
            check_unit_range(float(img.min()), float(img.max()))
        return img
    return torch.from_numpy(array_to_uint8(img.numpy()))


@torch.no_grad()
def predict_tiled(
    model: nn.Module,
    image: Tensor | np.ndarray | Image.Image | str | os.PathLike[str],
    *,
    tile: int = 512,
    margin: int | None = None,
    batch_size: int = 4,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    output: Literal["probs", "logits", "mask"] = "probs",
    progress: bool = False,
    tta: bool | str = False,
) -> Tensor:
    """Segment one image (C, H, W) of any size with the overlap-tile strategy.

    image: uint8 (divided by 255), float in [0, 1], bool, uint16 (scaled as 16-bit files are),
        as `Bundle.predict` reads arrays (a float image outside [0, 1] is an `ImageError`), or
        a PIL image or an image file's path (converted
        to the net's channels as `cnnzoo segment` reads files); `mean`/`std` normalise each
        tile after that.
    tile: input tile side in pixels (snapped to a legal size); margin: context per side in
        'same' mode (default: the receptive-field radius, exact); batch_size: tiles per forward.
    progress: a tqdm bar over the tiles (for large images).
    tta: test-time augmentation, 'flip' (or True) or 'flip-shift': each tile's logits are the
        mean over the views of `engine.loop.tta_views`, as `cnnzoo train --tta` validates
        (`cnnzoo evaluate --tta` and `cnnzoo segment --tta` call this).
    Returns (num_classes, H, W) float32 probabilities or logits, or a uint8 (H, W) mask.
    """
    chans = getattr(model, "in_chans", None)
    _check_options(chans, tile, margin, batch_size, mean, std, output)
    if isinstance(image, str | os.PathLike):  # was torch's "new(): invalid data type 'str'"
        image = load_image(image, 1 if chans == 1 else 3)
    if isinstance(image, Image.Image):  # as `cnnzoo segment` reads a file for this net
        image = np.array(convert_image(image, 1 if chans == 1 else 3))  # a writable copy
        image = image if image.ndim == 2 else np.ascontiguousarray(image.transpose(2, 0, 1))
    if isinstance(image, np.ndarray) and not image.flags.writeable:
        # np.asarray(PIL image) is read-only, and torch warns about such arrays (a UserWarning
        # for the very call this docstring and the channel advice suggest); tiles only read it.
        image = image.copy()
    if not isinstance(image, Tensor | np.ndarray):
        raise NotAnImageError(f"expected an image: a (C, H, W) tensor, an (H, W) array, a PIL image or "
                        f"a file's path, not {type(image).__name__}")  # fmt: skip
    img = torch.as_tensor(image)
    given = tuple(img.shape)
    if img.dim() == 2:  # one grey image (H, W), as skimage and PIL give it
        img = img[None]
    if img.dim() != 3:
        raise ImageError(f"expected one image (C, H, W), got shape {tuple(img.shape)}")
    if chans is not None and img.shape[0] != chans and img.shape[-1] == chans:
        raise ImageError(f"image of shape {tuple(img.shape)} has its channels last (skimage's "
                         "and PIL's layout): pass image.transpose(2, 0, 1) (C, H, W)")
    if chans is not None and img.shape[0] != chans:
        # Another channel count (an RGB array for a grey net, RGBA): torch's own error names
        # tensor sizes, not the image. What `cnnzoo segment` does for such files, said here.
        raise ImageError(_channel_advice(given, chans))
    img = _unit_pixels(img)
    _, h, w = img.shape
    geo = tile_geometry(model, tile, margin)
    k = geo.out_size
    origins = [(y, x) for y in range(0, h, k) for x in range(0, w, k)]
    mean_t = None if mean is None else torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    std_t = None if std is None else torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    was_training = model.training
    model.eval()
    result: Tensor | None = None
    from tqdm.auto import tqdm

    bar = tqdm(total=len(origins), desc="tiles", leave=False,
               disable=None if progress else True)
    try:
        for start in range(0, len(origins), batch_size):
            chunk = origins[start : start + batch_size]
            tiles = []
            for y, x in chunk:
                rows = mirror_indices(y - geo.margin, geo.in_size, h)
                cols = mirror_indices(x - geo.margin, geo.in_size, w)
                t = img[:, rows][:, :, cols]
                t = t.float().div_(255) if t.dtype == torch.uint8 else t.float()
                if mean_t is not None:
                    t = (t - mean_t) / std_t
                tiles.append(t)
            batch = torch.stack(tiles)
            if tta:
                # Per input tile, not per whole image: memory stays one batch of tiles (times the
                # views), and with margin 0 and a tile of the image's side the one tile is the
                # whole image the training's --tta validated, so the scores are its exactly.
                # With context, a view mirrors or shifts the tile's mirrored context with it.
                from ..engine.loop import tta_forward

                logits = tta_forward(model, batch, tta)
            else:
                logits = model(batch).float()
            if logits.dim() != 4:  # a classifier's (N, K): zip() said "argument 2 is shorter"
                raise UsageError(f"predict_tiled needs a net that outputs a map (N, classes, H, "
                                 f"W), such as create_model('unet', padding='same'), not one of "
                                 f"shape {tuple(logits.shape)}")  # fmt: skip
            crop = geo.margin - geo.trim
            logits = logits[..., crop : crop + k, crop : crop + k]
            if result is None:
                c = logits.shape[1]
                result = (
                    torch.zeros(h, w, dtype=torch.uint8)
                    if output == "mask"
                    else torch.zeros(c, h, w, dtype=torch.float32)
                )
            if output == "probs":
                logits = logits.softmax(1)
            for (y, x), out in zip(chunk, logits, strict=True):
                hh, ww = min(k, h - y), min(k, w - x)
                if output == "mask":
                    result[y : y + hh, x : x + ww] = out[:, :hh, :ww].argmax(0).to(torch.uint8)
                else:
                    result[:, y : y + hh, x : x + ww] = out[:, :hh, :ww]
            bar.update(len(chunk))
    finally:
        bar.close()
        model.train(was_training)
    assert result is not None
    return result
