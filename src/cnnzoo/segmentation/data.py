"""Segmentation data as tensors the engine's `BatchLoader` cuts batches from.

`load_segmentation(source)` turns 'cells' (the synthetic microscopy set), a folder of
`images/` + `masks/` or a CSV manifest into `SegmentationSet`s: images uint8 (N, C, H, W) and
targets. Targets are
- (N, H, W) uint8 class indices, or
- (N, 2, H, W) float32 = (class index, U-Net weight map) for the paper's weighted loss: the map is
  computed once per training image from its instance mask (`losses.unet_weight_map`) and
  stacked with the mask, so that `PairedTransform` moves both with the image.

Images of different sizes are cut into square tiles (mirror-padded when smaller), since a batch
needs one size; same-sized images stay whole and are randomly cropped per batch. Validation
tiles do not overlap and their padding is ignored, so each pixel counts once in the metrics.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.augment import (
    ColorJitter,
    Compose,
    ElasticDeform,
    HorizontalFlip,
    RandomCrop,
    RandomRot90,
    VerticalFlip,
)
from ..data.dataset import names_digest
from ..data.loader import BatchTransform
from ..data.masks import MaskPairs, class_list, classes_file, foreground_components
from ..errors import DataError
from ..text import plural, shown
from .losses import IGNORE_INDEX, balanced_class_weights, unet_weight_map
from .tiling import mirror_indices

log = logging.getLogger("cnnzoo.data")


@dataclass
class SegmentationSet:
    """images: uint8 (N, C, H, W); masks: uint8 (N, H, W); instances: int32 (N, H, W) or None.
    source_sizes: (H, W) of each image the N tiles were cut from, None when N whole images.
    regions: per validation tile, (top, bottom, left, right) of the part that is the image, not
    its mirrored padding (what the report draws); None when every tile is image throughout."""

    images: np.ndarray
    masks: np.ndarray
    instances: np.ndarray | None
    names: list[str]
    source_sizes: list[tuple[int, int]] | None = None
    regions: list[tuple[int, int, int, int]] | None = None

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_count(self) -> int:
        """The images the set holds or was cut from (`len` counts the tiles)."""
        return len(self) if self.source_sizes is None else len(self.source_sizes)

    def __repr__(self) -> str:  # a notebook line, as ImageDataset's (not the arrays)
        return f"SegmentationSet({self.describe()}, {plural(self.images.shape[1], 'channel')})"

    def subset(self, idx: Sequence[int] | np.ndarray) -> SegmentationSet:
        idx = np.asarray(idx, dtype=np.int64)
        inst = None if self.instances is None else self.instances[idx]
        return SegmentationSet(
            self.images[idx], self.masks[idx], inst, [self.names[i] for i in idx]
        )

    def describe(self) -> str:
        """'40 images of 256x256', or for tiles '3 images of 30x30 to 600x400 in 8 tiles of
        256x256' (what a startup line should say: the tiles are not the user's images)."""
        h, w = self.images.shape[-2:]
        if self.source_sizes is None:
            return f"{plural(len(self), 'image')} of {w}x{h}"  # width first
        by_area = sorted(self.source_sizes, key=lambda s: (s[0] * s[1], s))
        (h0, w0), (h1, w1) = by_area[0], by_area[-1]
        sizes = f"{w0}x{h0}" if (h0, w0) == (h1, w1) else f"{w0}x{h0} to {w1}x{h1}"
        return (f"{plural(self.image_count, 'image')} of {sizes} in "
                f"{plural(len(self), 'tile')} of {w}x{h}")

    def cell_instances(self) -> np.ndarray:
        """Instance ids: the stored ones, else the 4-connected components of the foreground."""
        if self.instances is not None:
            return self.instances
        out = np.zeros(self.masks.shape, dtype=np.int32)
        for i, m in enumerate(self.masks):
            out[i] = foreground_components(m)
        return out

    def targets(
        self, weighted: bool, class_weights: np.ndarray | None = None, *, w0: float = 10.0,
        sigma: float = 5.0,
    ) -> Tensor:
        """(N, H, W) uint8 masks, or (N, 2, H, W) float32 (mask, weight map) when `weighted`."""
        if not weighted:
            return torch.from_numpy(self.masks.copy())
        inst = self.cell_instances()
        out = np.empty((len(self), 2, *self.masks.shape[1:]), dtype=np.float32)
        for i in range(len(self)):
            out[i, 0] = self.masks[i]
            out[i, 1] = unet_weight_map(
                inst[i], self.masks[i], class_weights=class_weights, w0=w0, sigma=sigma
            )
        return torch.from_numpy(out)

    def image_tensor(self) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.images))

    def padded(self, size: int, margin: int = 0) -> SegmentationSet:
        """The set with images, masks and instances mirror-padded (centred) by `margin` px per
        side, then to at least `size` x `size`: images smaller than the smallest tile a net
        takes; the context a 'valid' net trims."""
        h, w = self.masks.shape[1:]
        th, tw = max(h + 2 * margin, size), max(w + 2 * margin, size)
        if (th, tw) == (h, w):
            return self

        def pad(a: np.ndarray) -> np.ndarray:  # (N, H, W, ...) -> padded
            return np.stack([_pad_to(x, th, tw) for x in a])

        images = pad(self.images.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2).copy()
        inst = None if self.instances is None else pad(self.instances)
        return SegmentationSet(images, pad(self.masks), inst, self.names, self.source_sizes)


@dataclass
class SegmentationSplits:
    """What `load_segmentation` gives: the training and validation sets (validation images of
    mixed sizes as tiles that count each pixel once), the class names in index order, one line
    per pair skipped, and the source as given ('cells', a folder, a manifest)."""

    train: SegmentationSet
    val: SegmentationSet
    classes: list[str]
    skipped: list[str]
    source: str
    val_files: str | None = None  # `PairSplit.val_files` of a folder's drawn validation pairs
    binary_255: bool | None = None  # the masks' 255 read as class 1 (None: cells, no masks read)
    # The classes were named (--classes, classes.txt, the cells' own), not inferred from the
    # mask values (whose absent values `load_mask_pairs` names in a note of its own).
    classes_named: bool = True

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_chans(self) -> int:
        return int(self.train.images.shape[1])

    def __repr__(self) -> str:  # as data.Splits: counts and sizes, not the arrays
        def part(s: SegmentationSet) -> str:
            return f"{len(s)} {'x'.join(map(str, s.images.shape[1:]))}"

        return (f"SegmentationSplits({self.source}: {self.num_classes} classes, "
                f"train={part(self.train)}, val={part(self.val)})")

    def class_weights(self) -> np.ndarray:
        """w_c of the weight map, from the training masks' pixel frequencies."""
        return balanced_class_weights(self.train.masks, self.num_classes)

    def describe(self) -> str:
        """'160 training and 40 validation images of 256x256', or with tiles what each part is
        cut from (for the run's startup line)."""
        whole = self.train.source_sizes is None and self.val.source_sizes is None
        if whole and self.train.images.shape[-2:] == self.val.images.shape[-2:]:
            h, w = self.train.images.shape[-2:]
            return f"{len(self.train)} training and {len(self.val)} validation images of {w}x{h}"
        return f"training: {self.train.describe()}; validation: {self.val.describe()}"


def _tiles_1d(n: int, size: int) -> list[int]:
    """Start offsets of ceil(n / size) windows of `size` spread evenly over 0..n-size."""
    if n <= size:
        return [0]
    count = math.ceil(n / size)
    return [round(i * (n - size) / (count - 1)) for i in range(count)]


def _pad_to(
    a: np.ndarray, height: int, width: int | None = None, *, fill: int | None = None
) -> np.ndarray:
    """Pad the first two axes up to `height` x `width` (default square), centred: mirrored
    (the paper's mirroring at image borders), or with the constant `fill`."""
    width = height if width is None else width
    ph, pw = max(height - a.shape[0], 0), max(width - a.shape[1], 0)
    if not (ph or pw):
        return a
    pads = [(ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)] + [(0, 0)] * (a.ndim - 2)
    if fill is not None:
        return np.pad(a, pads, mode="constant", constant_values=fill)
    return np.pad(a, pads, mode="symmetric")


def stack_pairs(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    instances: Sequence[np.ndarray] | None,
    names: Sequence[str],
    tile: int,
    *,
    count_once: bool = False,
) -> SegmentationSet:
    """Stack (H, W, C) images / (H, W) masks into one set: as they are when all share one size,
    else as `tile` x `tile` tiles (images smaller than a tile are mirror-padded).

    count_once (validation): the tiles do not overlap and the padding's mask is `IGNORE_INDEX`,
    so that every pixel of an image counts exactly once in the metrics; otherwise the mirrored
    border of a 30 x 30 image would count 70 times as much as the image itself."""
    if len({im.shape[:2] for im in images}) == 1:
        inst = None if instances is None else np.stack(instances).astype(np.int32)
        return SegmentationSet(
            np.stack(images).transpose(0, 3, 1, 2).copy(), np.stack(masks), inst, list(names)
        )
    out_img, out_mask, out_inst, out_names, regions = [], [], [], [], []
    for k, (im, m) in enumerate(zip(images, masks, strict=True)):
        inst = None if instances is None else instances[k]
        h, w = m.shape
        top, left = 0, 0
        if count_once:
            th, tw = (math.ceil(n / tile) * tile for n in m.shape)
            top, left = (th - h) // 2, (tw - w) // 2  # as _pad_to centres
            im, m = _pad_to(im, th, tw), _pad_to(m, th, tw, fill=IGNORE_INDEX)
            inst = None if inst is None else _pad_to(inst, th, tw, fill=0)
            ys, xs = range(0, th, tile), range(0, tw, tile)
        else:
            im, m = _pad_to(im, tile), _pad_to(m, tile)
            inst = None if inst is None else _pad_to(inst, tile)
            ys, xs = _tiles_1d(im.shape[0], tile), _tiles_1d(im.shape[1], tile)
        for y in ys:
            for x in xs:
                out_img.append(im[y : y + tile, x : x + tile])
                out_mask.append(m[y : y + tile, x : x + tile])
                if inst is not None:
                    out_inst.append(inst[y : y + tile, x : x + tile])
                out_names.append(f"{names[k]}@{y},{x}")
                # The image's part of the tile (validation pads with a mirror image of it).
                regions.append((max(top - y, 0), min(top + h - y, tile),
                                max(left - x, 0), min(left + w - x, tile)))
    return SegmentationSet(
        np.stack(out_img).transpose(0, 3, 1, 2).copy(),
        np.stack(out_mask),
        np.stack(out_inst).astype(np.int32) if instances is not None else None,
        out_names,
        [m.shape[:2] for m in masks],
        regions if count_once else None,
    )


def cell_set(split: str, n: int, *, size: int = 256, seed: int = 0) -> SegmentationSet:
    """`n` synthetic cell images of one stream ('train', 'val' or 'test': disjoint seeds)."""
    from ..data.cells import make_cells

    d = make_cells(n, size=size, seed=seed, split=split)
    return SegmentationSet(
        d.images[:, None], d.masks, d.instances, [f"cells-{split}/{i}" for i in range(n)]
    )


def load_cells(
    n_train: int = 160, n_val: int = 40, *, size: int = 256, seed: int = 0
) -> SegmentationSplits:
    """The synthetic cell set: training and validation images come from disjoint seed streams."""
    from ..data.cells import CLASSES

    train, val = (cell_set(split, n, size=size, seed=seed)
                  for split, n in (("train", n_train), ("val", n_val)))  # fmt: skip
    return SegmentationSplits(train, val, list(CLASSES), [], "cells")


def cells_val_count(cells: int, val_fraction: float = 0.2) -> int:
    """How many of `cells` synthetic images validate: the same hold-out rule as for a folder,
    at least one image on each side."""
    if cells < 2:
        raise DataError(
            f"cells has {plural(cells, 'image')}: need at least 2 to validate (--cells 2 or more)."
        )
    return min(max(1, round(cells * val_fraction)), cells - 1)


@dataclass
class PairSplit:
    """A folder's or manifest's pairs split into training and validation pairs (whole images).
    drawn: the validation pairs were drawn at random (no val/ folder, no val rows), so only the
    same seed, fraction and files give them again (`val_files`)."""

    train: MaskPairs
    val: MaskPairs
    drawn: bool

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    def val_files(self) -> str | None:
        """A short digest of which pairs were drawn for validation (None when not drawn): a run
        records it, so that scoring its validation split later can tell whether the folder
        still splits the same way (`segmentation.evaluation`)."""
        if not self.drawn:
            return None
        return names_digest(self.val.names)


def split_pairs(
    source: str | Path, *, classes: Sequence[str] | None = None, val_fraction: float = 0.2,
    seed: int = 0, binary_255: bool | None = None, channels: int | None = None,
    row_order: bool = False,
) -> PairSplit:
    """The training and validation pairs of a folder or manifest, as `load_segmentation` splits
    them (see there). binary_255 / channels: as `load_mask_pairs` takes them (a trained net's
    reading of 255 and its channels, when scoring it). row_order: a manifest's pairs in its
    rows' order, as runs before they were read in path order split them (`rows_ordered`)."""
    from ..data.masks import layout_folder, load_mask_pairs, part_reading, row_ranks

    source = Path(source)
    pairs = load_mask_pairs(source, classes=classes, binary_255=binary_255, channels=channels)
    if row_order and source.suffix.lower() == ".csv":
        pairs = _keep_skipped(pairs.subset(row_ranks(source, pairs)), pairs)
    val_dir = layout_folder(source, "val") if source.is_dir() else None
    if val_dir is not None and layout_folder(val_dir, "images").is_dir():
        # The training folder's reading of 255 (class 1 or ignore), whatever val/'s masks hold,
        # where its masks hold 255 (`part_reading`).
        val_pairs = load_mask_pairs(val_dir, classes=pairs.classes,
                                    binary_255=part_reading(pairs), channels=channels)
        return PairSplit(pairs, val_pairs, drawn=False)
    if pairs.splits is not None and "val" in pairs.splits:
        # A manifest's split column, as classification manifests have it (test rows are not read).
        train_idx = [i for i, p in enumerate(pairs.splits) if p == "train"]
        val_idx = [i for i, p in enumerate(pairs.splits) if p == "val"]
        if not train_idx:
            raise DataError(f"{source} has no usable training row: mark some rows train.")
        drawn = False
    else:
        if len(pairs) < 2:
            raise DataError(f"{source} has {len(pairs)} usable pair: need at least 2 to validate.")
        order = np.random.default_rng(seed).permutation(len(pairs))
        n_val = min(max(1, round(len(pairs) * val_fraction)), len(pairs) - 1)
        val_idx, train_idx = sorted(order[:n_val]), sorted(order[n_val:])
        drawn = True
    return PairSplit(_keep_skipped(pairs.subset(train_idx), pairs), pairs.subset(val_idx), drawn)


def pair_parts(
    source: str | Path, *, val_fraction: float = 0.2, seed: int = 0, channels: int | None = None,
) -> dict[str, MaskPairs]:
    """The whole pairs of a folder or manifest by part, as `cnnzoo train unet` splits them
    ('train', 'val': `split_pairs`) and with the part it holds out, which `cnnzoo evaluate
    --split test` scores ('test': DIR/test/ or the test rows, read with 255 as the training
    masks read it), when there is one. A manifest of test rows alone is its 'test' part."""
    from ..data.masks import (
        has_test_part,
        held_out_only,
        layout_folder,
        load_mask_pairs,
        part_reading,
    )

    source = Path(source)
    csv = source.suffix.lower() == ".csv"
    if csv and held_out_only(source):
        return {"test": load_mask_pairs(source, parts=("test",), channels=channels)}
    split = split_pairs(source, val_fraction=val_fraction, seed=seed, channels=channels)
    parts = {"train": split.train, "val": split.val}
    if has_test_part(source):
        said = set(split.train.skipped)  # (the sheet's lines on rows of no known split)

        def report(line: str) -> None:
            if line not in said:  # as load_mask_pairs says its lines
                print(shown(line), file=sys.stderr)

        parts["test"] = load_mask_pairs(
            source if csv else layout_folder(source, "test"), classes=split.classes,
            binary_255=part_reading(split.train), channels=channels, report=report,
            **({"parts": ("test",)} if csv else {}))
    return parts


def rows_ordered(meta: dict[str, Any], source: str | Path) -> bool:
    """Whether the run of checkpoint `meta` took the pairs of its manifest `source` in the
    rows' order: a run from before they were read in path order, which records no
    'pair_order'. Its --resume and evaluate take them so again, to go on with (and score) the
    validation pairs it drew and the training pairs in the order it shuffled them."""
    return Path(source).suffix.lower() == ".csv" and meta.get("pair_order", "rows") == "rows"


def _keep_skipped(part: MaskPairs, whole: MaskPairs) -> MaskPairs:
    part.skipped = whole.skipped
    return part


# How many synthetic images `load_segmentation("cells")` makes when not told.
DEFAULT_CELLS = 200


def load_segmentation(
    source: str | Path,
    *,
    classes: Sequence[str] | None = None,
    val_fraction: float = 0.2,
    tile: int = 256,
    seed: int = 0,
    cells: int | None = None,
    row_order: bool = False,
    binary_255: bool | None = None,
) -> SegmentationSplits:
    """'cells' (synthetic, `cells` images, default DEFAULT_CELLS), a folder (`images/`,
    `masks/`, optional `val/` with the same layout) or a CSV manifest (its `split` column's val
    rows validate, test rows are left out); without a `val/` folder or val rows a seeded
    `val_fraction` of the images (whole images, before tiling) is held out. A manifest's pairs
    are taken in the order of their image paths, or of its rows with `row_order` (`split_pairs`).
    binary_255: whether the masks' 255 is class 1; None: decided from them (`load_mask_pairs`)."""
    if str(source) == "cells":
        from ..data.cells import CLASSES

        classes = class_list(classes)
        if classes is not None and classes != list(CLASSES):
            # They name a folder's mask values; the synthetic cells have their own two, and
            # other names were dropped without a word (the run trained 'background, cell').
            raise DataError(f"cells has its own classes ({', '.join(CLASSES)}), not "
                            f"{', '.join(classes)}: leave out --classes, which names the mask "
                            "values of a folder or manifest")
        if Path("cells").is_dir():
            # `data export cells cells` then `--data cells` trained on the synthetic set without
            # a word (the name stays the built-in's: a run records 'cells', and its evaluate,
            # run later beside such a folder, must find the same images).
            log.warning("note: --data cells is the built-in synthetic set, not the folder "
                        "cells/ here: give ./cells for the folder")
        cells = DEFAULT_CELLS if cells is None else cells
        n_val = cells_val_count(cells, val_fraction)
        return load_cells(cells - n_val, n_val, seed=seed)
    if cells is not None:
        # A number of synthetic images for real pairs: the run trained on every pair of the
        # folder, without a word that the option meant nothing.
        raise DataError(f"--cells is the number of synthetic images of --data cells; {source} "
                        "is image/mask pairs, all of which are used: leave out --cells")
    split = split_pairs(source, classes=classes, val_fraction=val_fraction, seed=seed,
                        row_order=row_order, binary_255=binary_255)

    def pick(p: MaskPairs, count_once: bool = False) -> SegmentationSet:
        return stack_pairs(p.images, p.masks, p.instances, p.names, tile, count_once=count_once)

    train, val = pick(split.train), pick(split.val, True)
    if train.images.shape[1] != val.images.shape[1]:
        # Grey training images and colour val/ ones (or the reverse): the grey part is promoted,
        # as grey and colour files within one folder are (data.masks).
        for part in (train, val):
            if part.images.shape[1] == 1:
                part.images = np.repeat(part.images, 3, axis=1)
    root = Path(source).parent if Path(source).suffix.lower() == ".csv" else Path(source)
    return SegmentationSplits(train, val, split.classes, split.train.skipped + split.val.skipped,
                              str(source), val_files=split.val_files(),
                              binary_255=split.train.binary_255,
                              classes_named=class_list(classes) is not None
                              or classes_file(root) is not None)  # fmt: skip


class PairedTransform:
    """Geometry for image + targets, photometry for the image only.

    `geometric` transforms get the mask as (N, H, W) targets (nearest-neighbour); a weight-map
    channel rides along as an extra *image* channel, so it gets exactly the same geometry (and
    bilinear resampling in elastic warps); `photometric` transforms see the image channels only.
    """

    def __init__(
        self, geometric: Sequence[BatchTransform], photometric: Sequence[BatchTransform] = ()
    ) -> None:
        self.geometric = Compose(list(geometric))
        self.photometric = Compose(list(photometric))

    def __call__(
        self, images: Tensor, targets: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        c = images.shape[1]
        if targets.dim() == 4:  # (mask, weight map)
            stacked = torch.cat([images, targets[:, 1:].to(images.dtype)], 1)
            stacked, mask = self.geometric(stacked, targets[:, 0].round().long(), generator)
            images, weights = stacked[:, :c], stacked[:, c:]
            images, _ = self.photometric(images, mask, generator)
            return images, torch.cat([mask[:, None].to(weights.dtype), weights], 1)
        images, targets = self.geometric(images, targets.long(), generator)
        images, _ = self.photometric(images, targets, generator)
        return images, targets

    def __repr__(self) -> str:
        return f"PairedTransform({self.geometric!r}, {self.photometric!r})"


def train_transform(crop: int, *, elastic: float = 10.0, jitter: float = 0.2) -> PairedTransform:
    """The paper's augmentation (Sec. 3.1: shifts, rotations, elastic deformations, grey-value
    variations): random `crop` window, flips, 90-degree rotations, elastic deformation with
    `elastic` px displacements on a 3 x 3 grid (0 disables), brightness/contrast jitter."""
    geometric: list[BatchTransform] = [
        RandomCrop(crop), HorizontalFlip(), VerticalFlip(), RandomRot90(),
    ]
    if elastic > 0:
        geometric.append(ElasticDeform(sigma=elastic, p=0.5))
    photometric: list[BatchTransform] = [ColorJitter(jitter, jitter, 0.0)] if jitter > 0 else []
    return PairedTransform(geometric, photometric)


class PadToNet:
    """Validation: every image mirror-padded, centred, to `size(h)` x `size(w)`, the smallest input
    whose output covers it all; the targets padded with `IGNORE_INDEX` (weight 0). Every pixel of
    the image then counts exactly once in the metrics and the padding nowhere; the image stays
    the centre of both the padded input and the net's output."""

    def __init__(self, size: Callable[[int], int]) -> None:
        self.size = size

    def __call__(self, images: Tensor, targets: Tensor, generator: torch.Generator):
        del generator
        h, w = images.shape[-2:]
        th, tw = self.size(h), self.size(w)
        if (th, tw) == (h, w):
            return images, targets
        top, left = (th - h) // 2, (tw - w) // 2
        images = images[..., mirror_indices(-top, th, h), :][..., mirror_indices(-left, tw, w)]
        pad = [left, tw - w - left, top, th - h - top]
        if targets.dim() == 4:  # (mask, weight map)
            mask = F.pad(targets[:, :1], pad, value=IGNORE_INDEX)
            return images, torch.cat([mask, F.pad(targets[:, 1:], pad, value=0.0)], 1)
        return images, F.pad(targets, pad, value=IGNORE_INDEX)
