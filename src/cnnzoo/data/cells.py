"""Synthetic fluorescence-style microscopy: touching cells with exact instance masks.

U-Net's showcase (Ronneberger et al. 2015, Sec. 3 and Fig. 3) is separating touching cells, and a
user of cnnzoo should be able to try that without downloading anything. Each image holds random
star-shaped blobs, many of them placed against a neighbour so that they touch or overlap (the
overlap is split at the line of equal normalised distance, so touching cells share a border).
Cells have a dimmer rim (which is what makes a seam between two touching cells visible at all),
a textured interior and sometimes a nucleus; the whole field gets uneven illumination, optical
blur and sensor noise.

Masks follow the ISBI cell-tracking convention the paper trains on: the semantic mask is 1 on
cells and 0 on background *and on the one-pixel seam on each side of a border between two
touching cells*, so that every cell is its own connected component of the foreground; the
instance mask keeps every pixel of every cell with its id (1..n).

Everything is numpy/scipy, vectorised per cell over its bounding box; image `i` of a seed is the
same whatever `n` is (each image draws from `numpy.random.default_rng([seed, split, i])`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

CLASSES = ("background", "cell")


@dataclass
class CellImages:
    """images: uint8 (N, H, W) grey; instances: int32 (N, H, W), 0 = background, 1..n = cells;
    masks: uint8 (N, H, W) semantic classes (0 background / seams, 1 cell)."""

    images: np.ndarray
    instances: np.ndarray
    masks: np.ndarray

    def __len__(self) -> int:
        return len(self.images)


def separation_seams(instances: np.ndarray) -> np.ndarray:
    """Pixels of a cell that have a 4-neighbour in a *different* cell (both sides of a border).

    Works on (H, W) or (N, H, W) arrays (the seams never cross images).
    """
    lab = instances
    seam = np.zeros(lab.shape, dtype=bool)
    for axis in (-2, -1):
        a = np.swapaxes(lab, axis, -1)
        s = np.swapaxes(seam, axis, -1)
        left, right = a[..., :-1], a[..., 1:]
        differ = (left != right) & (left > 0) & (right > 0)
        s[..., :-1] |= differ
        s[..., 1:] |= differ
    return seam


def semantic_from_instances(instances: np.ndarray) -> np.ndarray:
    """The ISBI-style semantic mask: cells minus the seams between touching cells."""
    return ((instances > 0) & ~separation_seams(instances)).astype(np.uint8)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return field / (field.std() + 1e-8)


def _place_cells(
    rng: np.random.Generator, h: int, w: int, density: float, radius: tuple[float, float]
) -> list[tuple[float, float, float]]:
    """(y, x, r) of each cell; about `touching` of them start from an existing neighbour."""
    mean_r = sum(radius) / 2
    n = max(1, rng.poisson(density * h * w / (np.pi * mean_r**2)))
    cells: list[tuple[float, float, float]] = []
    for _ in range(n):
        r = rng.uniform(*radius)
        if cells and rng.random() < 0.6:
            # Against a neighbour: centre distance 0.8-1.0 of the radii sum -> touching/overlap.
            y0, x0, r0 = cells[rng.integers(len(cells))]
            angle = rng.uniform(0, 2 * np.pi)
            d = (r0 + r) * rng.uniform(0.8, 1.0)
            y, x = y0 + d * np.sin(angle), x0 + d * np.cos(angle)
        else:
            y, x = rng.uniform(0, h), rng.uniform(0, w)
        if -r / 2 < y < h + r / 2 and -r / 2 < x < w + r / 2:
            cells.append((y, x, r))
    return cells


def make_cell_image(
    rng: np.random.Generator,
    size: tuple[int, int] = (256, 256),
    *,
    density: float = 0.35,
    radius: tuple[float, float] = (9.0, 17.0),
    noise: float = 0.05,
    blur: float = 1.2,
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image (uint8 H x W) and its instance mask (int32, 0 = background).

    density: expected fraction of the field covered by cells (before overlaps).
    radius: range of mean cell radii in pixels. noise: std of additive Gaussian noise (0..1 scale).
    """
    h, w = size
    cells = _place_cells(rng, h, w, density, radius)
    # best normalised distance rho = |p - c| / r(theta) so far, and the cell that owns the pixel
    best = np.full((h, w), np.inf, dtype=np.float32)
    labels = np.zeros((h, w), dtype=np.int32)
    intensity = np.zeros((h, w), dtype=np.float32)
    harmonics = np.arange(2, 6)
    for k, (cy, cx, r) in enumerate(cells, start=1):
        amp = rng.uniform(0.0, 0.12, size=len(harmonics)) / harmonics**0.5
        phase = rng.uniform(0, 2 * np.pi, size=len(harmonics))
        reach = r * (1 + amp.sum()) + 1
        y0, y1 = max(0, int(cy - reach)), min(h, int(cy + reach) + 2)
        x0, x1 = max(0, int(cx - reach)), min(w, int(cx + reach) + 2)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        dy, dx = yy - cy, xx - cx
        theta = np.arctan2(dy, dx)
        wobble = amp[:, None, None] * np.cos(
            harmonics[:, None, None] * theta + phase[:, None, None]
        )
        radius_at = r * (1 + wobble.sum(0))
        rho = np.hypot(dy, dx) / radius_at
        inside = rho < 1.0
        win = best[y0:y1, x0:x1]
        take = inside & (rho < win)
        win[take] = rho[take]
        labels[y0:y1, x0:x1][take] = k
        # Bright cytoplasm with a dimmer rim, and a darker nucleus off the centre half the time.
        level = rng.uniform(0.45, 0.9)
        profile = level * (1.0 - 0.45 * rho**4)
        if rng.random() < 0.5:
            ny, nx = cy + rng.normal(0, r * 0.15), cx + rng.normal(0, r * 0.15)
            nucleus = np.hypot(yy - ny, xx - nx) < r * rng.uniform(0.3, 0.45)
            profile = np.where(nucleus, profile * 0.75, profile)
        intensity[y0:y1, x0:x1][take] = profile[take]
    # Keep only the cells that own at least a few pixels; renumber 1..n.
    ids, counts = np.unique(labels, return_counts=True)
    keep = ids[(ids > 0) & (counts >= 30)]  # drop slivers of mostly hidden cells
    lut = np.zeros(labels.max() + 1, dtype=np.int32)
    lut[keep] = np.arange(1, len(keep) + 1)
    labels = lut[labels]
    intensity[labels == 0] = 0.0

    texture = 1.0 + 0.12 * _smooth_noise(rng, (h, w), 1.5)
    background = 0.08 + 0.03 * _smooth_noise(rng, (h, w), 8.0)
    img = background + intensity * texture
    img = ndimage.gaussian_filter(img, blur)
    # Uneven illumination: a tilted plane times a very smooth field (vignetting-like).
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    tilt = rng.uniform(-0.25, 0.25, size=2)
    plane = 1.0 + tilt[0] * (gy / h - 0.5) + tilt[1] * (gx / w - 0.5)
    img = img * plane * (1.0 + 0.1 * _smooth_noise(rng, (h, w), max(h, w) / 6))
    img = img + rng.normal(0.0, noise, size=(h, w))
    img = np.clip(img * 255.0, 0, 255).astype(np.uint8)
    return img, labels


SPLITS = {"train": 0, "val": 1, "test": 2}


def make_cells(
    n: int,
    *,
    size: int | tuple[int, int] = 256,
    seed: int = 0,
    split: str = "train",
    **kwargs: float,
) -> CellImages:
    """`n` synthetic cell images with instance and semantic masks, reproducible from `seed`;
    'train', 'val' and 'test' draw from disjoint random streams."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    hw = (size, size) if isinstance(size, int) else tuple(size)
    images = np.empty((n, *hw), dtype=np.uint8)
    instances = np.empty((n, *hw), dtype=np.int32)
    for i in range(n):
        images[i], instances[i] = make_cell_image(
            np.random.default_rng([seed, SPLITS[split], i]), hw, **kwargs
        )
    return CellImages(images, instances, semantic_from_instances(instances))


def export_cells(
    out_dir: str | Path,
    *,
    n: int = 200,
    size: int = 256,
    seed: int = 0,
    split: str = "train",
    overwrite: bool = False,
) -> Path:
    """Write `n` cell images as `images/`, `masks/` (0/255 PNG), `instances/` (16-bit PNG ids)
    and `classes.txt`: the layout `cnnzoo train unet --task segmentation --data DIR` reads."""
    from ..errors import DataError
    from ..paths import write_text_atomic
    from .images import write_png

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DataError(f"{out} is not empty: choose a new folder or pass --overwrite.")
    for sub in ("images", "masks", "instances"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    data = make_cells(n, size=size, seed=seed, split=split)
    for i in range(n):
        stem = f"{split}_{i:04d}.png"
        write_png(data.images[i], out / "images" / stem)  # a kill leaves no cut PNG
        write_png(data.masks[i] * 255, out / "masks" / stem)
        write_png(data.instances[i].astype(np.uint16), out / "instances" / stem)
    write_text_atomic(out / "classes.txt", "\n".join(CLASSES) + "\n")
    return out


def export_cells_dataset(dest: Path, options: Any) -> str:
    """`cnnzoo data export cells DIR [--per-class N] [--split train|test] [--seed S]`:
    N images (default 200) of 256 x 256 pixels."""
    n = options.per_class or 200
    export_cells(dest, n=n, seed=options.seed, split=options.split, overwrite=options.overwrite)
    return (
        f"wrote {n} synthetic cell images ({options.split}, seed {options.seed}) to {dest}: "
        "images/, masks/ (0/255), instances/ (16-bit ids), classes.txt"
    )
