"""Decoding one image file into a PIL image in RGB or L, and the resize helpers everyone uses.

Every reader of user images in cnnzoo (image folders, `predict`, `transfer`, `segment`) goes
through `load_image`, so that every image mode decodes the same way and every unreadable file
fails with the same one-line `ImageError` naming the file and the cause (the peers' users lose
whole training runs to an error that does not say which file: vision #138, pytorch #7238).

Mode conversion, decided once here:

- RGB / L pass through; "1" (bilevel) becomes L; P, CMYK, YCbCr, HSV, LAB become RGB.
- Alpha (RGBA, LA, PA, P with transparency) is composited on white by default -- transparent
  product photos and icons are drawn on a white page, and a black background would turn dark
  objects into silhouettes; `alpha="drop"` keeps the stored colour of transparent pixels instead.
- 16-bit grey (I;16, I;16B, I;16L) is scaled to 8 bits by 255/65535 with rounding. PIL's own
  `convert("L")` clips everything above 255 to white, which turns a 16-bit scan into a mask.
- 32-bit integer grey ("I") is treated as 16-bit data (what older Pillow versions produced for
  16-bit PNGs), clipped to 0..65535 and scaled as above.
- Float grey ("F", e.g. float TIFF): values in [0, 1] are multiplied by 255; any other range is
  stretched linearly from its minimum to its maximum; NaN becomes 0.
- The EXIF orientation tag is applied (phones store portrait photos as rotated landscapes).
- Multi-frame files (GIF, TIFF stacks) give their first frame.

Decompression bombs: an image that would decode to more pixels than `PIL.Image.MAX_IMAGE_PIXELS`
(89,478,485 by default, about 9,459 x 9,459) is refused with an `ImageError` before its pixels are
decoded. Raise that module attribute to accept larger images (or set it to None to disable the
check). A JPEG over the limit that is to be shrunk anyway (`load_image(..., shrink_to=)`, which
`ImageSpec.load` and `Preprocessing.load` pass) is decoded at 1/2, 1/4 or 1/8 of its size where
that still leaves twice the pixels needed (libjpeg's scaled decoding, as PIL's `thumbnail` does),
and it is that size which must stay under the limit: a 12,000 x 9,000 camera JPEG (108 Mpx) is
read, in 0.06 s and 0.2 GB, instead of refused (so are a 200 Mpx one, over twice the limit, and
an MPO: a JPEG with a depth map). Images within the limit decode in full as before,
so their pixels stay those of torchvision's pipeline.

Sizes follow torch: `size` is an int (square, or the shorter side) or `(height, width)`.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps, JpegImagePlugin, PngImagePlugin, UnidentifiedImageError

from ..errors import ImageError, UsageError

log = logging.getLogger("cnnzoo.data")

Interpolation = Literal["nearest", "bilinear", "bicubic", "lanczos"]
_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

# File suffixes users keep photos and scans in. Folder readers use this to tell an image that
# failed to decode (warned about) from a file that was never meant to be an image. HEIC/HEIF (an
# iPhone's photos) is listed although PIL cannot read it, so that such photos are skipped with a
# line saying to convert them, not counted among the "files without an image extension".
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib", ".gif", ".tif", ".tiff",
     ".webp", ".avif", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".jp2", ".j2k",
     ".heic", ".heif"}
)  # fmt: skip
_HEIF = (".heic", ".heif")

# `warnings.catch_warnings` swaps the process-wide filter list, so two decoding threads entering
# it at once could leave the "error" filter installed for good; the lock serialises only the
# header read in `Image.open` (microseconds), never the pixel decoding.
_OPEN_LOCK = threading.Lock()


@contextmanager
def _opening() -> Iterator[None]:
    """Where `Image.open` reads a header: under _OPEN_LOCK, with PIL's warning above
    MAX_IMAGE_PIXELS silenced (each reader checks the size itself, `_check_pixels`)."""
    with _OPEN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


# The EXIF tag saying how a camera held the picture; 5-8 mean turned a quarter (ImageOps).
_EXIF_ORIENTATION = 0x0112


def _fail(path: str | os.PathLike[str], cause: str) -> ImageError:
    cause = " ".join(str(cause).split())  # one line, whatever PIL's message looked like
    return ImageError(f"{os.fspath(path)}: {cause}")


def load_image(
    path: str | os.PathLike[str],
    channels: Literal[1, 3] = 3,
    *,
    alpha: Literal["white", "drop"] = "white",
    shrink_to: int | None = None,
) -> Image.Image:
    """Decode an image file into a PIL image in mode RGB (channels=3) or L (channels=1).

    Any mode PIL reads is accepted (see the module docstring for how each one converts); the
    EXIF orientation is applied. Raises `ImageError` with one line naming the file and the cause:
    missing, empty, not an image, truncated/corrupt data, or a decompression bomb.
    shrink_to: the caller shrinks the image until its sides are no larger than this
    (`least_side`); a JPEG over the decompression-bomb limit is then decoded at a reduced scale
    that keeps both sides at least twice that.
    """
    if channels not in (1, 3):
        raise UsageError(f"channels must be 1 or 3, not {channels!r}")
    if os.path.isdir(path):
        raise _fail(path, "a folder, not an image file")
    try:
        size = os.path.getsize(path)
    except FileNotFoundError:
        if os.path.islink(path):  # a link whose file was moved: say where it points
            raise _fail(path, f"a link to a file that is not there ({os.readlink(path)})") \
                from None
        raise _fail(path, "no such file") from None
    except OSError as exc:
        raise _fail(path, f"cannot read the file ({exc.strerror or exc})") from None
    if not _regular(path):
        raise _fail(path, NOT_A_FILE)
    if size == 0:
        raise _fail(path, "empty file (0 bytes)")
    try:
        with open(path, "rb") as fh:
            with _opening():  # the pixels decoded are checked below
                try:
                    img = Image.open(fh)
                except Image.DecompressionBombError:
                    # Over twice the limit PIL refuses to open it at all, before a JPEG could
                    # be drafted small: a 200 Mpx phone photo (16,320 x 12,240). Its header is
                    # read without that check; the decoded size is checked below.
                    fh.seek(0)
                    if shrink_to is None or fh.read(3) != b"\xff\xd8\xff":  # not a JPEG
                        raise
                    fh.seek(0)
                    img = JpegImagePlugin.jpeg_factory(fh)
            limit = Image.MAX_IMAGE_PIXELS
            # A JPEG with a second picture (a phone's depth or HDR gain map) opens as an MPO,
            # a JpegImageFile too, whose first picture drafts alike.
            if (shrink_to is not None and isinstance(img, JpegImagePlugin.JpegImageFile)
                    and limit is not None and img.size[0] * img.size[1] > limit):  # fmt: skip
                # Square: which side is which depends on the EXIF orientation, applied later.
                img.draft(None, (2 * shrink_to, 2 * shrink_to))
            _check_pixels(path, img.size)
            img.load()  # decode now, while the file is open and errors can name it
    except ImageError:
        raise
    except UnidentifiedImageError:
        if os.fspath(path).lower().endswith(_HEIF):
            raise _fail(path, "a HEIC/HEIF photo, which PIL cannot read: convert it to JPEG or "
                        "PNG (on a Mac: Preview, File > Export)") from None
        raise _fail(path, "not an image (PIL does not recognise the format)") from None
    except Image.DecompressionBombError as exc:  # over twice the limit: PIL refuses to open it
        raise _fail(path, f"refused as a decompression bomb ({exc}); {_BOMB_ADVICE}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # PIL reports truncated files as OSError("image file is truncated"), broken streams as
        # OSError/SyntaxError/ValueError depending on the plugin.
        raise _fail(path, f"truncated or corrupt image data ({exc})") from None
    try:
        return convert_image(img, channels, alpha=alpha)
    except (OSError, ValueError) as exc:
        raise _fail(path, f"cannot convert mode {img.mode} ({exc})") from None


# A named pipe or a device named like an image (x.png, in a tar from the web): opening a pipe
# with no writer waits forever, and `cnnzoo train` hung before any work reading its header.
NOT_A_FILE = "a named pipe or a device, not an image file"


def _regular(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a regular file (links followed): what may be opened to read an image."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def open_raw(path: str | os.PathLike[str]) -> Image.Image:
    """`Image.open` for readers that need a file's own mode and values (masks, instance ids),
    with `load_image`'s refusals: a pipe or device is not opened, and a decompression bomb is
    an `ImageError` (PIL's own DecompressionBombError is no OSError or ValueError, and ended
    in a traceback), as is an image over `PIL.Image.MAX_IMAGE_PIXELS`."""
    if not _regular(path):
        raise _fail(path, NOT_A_FILE if os.path.exists(path) else "no such file")
    with _opening():
        try:
            img = Image.open(path)
        except Image.DecompressionBombError as exc:
            raise _fail(path, f"refused as a decompression bomb ({exc}); {_BOMB_ADVICE}") from None
    try:
        _check_pixels(path, img.size)
    except ImageError:
        img.close()
        raise
    return img


# PIL modes of grey images (`convert_image` turns LA into L on white, 16-bit and float into L).
GREY_MODES = frozenset({"1", "L", "LA", "I", "F", "I;16", "I;16B", "I;16L", "I;16N"})


def image_header(path: str | os.PathLike[str]) -> tuple[int, int, bool] | None:
    """(width, height, grey) of an image file as `load_image` gives it (EXIF orientation
    applied), read from its header without decoding the pixels; None for a file that does not
    open. Palette images count as colour (their palette is not looked at)."""
    if not _regular(path):
        return None
    try:
        with _opening():
            with Image.open(path) as img:
                width, height = img.size
                grey = img.mode in GREY_MODES
                turned = img.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
        return None
    return (height, width, grey) if turned else (width, height, grey)


def frame_count(path: str | os.PathLike[str]) -> int:
    """Frames in an image file (a TIFF stack's planes, an animated GIF's frames; 1 for most
    files and for one that does not open): `load_image` decodes only the first."""
    if not _regular(path):
        return 1
    try:
        with _opening():
            with Image.open(path) as img:
                return int(getattr(img, "n_frames", 1))
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError):
        return 1


# What a user can do about a refused image; on the command line the limit cannot be raised.
_BOMB_ADVICE = ("if the image is genuine, save a smaller copy of it (or, in Python, raise "
                "PIL.Image.MAX_IMAGE_PIXELS)")


def _check_pixels(path: str | os.PathLike[str], size: tuple[int, int]) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and size[0] * size[1] > limit:
        raise _fail(
            path,
            f"refused as a decompression bomb ({size[0]}x{size[1]} = {size[0] * size[1]:,} pixels "
            f"> PIL.Image.MAX_IMAGE_PIXELS = {limit:,}); {_BOMB_ADVICE}",
        )


def convert_image(
    img: Image.Image,
    channels: Literal[1, 3] = 3,
    *,
    alpha: Literal["white", "drop"] = "white",
    exif: bool = True,
) -> Image.Image:
    """Convert an already-open PIL image to RGB or L the way `load_image` does (EXIF included)."""
    if exif:
        try:
            img = ImageOps.exif_transpose(img)
        except Exception:  # noqa: BLE001 -- a broken EXIF block must not lose a readable image
            pass
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        a = np.asarray(img)
        if mode == "I":
            a = np.clip(a, 0, 65535)
        _say_if_low_depth(a)
        img = Image.fromarray(_scale16(a))
    elif mode == "F":
        a = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(a.min()), float(a.max())
        if lo < 0.0 or hi > 1.0:
            a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
        img = Image.fromarray(np.rint(a * 255.0).astype(np.uint8))
    elif mode == "1":
        img = img.convert("L")
    elif mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode == "PA":
        img = img.convert("RGBA")
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        img = img.convert("RGB")  # CMYK, YCbCr, HSV, LAB, RGBX, RGBa, La ...

    if img.mode in ("RGBA", "LA"):
        if alpha == "white":
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", img.size, (255, 255, 255, 255))
            background.alpha_composite(rgba)
            # Grey stays grey: ITU-R 601 weights sum to 1, so RGB -> L below is exact for R=G=B.
            img = background.convert("RGB")
        else:
            img = img.convert(img.mode[:-1])  # keep the stored colour, discard the alpha band

    target = "L" if channels == 1 else "RGB"
    return img if img.mode == target else img.convert(target)


_LOW_DEPTH_SAID = threading.Event()  # once per process: a folder of such images is one note


def _say_if_low_depth(a: np.ndarray) -> None:
    """A note when a 16-bit image uses no more than 12 bits (a line camera's 12-bit data stored
    in 16-bit files): scaled by 255/65535 its values keep 16 grey levels of 256, and the images
    read nearly black. Its file, not cnnzoo, knows the depth, so this is said, not guessed."""
    # (said first: once it is said, no image's maximum need be looked for again)
    if not _LOW_DEPTH_SAID.is_set() and a.size and 0 < int(a.max()) < 4096:
        _LOW_DEPTH_SAID.set()
        log.warning("note: 16-bit images whose values all lie below 4096 (12-bit camera data?) "
                    "read as 8 bits (values / 257) keep only 16 grey levels and look nearly "
                    "black: save them scaled to the full 16 bits (values x 16), or as 8-bit "
                    "images (values / 16)")


def _scale16(a: np.ndarray) -> np.ndarray:
    # Round-to-nearest of a * 255 / 65535 (= a / 257), in integers so no float error.
    return ((a.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def check_unit_range(lo: float, hi: float) -> None:
    """Refuse a float image whose values run from `lo` to `hi` unless they lie in [0, 1]
    (NaN and inf fail the comparisons): one rule for every reader of float images, so that an
    image of 0..255 is not turned white by one and refused by another."""
    if lo >= 0 and hi <= 1:
        return
    # Below 0 it was normalised already (Preprocessing.batch's output passed to bundle.predict):
    # dividing it by 255 would not help.
    fix = ("it looks normalised already: pass the image before normalising" if lo < 0
           else "divide it by 255")  # fmt: skip
    raise ImageError(f"a float image must lie in [0, 1] (scikit-image's convention), not "
                     f"[{lo!r}, {hi!r}]: {fix}, or pass uint8")


def array_to_uint8(a: np.ndarray) -> np.ndarray:
    """An image array of any usual pixel type as uint8: uint8 as it is; bool as 0 / 255; uint16
    scaled as 16-bit files are; float in [0, 1] (scikit-image's convention, what its
    `rgb2gray` and `resize` return) times 255, rounded; other integers that lie in 0..255.
    Anything else is an `ImageError` saying what to pass (a float image of 0..255 would
    otherwise turn white)."""
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if a.dtype == np.uint16:
        _say_if_low_depth(a)  # a camera's 12-bit frames read as nearly black as its files do
        return _scale16(a)
    if np.issubdtype(a.dtype, np.floating):
        if a.size:
            check_unit_range(float(a.min()), float(a.max()))
        return np.rint(a * 255).astype(np.uint8)
    if np.issubdtype(a.dtype, np.integer) and (not a.size or (a.min() >= 0 and a.max() <= 255)):
        return a.astype(np.uint8)
    raise ImageError(f"cannot read a {a.dtype} array as an image: pass uint8 (0..255), uint16 "
                     "or float in [0, 1]")


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def resize_shorter(
    img: Image.Image, size: int, interpolation: Interpolation = "bilinear"
) -> Image.Image:
    """Resize so the shorter side is `size`, keeping the aspect ratio.

    PIL's resize filters are antialiased (the filter widens with the scale factor), so a large
    photo shrinks without aliasing -- torchvision's `Resize(size, antialias=True)` on PIL input.
    """
    w, h = img.size
    if min(w, h) == size:
        return img
    return img.resize(_shorter_side_to(img.size, size), _RESAMPLE[interpolation])


def _shorter_side_to(wh: tuple[int, int], size: int) -> tuple[int, int]:
    """(width, height) with the shorter side `size` and the aspect ratio kept."""
    w, h = wh
    if w <= h:
        return size, max(1, round(h * size / w))
    return max(1, round(w * size / h)), size


# `fit_image`'s "crop" resizes only the part its centre crop keeps when the whole image,
# resized, would hold more than this many times the crop's pixels: a strip 1 px high and 30,000
# long (a few hundred bytes of PNG) became 256 x 7,680,000 pixels -- 8 GB and 25 s for
# `cnnzoo predict` -- to keep its middle 224 x 224. Below it (every photo up to ~3:1 with the
# 256 -> 224 crop: 256 x 784 is 4 x 224 x 224) the whole image is resized as torchvision does.
# Bilinear, the region's pixels differ from those by at most one grey level; bicubic by up to
# 6 on under 0.05 % of them, and nearest picks a neighbouring row or column here and there.
CROP_FIRST_RATIO = 4


def center_crop(img: Image.Image, size: int | tuple[int, int]) -> Image.Image:
    """Crop the centre `size` (int or (height, width)); a smaller image is padded with zeros."""
    th, tw = _hw(size)
    w, h = img.size
    # Rounding as torchvision does, so the same crop box is taken for the same input.
    left = int(round((w - tw) / 2.0))
    top = int(round((h - th) / 2.0))
    return img.crop((left, top, left + tw, top + th))


def resize_exact(
    img: Image.Image, size: int | tuple[int, int], interpolation: Interpolation = "bilinear"
) -> Image.Image:
    """Resize to exactly `size` (int = square, or (height, width)), ignoring the aspect ratio."""
    th, tw = _hw(size)
    if img.size == (tw, th):
        return img
    return img.resize((tw, th), _RESAMPLE[interpolation])


def least_side(
    size: int | tuple[int, int] | None,
    method: Literal["resize", "crop"] = "resize",
    resize_size: int | None = None,
) -> int | None:
    """The least size both sides of an image need for `fit_image(img, size, method=...,
    resize_size=...)` to lose nothing (`load_image`'s shrink_to); None for no size."""
    if size is None:
        return None
    if method == "crop" and resize_size is not None:
        return max(*_hw(size), resize_size)
    return max(_hw(size))


def fit_image(
    img: Image.Image,
    size: int | tuple[int, int],
    *,
    method: Literal["resize", "crop"] = "resize",
    resize_size: int | None = None,
    interpolation: Interpolation = "bilinear",
) -> Image.Image:
    """Bring an image to `size`, the way a data set or a model's preprocessing asks.

    method="resize": exact resize to `size` (the whole image, aspect ratio not kept).
    method="crop": resize the shorter side to `resize_size` (default: the larger side of
    `size`), then centre-crop `size` -- ImageNet's "resize 256, crop 224".
    """
    if method == "resize":
        return resize_exact(img, size, interpolation)
    if method == "crop":
        shorter = resize_size if resize_size is not None else max(_hw(size))
        th, tw = _hw(size)
        new_w, new_h = _shorter_side_to(img.size, shorter)
        if new_w * new_h <= CROP_FIRST_RATIO * tw * th:
            return center_crop(resize_shorter(img, shorter, interpolation), size)
        # The crop box of `center_crop` on the resized image, kept to what the image covers
        # (the rest is zeros there too), and the source region it comes from.
        left, top = int(round((new_w - tw) / 2.0)), int(round((new_h - th) / 2.0))
        x0, y0 = max(left, 0), max(top, 0)
        x1, y1 = min(left + tw, new_w), min(top + th, new_h)
        sx, sy = img.size[0] / new_w, img.size[1] / new_h
        part = img.resize((x1 - x0, y1 - y0), _RESAMPLE[interpolation],
                          box=(x0 * sx, y0 * sy, x1 * sx, y1 * sy))  # fmt: skip
        if part.size == (tw, th):
            return part
        canvas = Image.new(img.mode, (tw, th))
        canvas.paste(part, (x0 - left, y0 - top))
        return canvas
    raise UsageError(f"method must be 'resize' or 'crop', not {method!r}")


def to_tensor_uint8(img: Image.Image) -> torch.Tensor:
    """A PIL image in L or RGB as a uint8 tensor (C, H, W) -- no scaling, no normalisation."""
    if img.mode not in ("L", "RGB"):
        raise ValueError(f"expected an L or RGB image, got mode {img.mode}: use convert_image")
    a = np.asarray(img, dtype=np.uint8)  # a read-only view of PIL's buffer: copy below
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    return torch.from_numpy(np.array(a, order="C", copy=True))


@dataclass(frozen=True)
class ImageSpec:
    """How every image of a data set is decoded and brought to one size.

    size: int (square) or (height, width); None keeps each image's own size (a data set then
    needs all images equally sized). method/resize_size/interpolation: see `fit_image`
    ("resize" squashes the whole image; "crop" is shorter side + centre crop, what transfer
    learning uses with a weights entry's preprocessing). channels: 1 (L) or 3 (RGB).
    """

    size: int | tuple[int, int] | None = None
    channels: Literal[1, 3] = 3
    method: Literal["resize", "crop"] = "resize"
    resize_size: int | None = None
    interpolation: Interpolation = "bilinear"
    alpha: Literal["white", "drop"] = "white"

    def __post_init__(self) -> None:
        # Refused when built: channels=2 or method='center' was a plain ValueError at the first
        # image decoded, or none at all with size=None (the method then unused).
        if self.channels not in (1, 3) or isinstance(self.channels, bool):
            raise UsageError(f"ImageSpec: channels must be 1 or 3, not {self.channels!r}")
        if self.method not in ("resize", "crop"):
            raise UsageError(f"ImageSpec: method must be 'resize' or 'crop', not {self.method!r}")

    def apply(self, img: Image.Image) -> Image.Image:
        """Fit an already-converted image (mode L/RGB) to this spec's size."""
        if self.size is None:
            return img
        return fit_image(
            img,
            self.size,
            method=self.method,
            resize_size=self.resize_size,
            interpolation=self.interpolation,
        )

    def load(self, path: str | os.PathLike[str]) -> torch.Tensor:
        """Decode, convert, resize: a uint8 (C, H, W) tensor, or `ImageError`."""
        shrink = least_side(self.size, self.method, self.resize_size)
        return to_tensor_uint8(
            self.apply(load_image(path, self.channels, alpha=self.alpha, shrink_to=shrink))
        )


def write_png(image: Image.Image | np.ndarray, path: str | os.PathLike[str],
              text: dict[str, str] | None = None) -> None:
    """Save a PIL image or an array (uint8, or uint16 for instance ids) as a PNG at `path` in
    one step (`paths.replacing`), for every PNG cnnzoo writes for a user to read back: a kill
    mid-file (an export, a `segment` of a whole folder) left an empty or cut PNG among the good
    ones, which the next run read as a corrupt image. `text` goes into tEXt chunks (what made
    the file; `png_text` reads them back)."""
    from ..paths import replacing

    img = image if isinstance(image, Image.Image) else Image.fromarray(image)
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    with replacing(path) as tmp:
        img.save(tmp, format="PNG", pnginfo=info)


def png_text(path: str | os.PathLike[str]) -> dict[str, str]:
    """The tEXt chunks of a PNG (`write_png`'s `text`); {} for a file that is not a readable
    PNG: what made it is then unknown, not an error."""
    try:
        with Image.open(path) as img:
            return {str(k): str(v) for k, v in getattr(img, "text", {}).items()}
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):  # PIL: SyntaxError
        return {}  # for a broken chunk
