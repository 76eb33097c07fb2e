"""Pictures of masks: contours drawn over images, and the validation grid of the report."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..engine.report import new_figure, quiet_glyphs, save_figure

# Classes 1..6 are drawn in these colours, which stand out on grey microscopy; ground truth is
# always green.
PALETTE = np.array(
    [[255, 0, 255], [255, 160, 0], [0, 200, 255], [255, 255, 0], [255, 60, 60], [160, 100, 255]],
    dtype=np.uint8,
)
TRUTH = np.array([0, 255, 0], dtype=np.uint8)


def _voc_colour(index: int) -> list[int]:
    """Pascal VOC's colour of a class index (its devkit's bit-interleaved colour map)."""
    rgb = [0, 0, 0]
    for shift in range(7, -1, -1):
        for channel in range(3):
            rgb[channel] |= ((index >> channel) & 1) << shift
        index >>= 3
    return rgb


# One colour per class index, the same in `cnnzoo segment`'s palette masks, its overlays and the
# validation grid: 0 (background) black, 1..6 PALETTE, then Pascal VOC's colour map, whose
# colours are all other than these, so that no two classes share one (PALETTE cycled, and class
# 7 was drawn as class 1); 255 ('ignore') is VOC's cream (224, 224, 192).
CLASS_COLOURS = np.array([_voc_colour(i) for i in range(256)], dtype=np.uint8)
CLASS_COLOURS[1 : 1 + len(PALETTE)] = PALETTE


def contours(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of the foreground regions: a pixel of class >= 1 with a 4-neighbour of a
    different class (or the image edge does not count). Touching cells separated by a one-pixel
    background seam get two outlines."""
    m = np.asarray(mask)
    edge = np.zeros(m.shape, dtype=bool)
    diff_v = m[1:] != m[:-1]
    diff_h = m[:, 1:] != m[:, :-1]
    edge[1:] |= diff_v
    edge[:-1] |= diff_v
    edge[:, 1:] |= diff_h
    edge[:, :-1] |= diff_h
    return edge & (m > 0) & (m != 255)


def to_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1) or (H, W, 3) uint8 -> (H, W, 3) uint8."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[..., None]
    return np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img[..., :3]


def overlay(image: np.ndarray, pred: np.ndarray, truth: np.ndarray | None = None) -> np.ndarray:
    """The image in RGB with the predicted class contours (magenta for class 1, then
    orange, cyan, ...) and, if given, the ground-truth contours in green underneath."""
    out = to_rgb(image).copy()
    if truth is not None:
        out[contours(truth)] = TRUTH
    edge = contours(pred)
    out[edge] = CLASS_COLOURS[np.asarray(pred)[edge].astype(np.int64)]
    return out


@quiet_glyphs
def save_validation_grid(
    images: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    preds: Sequence[np.ndarray],
    path: str | Path,
    *,
    titles: Sequence[str] | None = None,
    columns: int = 4,
    class_names: Sequence[str] | None = None,
) -> Path:
    """A PNG grid of validation images with ground-truth (green) and predicted (magenta)
    contours; the valid-mode prediction may be smaller than the image (it is centred). With
    more than two `class_names`, each class's predicted contours have their colour
    (`CLASS_COLOURS`), and a legend under the grid names them: the title said 'prediction
    (magenta)' over orange and cyan contours of classes it did not name."""
    n = len(images)
    cols = min(columns, n)
    rows = -(-n // cols)
    # constrained: titles never run into the row above
    fig = new_figure(figsize=(max(3.2 * cols, 6.4), 3.5 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        img, t, p = np.asarray(images[i]), np.asarray(truths[i]), np.asarray(preds[i])
        top, left = (img.shape[0] - p.shape[0]) // 2, (img.shape[1] - p.shape[1]) // 2
        img = img[top : top + p.shape[0], left : left + p.shape[1]]
        t = t[top : top + p.shape[0], left : left + p.shape[1]]
        ax = axes.ravel()[i]
        ax.imshow(overlay(img, p, t), interpolation="nearest")
        if titles is not None:
            ax.set_title(titles[i], fontsize=8, parse_math=False)  # file names, not maths
    if class_names is None or len(class_names) <= 2:
        fig.suptitle("validation: ground truth (green) vs prediction (magenta)", fontsize=10)
        return save_figure(fig, path)
    from matplotlib.patches import Patch

    fig.suptitle("validation: ground truth (green) vs prediction (per class, below)",
                 fontsize=10)
    handles = [Patch(color=CLASS_COLOURS[k] / 255, label=str(name))
               for k, name in enumerate(class_names) if k > 0]
    legend = fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6),
                        fontsize=8, frameon=False)
    for text in legend.get_texts():
        text.set_parse_math(False)  # class names, not maths: "$100 to $200"
    return save_figure(fig, path)
