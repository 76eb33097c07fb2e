"""Segmentation losses and the U-Net border weight map.

Ronneberger, Fischer and Brox 2015, "U-Net: Convolutional Networks for Biomedical Image
Segmentation", Sec. 3, Eq. 1-2: the energy is a pixel-wise soft-max cross-entropy weighted by

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2)),   w0 = 10, sigma ~ 5 px,

where w_c balances the class frequencies and d1, d2 are the distances to the border of the
nearest and the second nearest cell. The second term is large only in the narrow background gaps
between touching cells, which is what makes the network leave those gaps open.

cnnzoo's choices (the paper leaves them open):
- the border term is added on background pixels only (a pixel inside a cell is at distance 0
  from its own cell, and the paper's Fig. 3d shows the weight on the gaps);
- w_c(k) = 1 / (K * f_k) for the K classes present, f_k the pixel frequency of class k, so the
  class weights average to 1 over the pixels they were computed on (the training set);
- distances are Euclidean (scipy's exact EDT) to the nearest pixel of each cell; each cell is
  measured only within `6 sigma` of its bounding box, beyond which the term is below
  w0 * exp(-18) ~ 2e-7 — so the map costs a few EDTs of cell-sized windows, not one per image
  per cell.

The weight map is computed once per training image, before augmentation, and travels with the
mask as a second target channel (targets (N, 2, H, W) float: class index, weight), so the same
flips, rotations, crops and elastic warps apply to it (see `cnnzoo.segmentation.task`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor

from ..engine.task import balanced_weights
from ..errors import UsageError

IGNORE_INDEX = 255
LOSSES = ("ce", "dice", "ce+dice", "weighted_ce")


def balanced_class_weights(masks: Sequence[np.ndarray] | np.ndarray, num_classes: int) -> np.ndarray:
    """w_c(k) = 1 / (K f_k) over the classes present (f_k: pixel frequency), 0 for absent ones;
    the pixel-average of w_c is then 1. `IGNORE_INDEX` pixels are not counted."""
    counts = np.zeros(num_classes, dtype=np.float64)
    for m in masks:
        m = np.asarray(m)
        counts += np.bincount(m[m != IGNORE_INDEX].ravel(), minlength=num_classes)[:num_classes]
    return balanced_weights(counts).numpy().astype(np.float32)  # a classifier's formula too


def border_distances(instances: np.ndarray, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """d1, d2: per pixel, the distance to the nearest and the second nearest instance (inf where
    there is none within `cutoff` of that instance's bounding box)."""
    h, w = instances.shape
    d1 = np.full((h, w), np.inf, dtype=np.float32)
    d2 = np.full((h, w), np.inf, dtype=np.float32)
    pad = int(math.ceil(cutoff))
    for label, box in enumerate(ndimage.find_objects(instances), start=1):
        if box is None:
            continue
        ys, xs = box
        win = (
            slice(max(ys.start - pad, 0), min(ys.stop + pad, h)),
            slice(max(xs.start - pad, 0), min(xs.stop + pad, w)),
        )
        d = ndimage.distance_transform_edt(instances[win] != label).astype(np.float32)
        a, b = d1[win], d2[win]
        d2[win] = np.minimum(b, np.maximum(a, d))
        d1[win] = np.minimum(a, d)
    return d1, d2


def unet_weight_map(
    instances: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    class_weights: Sequence[float] | np.ndarray | None = None,
    w0: float = 10.0,
    sigma: float = 5.0,
) -> np.ndarray:
    """The paper's weight map w(x) (Eq. 2) as float32 (H, W).

    instances: int (H, W), 0 = background, 1..n = cells. mask: the semantic mask (class indices);
        default `instances > 0`. Instance pixels the mask calls background (the seams between
        touching cells) count as background, as in the paper's training masks.
    class_weights: w_c per class; default `balanced_class_weights([mask])` of this image.
    """
    instances = np.asarray(instances)
    mask = (instances > 0).astype(np.uint8) if mask is None else np.asarray(mask)
    if class_weights is None:
        class_weights = balanced_class_weights([mask], int(mask[mask != IGNORE_INDEX].max(initial=1)) + 1)
    wc = np.asarray(class_weights, dtype=np.float32)
    lut = np.zeros(256, dtype=np.float32)
    lut[: len(wc)] = wc  # IGNORE_INDEX pixels get weight 0
    weights = lut[mask.astype(np.uint8)]
    background = mask == 0
    cells = np.where(background, 0, instances).astype(np.int32)
    if cells.max() >= 2 and w0 > 0:
        cutoff = 6.0 * sigma
        d1, d2 = border_distances(cells, cutoff)
        s = d1 + d2
        near = background & np.isfinite(s)
        weights[near] += w0 * np.exp(-(s[near] ** 2) / (2.0 * sigma**2))
    return weights


def crop_to(target: Tensor, height: int, width: int) -> Tensor:
    """Centre-crop the last two dims of `target` to (height, width): a valid-convolution U-Net's
    output is smaller than its input, and the loss compares it with the centre of the mask."""
    h, w = target.shape[-2:]
    if (h, w) == (height, width):
        return target
    if h < height or w < width:
        raise ValueError(f"output {height}x{width} is larger than the target {h}x{w}")
    top, left = (h - height) // 2, (w - width) // 2
    return target[..., top : top + height, left : left + width]


def split_target(target: Tensor, height: int, width: int) -> tuple[Tensor, Tensor | None]:
    """(mask long (N, h, w), weight float (N, h, w) or None) from a (N, H, W) mask or a
    (N, 2, H, W) mask+weight target, centre-cropped to the output size."""
    target = crop_to(target, height, width)
    if target.dim() == 4:
        return target[:, 0].round().long(), target[:, 1].float()
    return target.long(), None


def dice_loss(logits: Tensor, mask: Tensor, *, smooth: float = 1.0) -> Tensor:
    """1 - mean over classes of the soft Dice (Milletari et al. 2016, V-Net, Eq. 1) summed over
    the whole batch; ignored pixels do not count. `smooth` keeps absent classes finite."""
    probs = logits.float().softmax(1)
    k = probs.shape[1]
    valid = (mask != IGNORE_INDEX).unsqueeze(1)
    onehot = F.one_hot(mask.clamp(max=k - 1), k).permute(0, 3, 1, 2).float() * valid
    probs = probs * valid
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    return 1.0 - ((2 * inter + smooth) / (denom + smooth)).mean()


def _mean_ce(logits: Tensor, mask: Tensor, class_weights: Tensor | None) -> Tensor:
    """Cross-entropy averaged over the labelled pixels as `F.cross_entropy` averages it (by the
    class weights' sum when given), but 0 for a batch with no labelled pixel: torch's mean is
    0 / 0 = NaN there, and a VOC-style crop that is all 'ignore' stopped training."""
    ce = F.cross_entropy(logits, mask, weight=class_weights, ignore_index=IGNORE_INDEX,
                         reduction="none")  # 0 on ignored pixels
    valid = mask != IGNORE_INDEX
    if class_weights is None:
        denom = valid.sum().to(ce.dtype)
    else:
        w = class_weights.to(ce.dtype)[mask.clamp(max=len(class_weights) - 1)]
        denom = (w * valid).sum()
    # No labelled pixel (or only zero-weight ones): the sum is 0, so is the loss, with a graph.
    return ce.sum() / denom.clamp(min=torch.finfo(ce.dtype).tiny)


def segmentation_loss(
    logits: Tensor, target: Tensor, kind: str = "ce", *, class_weights: Tensor | None = None
) -> Tensor:
    """Mean loss of a batch. kind: 'ce', 'dice', 'ce+dice' (sum) or 'weighted_ce' (needs the
    weight map as target channel 1; the mean of w(x) * CE(x) over the non-ignored pixels).

    `class_weights` weight plain CE per class (ignored for 'weighted_ce', whose map holds w_c).
    """
    if kind not in LOSSES:
        raise UsageError(f"unknown loss {kind!r}; choose one of {', '.join(LOSSES)}")
    logits = logits.float()  # fp32 even under bf16 autocast
    mask, weight = split_target(target, *logits.shape[-2:])
    if kind == "weighted_ce":
        if weight is None:
            raise ValueError("'weighted_ce' needs targets (N, 2, H, W) = (mask, weight map)")
        ce = F.cross_entropy(logits, mask, reduction="none", ignore_index=IGNORE_INDEX)
        valid = mask != IGNORE_INDEX
        return (ce * weight * valid).sum() / valid.sum().clamp(min=1)  # all ignored: 0
    loss = logits.new_zeros(())
    if kind in ("ce", "ce+dice"):
        loss = loss + _mean_ce(logits, mask, class_weights)
    if kind in ("dice", "ce+dice"):
        loss = loss + dice_loss(logits, mask)
    return loss
