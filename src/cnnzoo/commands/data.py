"""`cnnzoo data`: export a built-in data set as an image folder, or check what a folder holds.

cnnzoo data export fashion-mnist DIR --classes tshirt,trouser,sneaker --per-class 50
cnnzoo data info DIR --img-size 64
"""

from __future__ import annotations

import argparse
import sys

from ..text import json_text, plural, shown
from .argtypes import COUNT, FRACTION, IMG_SIZE, SEED, add_progress_argument


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    e = sub.add_parser(
        "export",
        help="write a built-in data set as image files (class sub-folders)",
        description="Write a built-in data set as PNG files in one sub-folder per class: the "
        "layout your own images need for `cnnzoo train/transfer --data DIR`.",
    )
    e.add_argument("name", metavar="NAME", help="built-in data set: fashion-mnist, digits, or cells (synthetic "
                   "microscopy: images/ + masks/ + instances/ for segmentation)")
    e.add_argument("dir", metavar="DIR", help="output folder (must be new or empty unless --overwrite)")
    e.add_argument(
        "--classes",
        help="comma-separated class names or indices, e.g. tshirt,trouser,sneaker (default: all)",
    )
    e.add_argument("--per-class", type=COUNT,
                   help="images per class (default: all; cells: number of images, default 200)")
    e.add_argument("--split", default="train", choices=("train", "test"), help="default: train")
    e.add_argument("--seed", type=SEED, default=0,
                   help="which images --per-class picks (default 0)")
    e.add_argument("--overwrite", action="store_true",
                   help="write into a non-empty folder (same-named files are replaced, nothing "
                        "is deleted)")

    i = sub.add_parser(
        "info",
        help="load a data set as training would and print its classes and counts",
        description="Load an image folder, a CSV manifest or a built-in set the way `train` "
        "does (bad files are reported and skipped) and print classes, counts and sizes; of "
        "image/mask pairs, the pairs of each part and each class's share of the pixels.",
    )
    i.add_argument("source", metavar="DATA", help="image folder, CSV manifest, fashion-mnist or "
                   "digits; or image/mask pairs (images/ + masks/, or image,mask rows)")
    i.add_argument("--img-size", type=IMG_SIZE,
                   help="resize images to this square size (default: their own; images of "
                        "several sizes: 224, or their largest side if smaller)")
    i.add_argument("--channels", type=int, choices=(1, 3), default=None,
                   help="default: the data's own, as `cnnzoo train` reads them (1 when every "
                        "image is grey, as the built-ins are, else 3)")  # fmt: skip
    i.add_argument("--val-fraction", type=FRACTION, default=None,
                   help="validation share drawn from the training images when there is no val/ "
                        "part (default 0.2); given, a test/ part (test rows) stays held out, as "
                        "`cnnzoo train` and `transfer` then keep it, else it validates")
    i.add_argument("--seed", type=SEED, default=0, help="seed of the stratified split (default 0)")
    i.add_argument("--json", action="store_true",
                   help="machine-readable output: classes, per-class counts of each part, "
                        "image shape, files skipped")
    add_progress_argument(i)


def run(args: argparse.Namespace) -> int:
    if args.action == "export":
        return _export(args)
    return _info(args)


def _export(args: argparse.Namespace) -> int:
    from ..data.export import ExportOptions, export_dataset
    from ..errors import UsageError

    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    if args.classes is not None and not classes:
        raise UsageError(f"--classes {args.classes!r} names no class; e.g. --classes 0,1 or "
                         "tshirt,trouser")  # fmt: skip
    if classes and args.name == "cells":
        raise UsageError("cells is a segmentation set with one class (cell): leave out --classes")
    options = ExportOptions(
        classes=classes,
        per_class=args.per_class,
        split=args.split,
        seed=args.seed,
        overwrite=args.overwrite,
    )
    print(export_dataset(args.name, args.dir, options))
    return 0


def _info(args: argparse.Namespace) -> int:
    from ..data.builtin import load_dataset, own_channels
    from ..data.folder import mixed_sizes_size, seen_images
    from ..data.images import ImageSpec
    from ..data.masks import holds_mask_pairs

    if args.source == "cells":  # (made when a run uses it: nothing to count on disk)
        from ..errors import UsageError

        raise UsageError("cells is the synthetic segmentation set, generated when a run uses it "
                         "(256x256 images; background, cell): `cnnzoo data export cells DIR "
                         "--per-class N` writes N of them as image/mask pairs, which "
                         "`cnnzoo data info DIR` counts")  # fmt: skip
    if holds_mask_pairs(args.source):
        return _pairs_info(args)
    seen = seen_images(args.source)
    channels = args.channels or own_channels(args.source, seen) or 3
    size = args.img_size
    if size is None:
        # The sizes of every part counted, the test part too: a test/ of other sizes than
        # train/ stopped this command, which `cnnzoo train` reads (the channels stay train's).
        seen = seen_images(args.source, test=True)
    if size is None and seen is not None and not seen.same:
        # Photos come in many sizes; without a size the images could not be stacked and this
        # stopped with advice to resize all of them to the largest side (a 2000x200 image made
        # it 2000: 5 GB and 18 s to count 200 small photos, a phone's 4000 px more memory than
        # a laptop has). Counting needs no such size: the one ImageNet nets take will do.
        size = mixed_sizes_size(seen.largest)
        why = "their largest side" if size == seen.largest else \
            "the size `cnnzoo transfer` reads them at"
        print(f"cnnzoo data info: note: the images differ in size (up to {seen.largest} px): read "
              f"at {size}x{size} here, {why} (--img-size N for another)",
              file=sys.stderr)  # fmt: skip
    spec = ImageSpec(size=size, channels=channels)
    # A fraction given keeps a test/ part held out, as `train` and `transfer` do with it.
    splits = load_dataset(args.source, spec, val_fraction=args.val_fraction or 0.2,
                          seed=args.seed, progress=args.progress,
                          hold_out_test=args.val_fraction is not None)
    parts = [("train", splits.train), ("val", splits.val)]
    if splits.test is not None:
        parts.append(("test", splits.test))
    counts = {name: ds.class_counts() for name, ds in parts}
    c, h, w = splits.train.images.shape[1:]
    n = splits.skipped_count
    if args.json:  # what the table says, for scripts (as models, predict, evaluate, compare)
        print(json_text({"classes": list(splits.class_names),
                         "counts": {name: [int(v) for v in counts[name]] for name, _ in parts},
                         "images": {name: len(ds) for name, ds in parts},
                         "shape": [int(c), int(h), int(w)], "skipped": n}))
        return 0
    names = [shown(c) for c in splits.class_names]
    width = max(len("class"), *(len(c) for c in names))
    print(f"{'class':<{width}}" + "".join(f"{name:>8}" for name, _ in parts))
    for k, cls in enumerate(names):
        print(f"{cls:<{width}}" + "".join(f"{counts[name][k]:>8}" for name, _ in parts))
    print(f"{'total':<{width}}" + "".join(f"{len(ds):>8}" for _, ds in parts))
    print(f"\n{splits.num_classes} classes, images {c}x{h}x{w}; {plural(n, 'file')} "
          "skipped")  # fmt: skip
    return 0


def _share(n: int, total: int) -> str:
    """A percentage of one decimal; '<0.1%' for a few pixels, which 0.0% would hide."""
    if n and n * 1000 < total:
        return "<0.1%"
    return f"{100 * n / max(total, 1):.1f}%"


def _pairs_info(args: argparse.Namespace) -> int:
    """`data info` of image/mask pairs (images/ + masks/, or a manifest of image,mask rows):
    the pairs of each part as `cnnzoo train unet` splits them, the classes and their shares of
    the labelled pixels, and the share of ignored (255) pixels. (They were refused as 'a
    segmentation set, not one sub-folder per class', after a note on resizing the images.)"""
    import numpy as np

    from ..errors import UsageError
    from ..segmentation.data import pair_parts
    from ..segmentation.losses import IGNORE_INDEX

    if args.img_size is not None:
        raise UsageError(f"--img-size: {args.source} holds image/mask pairs, which a U-Net "
                         "trains on at their own size (in crops, `train --crop`): leave it out")
    parts = pair_parts(args.source, val_fraction=args.val_fraction or 0.2, seed=args.seed,
                       channels=args.channels)
    first = next(iter(parts.values()))
    classes = first.classes
    pixels = {name: np.zeros(256, np.int64) for name in parts}
    for name, pairs in parts.items():
        for m in pairs.masks:
            pixels[name] += np.bincount(m.ravel(), minlength=256)
    counts = {name: [int(v) for v in px[:len(classes)]] for name, px in pixels.items()}
    ignored = {name: int(px[IGNORE_INDEX]) for name, px in pixels.items()}
    skipped = len({line for pairs in parts.values() for line in pairs.skipped})
    channels = max(p.in_chans for p in parts.values() if len(p))
    if args.json:  # pixel counts: the shares of the table are these over each part's sum
        print(json_text({"task": "segmentation", "classes": list(classes),
                         "images": {name: len(pairs) for name, pairs in parts.items()},
                         "pixels": counts, "ignored_pixels": ignored, "channels": channels,
                         "skipped": skipped}))
        return 0
    names = [shown(c) for c in classes]
    width = max(len("ignored (255)"), *(len(c) for c in names))
    print(f"{'class':<{width}}" + "".join(f"{name:>8}" for name in parts))
    for k, cls in enumerate(names):
        print(f"{cls:<{width}}" + "".join(f"{_share(counts[n][k], sum(counts[n])):>8}"
                                          for n in parts))
    print(f"{'ignored (255)':<{width}}" + "".join(
        f"{_share(ignored[n], int(pixels[n].sum())):>8}" for n in parts))
    print(f"{'pairs':<{width}}" + "".join(f"{len(p):>8}" for p in parts.values()))
    sizes = sorted({m.shape for p in parts.values() for m in p.masks},
                   key=lambda hw: (hw[0] * hw[1], hw))
    (h0, w0), (h1, w1) = sizes[0], sizes[-1]
    size = f"{w0}x{h0}" if sizes[0] == sizes[-1] else f"{w0}x{h0} to {w1}x{h1}"
    print(f"\n{len(classes)} classes, images {size}, {plural(channels, 'channel')}; "
          f"{plural(skipped, 'pair')} skipped")
    print("class shares: of each part's labelled pixels; ignored: of all its pixels")
    return 0
