"""Scoring a trained U-Net on image/mask pairs: `cnnzoo evaluate CHECKPOINT` for a segmentation
checkpoint.

Each whole image is predicted as `cnnzoo segment` predicts it (the overlap-tile strategy,
`tiling.predict_tiled`, with the run's normalisation and numeric precision), so the scores are
those of the masks `segment` writes. The metrics are the training loop's
(`metrics.SegmentationAccumulator`): sums over all pixels of all images, then per-class Dice/IoU,
their foreground means, pixel accuracy and, where the run counted cells, the count error.

Which pairs (`split`, as `engine.run.evaluation_images` picks images for classifiers):
- 'val': the run's validation split -- its val/ folder or val rows, or the pairs drawn with the
  run's seed and fraction (refused when the folder no longer splits into the same files);
- 'test': DIR/test/ (images/ + masks/), a manifest's test rows, or the cells' 'test' stream;
- 'all': every pair (DIR, DIR/val/ and DIR/test/; every manifest row; the run's cells).
Default: 'val' on the training data and on cells, 'all' on another folder or manifest.

Why the scores on 'val' can differ a little from the run's own val_dice: the training loop
validates each image in one pass with the convolutions' zero padding at its border, `segment`
gives the border pixels mirrored context instead. `tile` = the images' side (a multiple of 16)
and `margin=0` make the two the same pass (docs/segmentation.md).

`tta` ('flip', 'flip-shift') averages the views of `cnnzoo train --tta` per overlap tile
(`tiling.predict_tiled`); with that one-pass geometry it repeats the run's final TTA scores.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.masks import IGNORE_INDEX, MaskPairs, classes_file
from ..errors import DataError, no_validation_rows
from ..paths import same_source
from ..text import plural, shown
from .data import DEFAULT_CELLS, cell_set, cells_val_count, rows_ordered, split_pairs
from .metrics import SegmentationAccumulator, absent_classes
from .tiling import TileGeometry

SPLITS = ("val", "test", "all")


@dataclass
class SegmentationEvaluation:
    """metrics: the accumulator's scores (no loss: see `evaluate_segmenter`); names: the pairs
    scored; ignored: pixels marked 255, counted in no metric; skipped: the pairs left out as
    unreadable (or without a mask, ...), as `train --json` counts them."""

    metrics: dict[str, float]
    accumulator: SegmentationAccumulator
    class_names: list[str]
    source: str
    split: str
    names: list[str]
    ignored: int
    geometry: TileGeometry
    own_split: bool = False  # the run's own validation split
    notes: list[str] = field(default_factory=list)
    tta: str | None = None  # the test-time augmentation, 'flip' or 'flip-shift'
    skipped: int = 0

    def to_dict(self) -> dict[str, Any]:
        """What `cnnzoo evaluate --json` prints: the metrics under the training log's names
        (without its val_ prefix), the confusion matrix of pixel counts and what was scored."""
        return {**self.metrics, "task": "segmentation", "data": self.source, "split": self.split,
                "images": len(self.names), "skipped": self.skipped,
                "pixels": int(self.accumulator.confusion.sum()),
                "ignored_pixels": self.ignored, "classes": self.class_names,
                "confusion": self.accumulator.confusion.tolist(),
                "tile": self.geometry.in_size, "margin": self.geometry.margin,
                "tta": self.tta}  # fmt: skip


@dataclass
class _Pairs:
    """Images uint8 (C, H, W) and masks uint8 (H, W), whole, of any sizes."""

    images: list[np.ndarray]
    masks: list[np.ndarray]
    names: list[str]
    skipped: int = 0  # pairs of the data left out as unreadable

    @classmethod
    def of(cls, pairs: MaskPairs, skipped: int | None = None) -> _Pairs:
        return cls([im.transpose(2, 0, 1) for im in pairs.images], pairs.masks, pairs.names,
                   len(pairs.skipped) if skipped is None else skipped)


def _cells(split: str, meta: dict[str, Any], seed: int, trained_on_cells: bool) -> _Pairs:
    """The synthetic cells of `split`: the run's own images (its counts and seed) when it was
    trained on cells; else those of `load_segmentation`'s defaults. 'test' is the 'test'
    stream, as many images as validate."""
    counts = meta.get("images") or {}
    if trained_on_cells and {"train", "val"} <= set(counts):
        n_train, n_val = int(counts["train"]), int(counts["val"])
    else:
        n_val = cells_val_count(DEFAULT_CELLS)  # (load_segmentation's default)
        n_train = DEFAULT_CELLS - n_val
    streams = {"val": [("val", n_val)], "test": [("test", n_val)],
               "all": [("train", n_train), ("val", n_val)]}[split]  # fmt: skip
    sets = [cell_set(stream, n, seed=seed) for stream, n in streams]
    images = [im for s in sets for im in s.images]
    if meta["in_chans"] == 3:  # a colour net scored on the grey cells: the grey in each channel
        images = [np.repeat(im, 3, axis=0) for im in images]
    return _Pairs(images, [m for s in sets for m in s.masks], [n for s in sets for n in s.names])


def _check_classes_file(src: Path, names: list[str]) -> None:
    """A held-out folder naming its classes otherwise than the model (classes.txt): its mask
    values would mean other classes than the ones the net predicts."""
    root = src.parent if src.suffix.lower() == ".csv" else src
    own = classes_file(root)
    if own is None:
        return
    path = root / "classes.txt"
    if own != list(names):
        raise DataError(f"{path} names the classes {', '.join(own)}, the model predicts "
                        f"{', '.join(names)}: score it on masks of the model's classes")


def evaluation_pairs(
    src: str, split: str | None, meta: dict[str, Any], *, seed: int = 0, trained_on: str = "",
) -> tuple[_Pairs, str, bool]:
    """(the pairs to score, the split taken, whether it is the run's own validation split) of
    `src` ('cells', a folder or a CSV manifest) for a net whose checkpoint meta is `meta`;
    masks read with its class names and channels, and with its reading of 255 on the data it
    trained on (other pairs: 255 is class 1 when every mask is 0/255, as training reads them)."""
    from ..data.builtin import builtin_name
    from ..data.masks import (
        has_test_part,
        held_out_only,
        holds_mask_pairs,
        layout_folder,
        load_mask_pairs,
        masks_elsewhere,
        part_reading,
    )

    is_cells = src == "cells"
    same = trained_on == "cells" if is_cells else same_source(src, trained_on)
    if split is None:
        split = "val" if is_cells or same else "all"
    if split not in SPLITS:
        raise DataError(f"split must be val, test or all, not {split!r}")
    own = same and split == "val"
    if is_cells:
        return _cells(split, meta, seed, trained_on == "cells"), split, own
    how = ("a segmentation checkpoint is scored on image/mask pairs: a folder with images/ and "
           "masks/ (same file stems), a CSV manifest with image,mask columns, or cells")
    path = Path(src)
    if builtin_name(src) is not None:
        raise DataError(f"{src} is a classification data set: {how}")
    if not path.exists():
        if same:
            raise DataError(f"{src}, the data the model was trained on, is not there any more: "
                            "pass the pairs to score with --data")  # fmt: skip
        raise DataError(f"{src} does not exist: {how}")
    if path.is_dir() and not holds_mask_pairs(path):
        missing = ("images/ and masks/" if not layout_folder(path, "images").is_dir()
                   else "masks/")  # fmt: skip
        raise DataError(f"{src} has no {missing} folder{masks_elsewhere(path)}: {how}")
    names = list(meta["class_names"])
    _check_classes_file(path, names)
    # Other pairs than the run's own say themselves what their 255 means, by the rule training
    # reads a folder with (class 1 when every mask is 0/255, else 'ignore'): with the run's
    # reading, a run on 0/1 masks scored on 0/255 ones ignored every foreground pixel (Dice 0),
    # and a run on 0/255 masks counted the ignored 255 of 0/1/255 masks as cells.
    read = {"classes": names, "binary_255": meta.get("binary_255") if same else None,
            "channels": meta["in_chans"]}
    if split == "val" and path.suffix.lower() == ".csv" and held_out_only(path):
        # A held-out sheet (test rows alone): split_pairs's error said how to mark rows to
        # train on, to someone scoring a net. As classification's evaluate says it (engine.run).
        raise no_validation_rows(src)
    if split == "val":
        sp = split_pairs(path, val_fraction=meta.get("val_fraction", 0.2), seed=seed,
                         row_order=same and rows_ordered(meta, path), **read)
        if same and sp.drawn:
            if "val_fraction" not in meta:
                raise DataError(f"{src}: the run's validation pairs cannot be reproduced "
                                "exactly (its checkpoint, from an older cnnzoo, does not record "
                                "the fraction it drew them with): pass held-out pairs with "
                                "--data")  # fmt: skip
            if meta.get("val_files") and sp.val_files() != meta["val_files"]:
                # A run from before took the rows in their order: sorting the sheet since
                # changed its split (as for classification manifests, `engine.run`).
                rows = (", or its rows reordered, for a run from before rows were read in path "
                        "order" if rows_ordered(meta, path) else "")  # fmt: skip
                raise DataError(f"{src} has changed since the run was trained (pairs added, "
                                f"removed, renamed or now readable{rows}), so its validation "
                                "split would hold pairs the run trained on: pass --data with "
                                "held-out pairs")  # fmt: skip
        # (the whole data's: the training part holds those of the pairs it was drawn from)
        return _Pairs.of(sp.val, len(sp.train.skipped) + len(sp.val.skipped)), split, own
    if split == "test" and not has_test_part(path):
        raise DataError(f"{src} has no test part apart from its validation part (DIR/test/ with "
                        "images/ and masks/, or rows marked test): use --split val or --split "
                        "all")  # fmt: skip
    if path.suffix.lower() == ".csv":
        parts = ("test",) if split == "test" else ("train", "val", "test")
        return _Pairs.of(load_mask_pairs(path, parts=parts, **read)), split, own
    val, test = layout_folder(path, "val"), layout_folder(path, "test")
    folders = [test] if split == "test" else [
        p for p in (path, val, test) if p == path or layout_folder(p, "images").is_dir()]
    pairs = load_mask_pairs(folders[0], **read)
    part = part_reading(pairs)  # val/ and test/ read 255 as the folder does (split_pairs)
    for extra in folders[1:]:
        pairs = pairs + load_mask_pairs(extra, **{**read, "binary_255": part})
    return _Pairs.of(pairs), split, own


def _absent_note(absent: list[int], names: list[str], confusion: torch.Tensor) -> str:
    """The classes no scored mask holds, and what they scored: 1 where the net predicts none
    of them, 0 where it predicts any (the empty-class convention, `metrics`)."""
    said = []
    for c in absent:
        n = int(confusion[:, c].sum())
        said.append(f"{shown(names[c])} (Dice and IoU 1: the net predicts none of it)" if n == 0
                    else f"{shown(names[c])} (0: the net predicts {n:,} {'pixel' if n == 1 else 'pixels'} of it)")
    means = "; the foreground means (dice, iou) count them" if max(absent) > 0 else ""
    return f"note: no mask scored holds {' or '.join(said)}{means}"


def evaluate_segmenter(
    path: str | os.PathLike[str], source: str | None = None, *, split: str | None = None,
    tile: int = 512, margin: int | None = None, batch_size: int = 4, progress: bool = False,
    tta: bool | str = False,
) -> SegmentationEvaluation:
    """Score the U-Net of a segmentation checkpoint on `source` (default: the data it was
    trained on); `split` as in `evaluation_pairs`; tile, margin, batch_size: the overlap-tile
    prediction's (`predict_tiled`); tta: 'flip' (or True) or 'flip-shift', the views and the
    averaging of `cnnzoo train --tta`'s final validation, per tile. No loss is reported: the
    run's loss (a weighted one needs each image's weight map) is the training's business, not
    a held-out score."""
    from ..engine.checkpoint import load_checkpoint
    from ..engine.precision import Precision
    from ..engine.run import trained_data
    from .tiling import checked_geometry, predict_tiled
    from .training import load_segmenter

    ckpt = load_checkpoint(path)
    model, meta = load_segmenter(path, ckpt)
    geo = checked_geometry(model, tile, margin)
    trained_on = trained_data(meta, Path(path).parent, source)
    src = str(source or trained_on)
    if not src:
        raise DataError("say which pairs to evaluate on: --data DIR|CSV|cells")
    seed = int((ckpt.get("config") or {}).get("seed", 0))
    pairs, split, own = evaluation_pairs(src, split, meta, seed=seed, trained_on=trained_on)
    k = int(meta["num_classes"])
    names = list(meta.get("class_names") or [str(i) for i in range(k)])
    acc = SegmentationAccumulator(k, names,
                                  count_instances=meta.get("count_instances", k == 2))  # fmt: skip
    # The run's own precision (bf16 autocast if it trained in bf16): its validation numbers,
    # repeated, as `engine.run.evaluate_checkpoint` does for classifiers.
    precision = Precision.of_checkpoint(ckpt)
    model.to(memory_format=precision.memory_format)
    ignored = 0
    from tqdm.auto import tqdm

    for image, mask in tqdm(list(zip(pairs.images, pairs.masks, strict=True)), desc="evaluate",
                            leave=False, disable=None if progress else True):  # fmt: skip
        with precision.autocast():
            pred = predict_tiled(model, torch.from_numpy(np.array(image)),  # (a writable copy)
                                 tile=tile, margin=margin, batch_size=batch_size,
                                 mean=tuple(meta["mean"]), std=tuple(meta["std"]),
                                 output="mask", tta=tta)  # fmt: skip
        truth = torch.from_numpy(mask)
        acc.add_masks(pred[None], truth[None])
        ignored += int((truth == IGNORE_INDEX).sum())
    metrics = acc.compute()
    metrics.pop("loss")
    notes = []
    if acc.confusion.sum() == 0:
        notes.append(f"note: every pixel of the {plural(len(pairs.names), 'mask')} is marked "
                     "255 (ignore): there is nothing to score")  # fmt: skip
    elif absent := absent_classes(pairs.masks, k):
        notes.append(_absent_note(absent, names, acc.confusion))
    return SegmentationEvaluation(metrics, acc, names, src, split, pairs.names, ignored, geo,
                                  own, notes, ("flip" if tta is True else tta) or None,
                                  pairs.skipped)  # fmt: skip
