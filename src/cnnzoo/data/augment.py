"""Label-preserving augmentation on whole batches of tensors (Krizhevsky et al. 2012, Sec. 4.1:
random crops, horizontal reflections and colour changes "enlarge the dataset" for free).

Every transform is a `BatchTransform` (see `loader.py`): `(images, targets, generator) ->
(images, targets)` on float images (N, C, H, W) in [0, 1]. Per-sample randomness is drawn as one
vector per batch from `generator` -- never from the global RNG -- so an epoch replays exactly
after a resume, and work is vectorised over the batch (one `grid_sample` or one `gather`),
never a Python loop over samples.

Targets: class labels (N,) pass through. Segmentation masks (N, H, W), integer class indices,
get the same geometry as their images, sampled nearest-neighbour so no new class values appear;
photometric transforms leave masks alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import DataError, UsageError
from .loader import BatchTransform, unit_float

__all__ = [
    "BatchTransform",
    "ColorJitter",
    "Compose",
    "ElasticDeform",
    "HorizontalFlip",
    "PadCrop",
    "ProgressiveResize",
    "RandomCrop",
    "RandomErasing",
    "RandomResizedCrop",
    "RandomRot90",
    "Resize",
    "VerticalFlip",
    "default_augmentation",
    "resize_batch",
]

_LUMA = (0.299, 0.587, 0.114)  # BT.601, as PIL's RGB -> L


def _is_mask(images: Tensor, targets: Tensor) -> bool:
    return targets.ndim == 3 and targets.shape[-2:] == images.shape[-2:]


def _hw(size: int | Sequence[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _sample_masks(masks: Tensor, grid: Tensor, fill: int) -> Tensor:
    """Nearest-neighbour `grid_sample` of integer masks (N, H, W); outside the image -> fill."""
    m = (masks.to(torch.float32) - fill).unsqueeze(1)  # zero padding then means `fill`
    out = F.grid_sample(m, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return (out.squeeze(1) + fill).round_().to(masks.dtype)


class Compose:
    """Apply transforms in order.

    Accepts uint8 batches (0-255): the leading steps that are exact on integers (those with
    `exact_on_uint8 = True`: crops, flips, rotations by 90 degrees, a size-keeping resize) run
    on them as they are -- a quarter of the bytes of float -- and the batch becomes float in
    [0, 1] before the first other step. The result is then uint8 or float; `BatchLoader`
    normalises either. The pixels are the same as with a float batch: these steps only move them.
    """

    accepts_uint8 = True

    def __init__(self, transforms: Sequence[BatchTransform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, images: Tensor, targets: Tensor, generator: torch.Generator):
        for t in self.transforms:
            if images.dtype == torch.uint8 and not getattr(t, "exact_on_uint8", False):
                images = unit_float(images)
            images, targets = t(images, targets, generator)
        return images, targets

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(map(repr, self.transforms)) + ")"


def resize_batch(
    images: Tensor, size: int | Sequence[int], targets: Tensor | None = None
) -> tuple[Tensor, Tensor | None]:
    """Resize a batch to `size` (square int or (height, width)): antialiased bilinear for the
    images (no aliasing when shrinking), nearest for masks (N, H, W) in `targets`."""
    hw = _hw(size)
    if tuple(images.shape[-2:]) != hw:
        images = F.interpolate(
            images, size=hw, mode="bilinear", antialias=True, align_corners=False
        )
    if targets is not None and targets.ndim == 3 and tuple(targets.shape[-2:]) != hw:
        targets = (
            F.interpolate(targets.unsqueeze(1).float(), size=hw, mode="nearest-exact")
            .squeeze(1)
            .to(targets.dtype)
        )
    return images, targets


class Resize:
    """Resize every batch to `size`, e.g. 28-pixel Fashion-MNIST to a model's minimum input."""

    exact_on_uint8 = True  # a no-op at the same size; uint8 is made float before resizing

    def __init__(self, size: int | Sequence[int]) -> None:
        self.size = _hw(size)

    def __call__(self, images: Tensor, targets: Tensor, generator: torch.Generator):
        del generator
        if images.dtype == torch.uint8 and tuple(images.shape[-2:]) != self.size:
            images = unit_float(images)
        images, masks = resize_batch(
            images, self.size, targets if _is_mask(images, targets) else None
        )
        return images, (masks if masks is not None else targets)

    def __repr__(self) -> str:
        return f"Resize({self.size})"


class HorizontalFlip:
    """Mirror each image left-right with probability p."""

    dim = -1
    exact_on_uint8 = True

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, images: Tensor, targets: Tensor, generator: torch.Generator):
        n = len(images)
        flip = torch.rand(n, generator=generator) < self.p
        # Pick each image from [batch, mirrored batch]: one index_select, 4x faster than a
        # broadcast torch.where.
        pick = torch.arange(n) + n * flip.long()
        images = torch.cat([images, images.flip(self.dim)]).index_select(0, pick)
        if _is_mask(images, targets):
            targets = torch.cat([targets, targets.flip(self.dim)]).index_select(0, pick)
        return images, targets

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p})"


class VerticalFlip(HorizontalFlip):
    """Mirror each image top-bottom with probability p (microscopy; not for photos)."""

    dim = -2


class PadCrop:
    """Pad by `padding` pixels and crop back to the original size at a random offset per image:
    random translations of up to +-padding pixels (the CIFAR/Fashion-MNIST recipe of the ResNet
    paper, Sec. 4.2). mode "reflect" mirrors the border (without repeating the edge pixel, as
    `F.pad`), "zeros" pads with black; masks pad with `mask_fill` (or reflect)."""

    exact_on_uint8 = True

    def __init__(self, padding: int = 4, mode: str = "reflect", mask_fill: int = 0) -> None:
        if mode not in ("reflect", "zeros"):
            raise UsageError(f"PadCrop: mode must be 'reflect' or 'zeros', not {mode!r}")
        self.padding = padding
        self.mode = mode
        self.mask_fill = mask_fill

    def _pad(self, x: Tensor, fill: float) -> Tensor:
        p = self.padding
        if self.mode == "reflect":
            return F.pad(x, (p, p, p, p), mode="reflect")
        return F.pad(x, (p, p, p, p), mode="constant", value=fill)

    @staticmethod
    def _crop(padded: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
        # Two gathers with per-sample row/column indices: (N, C, H+2p, W+2p) -> (N, C, H, W).
        n, c, _, wp = padded.shape
        h, w = rows.shape[1], cols.shape[1]
        x = padded.gather(2, rows.view(n, 1, h, 1).expand(n, c, h, wp))
        return x.gather(3, cols.view(n, 1, 1, w).expand(n, c, h, w))

    def __call__(self, images: Tensor, targets: Tensor, generator: torch.Generator):
        p = self.padding
        n, _, h, w = images.shape
        offsets = torch.randint(0, 2 * p + 1, (2, n), generator=generator)
        if p == 0:
            return images, targets
        images = self._windows(self._pad(images, 0.0), offsets, h, w)
        if _is_mask(images, targets):
            m = self._pad(targets.unsqueeze(1).float(), float(self.mask_fill))
            targets = self._windows(m, offsets, h, w).squeeze(1).to(targets.dtype)
        return images, targets

    @staticmethod
    def _windows(padded: Tensor, offsets: Tensor, h: int, w: int) -> Tensor:
        # Every h x w window of the padded batch is a strided view of its storage, starting at
        # element i*C*Hp*Wp + row*Wp + col; one index_select copies each image's window (row
        # copies, no per-pixel index tensor: 3-4x faster than two gathers or advanced indexing).
        padded = padded.contiguous()
        n, c, hp, wp = padded.shape
        m = padded.numel() - ((c - 1) * hp * wp + (h - 1) * wp + w) + 1
        view = padded.view(-1).as_strided((m, c, h, w), (1, hp * wp, wp, 1))
        starts = torch.arange(n) * (c * hp * wp) + offsets[0] * wp + offsets[1]
        return view.index_select(0, starts)

    def __repr__(self) -> str:
        return f"PadCrop(padding={self.padding}, mode={self.mode!r})"


class RandomResizedCrop:
    """Crop a random area (a `scale` fraction of the image, aspect ratio in `ratio`) and resize
    it to `size` -- GoogLeNet's "various sized patches" (Szegedy et al. 2015, Sec. 6), as in
    torchvision. Vectorised: one affine grid per batch, bilinear for images, nearest for masks.
    Where torchvision retries up to 10 times for a box that fits, boxes here are clipped to the
    image, which makes crops slightly squarer for extreme ratios."""

    def __init__(
        self,
        size: int | Sequence[int],
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
    ) -> None:
        self.size = _hw(size)
        self.scale = scale
        self.ratio = ratio

    def __call__(self, images: Tensor, targets: Tensor, generator: torch.Generator):
        n, c, h, w = images.shape
        u = torch.rand(4, n, generator=generator, dtype=torch.float64)
        area = self.scale[0] + (self.scale[1] - self.scale[0]) * u[0]
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(lo + (hi - lo) * u[1])  # width / height, in pixels
        # Box sides as fractions of the image sides: (fw*W) * (fh*H) = area*W*H, fw*W/(fh*H) = r.
        fw = torch.sqrt(area * aspect * h / w).clamp(max=1.0)
        fh = torch.sqrt(area / aspect * w / h).clamp(max=1.0)
        # Box centre in normalised [-1, 1] coordinates, uniform over the positions that fit.
        cx = (2 * u[2] - 1) * (1 - fw)
        cy = (2 * u[3] - 1) * (1 - fh)
        theta = torch.zeros(n, 2, 3, dtype=torch.float64)
        theta[:, 0, 0], theta[:, 0, 2] = fw, cx
        theta[:, 1, 1], theta[:, 1, 2] = fh, cy
        grid = F.affine_grid(theta.to(images.dtype), [n, c, *self.size], align_corners=False)
        out = F.grid_sample(
            images, grid, mode="bilinear", padding_mode="border", align_corners=False
        )
        if _is_mask(images, targets):
            targets = _sample_masks(targets, grid, 0)
        return out, targets

    def __repr__(self) -> str:
        return f"RandomResizedCrop({self.size}, scale={self.scale}, ratio={self.ratio})"


class ColorJitter:
    """Random brightness, contrast and saturation per image, each factor uniform in
    [1 - s, 1 + s] (AlexNet varied intensities, Sec. 4.1; torchvision's ColorJitter without hue).

    brightness scales the image; contrast blends it with its mean grey level; saturation blends
    it with its grey version -- for grey images (C = 1) that is the image itself, so saturation
    is a no-op and grey stays grey. Applied in that fixed order; results clamped to [0, 1].
    """

    def __init__(self, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4):
        self.brightness = brightness
        self.contrast = contrast
        self.saturation = saturation

    @staticmethod
    def _grey(x: Tensor) -> Tensor:
        if x.shape[1] == 1:
            return x
        w = torch.tensor(_LUMA, dtype=x.dtype).view(1, 3, 1, 1)
        return (x * w).sum(1, keepdim=True)

    def __call__(self, images: Tensor, targets: Tensor, generator: torch.Generator):
        n = len(images)
        u = torch.rand(3, n, 1, 1, 1, generator=generator, dtype=images.dtype) * 2 - 1
        b = 1 + self.brightness * u[0]
        c = 1 + self.contrast * u[1]
        s = 1 + self.saturation * u[2]
        x = (images * b).clamp_(0, 1)
        mean = self._grey(x).mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - mean) * c + mean).clamp_(0, 1)
        if x.shape[1] == 3:
            g = self._grey(x)
            x = ((x - g) * s + g).clamp_(0, 1)
        return x, targets

    def __repr__(self) -> str:
        return f"ColorJitter({self.brightness}, {self.contrast}, {self.saturation})"


class RandomErasing:
    """Random erasing (Zhong et al. 2017, "Random Erasing Data Augmentation", Alg. 1): with
    probability p, a rectangle of area `scale` x the image's (0.02-0.4) and aspect ratio in
    [ratio, 1 / ratio] (0.3-3.33) is filled with uniform random values in [0, 1] -- per pixel
    and channel, the paper's choice. Vectorised: one box per image drawn as a batch; where the
    paper retries a box that does not fit, its sides are clipped to the image. Masks are left
    alone (the class of a pixel does not change because it is hidden).
    """

    def __init__(
        self, p: float = 0.5, scale: tuple[float, float] = (0.02, 0.4), ratio: float = 0.3
    ) -> None:
        if not 0.0 <= p <= 1.0:
            raise DataError(f"random erasing probability must lie in [0, 1], not {p}")
        self.p = p
        self.scale = scale
        self.ratio = ratio

    def __call__(self, images: Tensor, targets: Tensor, generator: torch.Generator):
        n, c, h, w = images.shape
        u = torch.rand(5, n, generator=generator)
        noise = torch.rand(images.shape, generator=generator, dtype=images.dtype)
        area = (self.scale[0] + (self.scale[1] - self.scale[0]) * u[0]) * (h * w)
        lo, hi = math.log(self.ratio), -math.log(self.ratio)
        aspect = torch.exp(lo + (hi - lo) * u[1])  # height / width
        bh = torch.sqrt(area * aspect).round().clamp(1, h)
        bw = torch.sqrt(area / aspect).round().clamp(1, w)
        top = (u[2] * (h - bh + 1)).floor()
        left = (u[3] * (w - bw + 1)).floor()
        rows = torch.arange(h, dtype=top.dtype).view(1, h)
        cols = torch.arange(w, dtype=left.dtype).view(1, w)
        in_rows = (rows >= top.view(n, 1)) & (rows < (top + bh).view(n, 1))
        in_cols = (cols >= left.view(n, 1)) & (cols < (left + bw).view(n, 1))
        box = in_rows.view(n, 1, h, 1) & in_cols.view(n, 1, 1, w) & (u[4] < self.p).view(n, 1, 1, 1)
        return torch.where(box, noise, images), targets

    def __repr__(self) -> str:
        return f"RandomErasing(p={self.p}, scale={self.scale}, ratio={self.ratio})"


AUGMENTATIONS = ("none", "flip-crop", "crop", "photo")
FLIPPING = ("flip-crop", "photo")  # the ones that mirror images: test-time flips fit their nets


def default_augmentation(
    kind: str, size: int | Sequence[int], *, padding: int | None = None, erase: float = 0.0
) -> BatchTransform:
    """A ready-made training transform that outputs batches of `size`.

    - "none": only resize to `size` (also what evaluation uses).
    - "flip-crop": resize, pad-and-crop by `padding` (default max(2, size // 12): 2 px at
      28-32 px, the Fashion-MNIST/CIFAR recipe; below the side, as reflect padding needs) with
      reflect padding, horizontal flip.
    - "crop": the same without the flip (digits and text, where mirroring changes the class).
    - "photo": random resized crop (scale 0.35-1) to `size`, horizontal flip, colour jitter
      0.3 -- for transfer learning on photos, where a model sees each image many times.

    erase: the probability of `RandomErasing` appended to a training transform (0: off; the
    paper uses 0.5). Not applied with "none", the evaluation transform.
    """
    hw = _hw(size)
    pad = padding if padding is not None else max(2, min(hw) // 12)
    # Reflect padding needs a pad below the side: 2-px images get 1, 1-px ones none.
    pad = min(pad, min(hw) - 1)
    if kind == "none":
        return Resize(hw)
    if kind == "flip-crop":
        steps: list[BatchTransform] = [Resize(hw), PadCrop(pad), HorizontalFlip()]
    elif kind == "crop":
        steps = [Resize(hw), PadCrop(pad)]
    elif kind == "photo":
        steps = [RandomResizedCrop(hw, scale=(0.35, 1.0)), HorizontalFlip(),
                 ColorJitter(0.3, 0.3, 0.3)]
    else:
        raise DataError(
            f"unknown augmentation {kind!r}: choose one of {', '.join(AUGMENTATIONS)}")
    if erase > 0:
        steps.append(RandomErasing(erase))
    return Compose(steps)


class ProgressiveResize:
    """Progressive resizing (fast.ai's DAWNBench ImageNet runs, 2018): the batches of the first
    `epochs` epochs leave `transform` and are then resized to the smaller `size`, so those
    epochs cost roughly (size / full size)^2 of a full one; later epochs pass through. The
    last epochs at full size let the net (and its BatchNorm statistics) settle on the size it
    is evaluated at. The loader tells it the epoch (`set_epoch`), so a resumed run replays the
    same sizes."""

    def __init__(self, transform: BatchTransform, size: int | Sequence[int], epochs: int) -> None:
        self.transform = transform
        self.small = Resize(size)
        self.epochs = epochs
        self.epoch = 0
        self.accepts_uint8 = getattr(transform, "accepts_uint8", False)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def smaller_size(self, epoch: int) -> int | None:
        """The side the batches of `epoch` are shrunk to, None for a full-size epoch."""
        return self.small.size[0] if epoch < self.epochs else None

    def __call__(self, images: Tensor, targets: Tensor, generator: torch.Generator):
        images, targets = self.transform(images, targets, generator)
        if self.epoch < self.epochs:
            images, targets = self.small(images, targets, generator)
        return images, targets

    def __repr__(self) -> str:
        return f"ProgressiveResize({self.transform!r}, {self.small.size}, epochs<{self.epochs})"


# ---------------------------------------------------------------------------------------------
# Segmentation geometry (issue 7): crops, 90-degree rotations and U-Net's elastic deformation.
# Same contract as above: masks (N, H, W) follow the image geometry, sampled nearest-neighbour.


class RandomCrop:
    """Cut a random `size` window out of each image (no resizing): U-Net trains on tiles of
    larger images. Integer offsets, so image and mask pixels stay exactly aligned."""

    exact_on_uint8 = True

    def __init__(self, size: int | Sequence[int]) -> None:
        self.size = _hw(size)

    def __call__(self, images: Tensor, targets: Tensor, generator: torch.Generator):
        n, _, h, w = images.shape
        th, tw = self.size
        if (th, tw) == (h, w):
            return images, targets
        if th > h or tw > w:
            raise DataError(f"crop {th}x{tw} is larger than the images ({h}x{w})")
        top = torch.randint(0, h - th + 1, (n,), generator=generator)
        left = torch.randint(0, w - tw + 1, (n,), generator=generator)
        rows = top.view(n, 1) + torch.arange(th)
        cols = left.view(n, 1) + torch.arange(tw)
        images = PadCrop._crop(images, rows, cols)
        if _is_mask_hw(targets, h, w):
            targets = PadCrop._crop(targets.unsqueeze(1), rows, cols).squeeze(1)
        return images, targets

    def __repr__(self) -> str:
        return f"RandomCrop({self.size})"


def _is_mask_hw(targets: Tensor, h: int, w: int) -> bool:
    return targets.ndim == 3 and tuple(targets.shape[-2:]) == (h, w)


class RandomRot90:
    """Rotate each image by k * 90 degrees, k uniform in {0, 1, 2, 3} (microscopy has no "up");
    non-square batches use k in {0, 2} so the size is kept. Exact: no interpolation."""

    exact_on_uint8 = True

    def __call__(self, images: Tensor, targets: Tensor, generator: torch.Generator):
        n, _, h, w = images.shape
        k = torch.randint(0, 4, (n,), generator=generator)
        if h != w:
            k = (k % 2) * 2
        mask = _is_mask(images, targets)
        images, targets = images.clone(), targets.clone() if mask else targets
        for turns in (1, 2, 3):
            sel = k == turns
            if bool(sel.any()):
                images[sel] = torch.rot90(images[sel], turns, dims=(-2, -1))
                if mask:
                    targets[sel] = torch.rot90(targets[sel], turns, dims=(-2, -1))
        return images, targets

    def __repr__(self) -> str:
        return "RandomRot90()"


class ElasticDeform:
    """U-Net's elastic deformation (Ronneberger et al. 2015, Sec. 3.1): random displacement
    vectors on a coarse `grid` x `grid` lattice (3 x 3 in the paper), drawn from a Gaussian with
    `sigma` pixels standard deviation (10 in the paper), interpolated bicubically to a smooth
    per-pixel displacement field. Images are resampled bilinearly, masks nearest-neighbour, both
    with mirrored borders. Applied to each image with probability p; one `grid_sample` per batch.
    """

    def __init__(self, sigma: float = 10.0, grid: int = 3, p: float = 1.0) -> None:
        self.sigma = sigma
        self.grid = grid
        self.p = p

    def __call__(self, images: Tensor, targets: Tensor, generator: torch.Generator):
        n, _, h, w = images.shape
        coarse = torch.randn(n, 2, self.grid, self.grid, generator=generator) * self.sigma
        coarse *= (torch.rand(n, 1, 1, 1, generator=generator) < self.p).to(coarse.dtype)
        disp = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)
        # Pixel displacements -> normalised grid units (align_corners=False: 2 / size per pixel).
        ys = (torch.arange(h, dtype=torch.float32) + 0.5) * (2.0 / h) - 1.0
        xs = (torch.arange(w, dtype=torch.float32) + 0.5) * (2.0 / w) - 1.0
        gx = xs.view(1, 1, w) + disp[:, 0] * (2.0 / w)
        gy = ys.view(1, h, 1) + disp[:, 1] * (2.0 / h)
        grid = torch.stack([gx, gy], dim=-1).to(images.dtype)
        out = F.grid_sample(
            images, grid, mode="bilinear", padding_mode="reflection", align_corners=False
        )
        if _is_mask(images, targets):
            m = targets.unsqueeze(1).to(torch.float32)
            m = F.grid_sample(
                m, grid.float(), mode="nearest", padding_mode="reflection", align_corners=False
            )
            targets = m.squeeze(1).round_().to(targets.dtype)
        return out, targets

    def __repr__(self) -> str:
        return f"ElasticDeform(sigma={self.sigma}, grid={self.grid}, p={self.p})"
