"""`cnnzoo evaluate CHECKPOINT | --bundle DIR [--data ...]`: accuracy, top-5 and the confusion
matrix of a `cnnzoo train` checkpoint or a `cnnzoo transfer` bundle; per-class Dice/IoU, pixel
accuracy and the cell count error of a segmentation checkpoint (`segmentation.evaluation`)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from ..text import json_text, plural, shown
from .argtypes import COUNT, add_progress_argument, add_threads_argument
from .segment import add_tiling_arguments
from .train import add_tta_argument


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", nargs="?", metavar="CHECKPOINT", help="last.pt or best.pt written by `cnnzoo train` "
                   "(a classifier, or a U-Net of --task segmentation)")
    p.add_argument("--bundle", metavar="DIR",
                   help="instead of a checkpoint: a bundle written by `cnnzoo transfer` "
                        "(OUT/bundle), predicted as `cnnzoo predict` does")
    p.add_argument("--data", default=None,
                   help="image folder, CSV manifest, 'fashion-mnist' or 'digits'; for a "
                        "segmentation checkpoint a folder with images/ and masks/, a CSV "
                        "manifest of image,mask pairs or 'cells' (default: the data set the "
                        "model was trained on, its validation split)")
    p.add_argument("--split", choices=("val", "test", "all"), default=None,
                   help="which images: the run's validation split (default on the training "
                        "data and built-ins), the test part (DIR/test/, rows marked test), or "
                        "all (default on other data)")
    p.add_argument("--batch-size", type=COUNT, default=None,
                   help="images per forward pass (default 256; a bundle: 64); segmentation: "
                        "tiles (default 4)")
    add_tta_argument(p, "test-time augmentation, as `cnnzoo train --tta` validates (a "
                        "segmentation checkpoint: per overlap tile; not for a bundle, which "
                        "averages the views it was trained with)")
    add_tiling_arguments(p, default=None, note="segmentation checkpoints, predicted as "
                                               "`cnnzoo segment` does: ")
    p.add_argument("--confusion", metavar="PNG", help="also write the confusion matrix as a PNG")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_threads_argument(p)
    add_progress_argument(p)


PICTURE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg")


def check_picture_path(path: str, option: str = "--confusion") -> None:
    """A picture file to write (`option` PNG) must be writable as one: not a folder, not under
    a file, with a suffix matplotlib writes (it would add .png to a name without one, or fail on
    .txt)."""
    from ..errors import UsageError
    from ..paths import check_folder

    if Path(path).is_dir():
        raise UsageError(f"{option} {path} is a folder: give a file name such as "
                         f"{Path(path) / (option.strip('-') + '.png')}")  # fmt: skip
    if Path(path).suffix.lower() not in PICTURE_SUFFIXES:
        raise UsageError(f"{option} {path}: give a picture file name ending in "
                         f"{', '.join(PICTURE_SUFFIXES)}")  # fmt: skip
    check_folder(Path(path).parent, option)


def check_checkpoint_path(path: str) -> None:
    """A bundle or a run folder given where a checkpoint file belongs: say what to pass."""
    from ..engine.checkpoint import folder_given
    from ..errors import UsageError

    p = Path(path)
    for bundle in (p, p / "bundle", p.parent):
        if (bundle / "bundle.json").is_file() and (p.is_dir() or p.parent == bundle):
            raise UsageError(f"{path}: a transfer bundle is evaluated with --bundle "
                             f"{shlex.quote(str(bundle))}")  # as the shell takes it
    if p.is_dir():
        raise UsageError(folder_given(p))


def run(args: argparse.Namespace) -> int:
    from ..engine.distributed import use_threads
    from ..engine.report import per_class_table, plot_confusion
    from ..engine.run import evaluate_checkpoint, evaluation_split, scored_images, trained_data
    from ..errors import UsageError

    use_threads(args.threads)

    given = Path(args.checkpoint) if args.checkpoint is not None else None
    if args.bundle is not None and given is not None and args.data is None and (
            (given.is_dir() and not any((given / n).is_file() for n in ("best.pt", "last.pt")))
            or given.suffix.lower() == ".csv"):  # images, not a run: meant for --data
        raise UsageError(f"images to score go after --data: cnnzoo evaluate --bundle "
                         f"{args.bundle} --data {args.checkpoint}")  # fmt: skip
    if (args.checkpoint is None) == (args.bundle is None):
        raise UsageError("give a checkpoint (cnnzoo train's last.pt or best.pt) or --bundle DIR "
                         "(cnnzoo transfer's OUT/bundle), one of them")  # fmt: skip
    if args.confusion:  # checked before the images are predicted, not after
        check_picture_path(args.confusion)
    if args.checkpoint is not None:
        check_checkpoint_path(args.checkpoint)
        meta, task = checkpoint_meta(args.checkpoint)
        if task == "segmentation":
            return run_segmentation(args)
        refuse_mask_data(args.data, f"{args.checkpoint} is a classifier ({meta.get('model')})",
                         meta.get("class_names"))  # fmt: skip
    else:
        refuse_mask_data(args.data, f"{args.bundle} is a classifier's bundle")
    if args.tile is not None or args.margin is not None:
        raise UsageError(f"{'--tile' if args.tile is not None else '--margin'} is for "
                         "segmentation checkpoints: a classifier scores whole images")
    skipped: list[int] = []  # unreadable files left out, for --json (train and transfer's)
    if args.bundle is not None:
        if args.tta:
            raise UsageError("--tta is for checkpoints: a bundle predicts with the views it was "
                             "trained with (cnnzoo transfer --views)")  # fmt: skip
        from ..transfer import load_bundle

        bundle = load_bundle(args.bundle)
        # --batch-size's default (256) suits checkpoints at their training size; a bundle's net
        # runs at its weights' size (224-260 px) over several views, so its default is 64. A
        # --batch-size given is used as given (it was cut to 64 without a word).
        metrics, acc = bundle.evaluate(args.data, split=args.split,
                                       batch_size=args.batch_size or 64,
                                       progress=args.progress,
                                       count_skipped=skipped.append)  # fmt: skip
        names = bundle.class_names
        trained_on = bundle.trained_on_data(args.data)
    else:
        metrics, acc, names = evaluate_checkpoint(args.checkpoint, args.data,
                                                  batch_size=args.batch_size or 256,
                                                  split=args.split,
                                                  tta=args.tta or False,
                                                  progress=args.progress,
                                                  count_skipped=skipped.append)  # fmt: skip
        trained_on = trained_data(meta, Path(args.checkpoint).parent, args.data)
    source = str(args.data or trained_on)
    if args.confusion:
        # Its folder is made, as `--out` folders are: a path that names a new folder is one
        # the user meant to have.
        Path(args.confusion).parent.mkdir(parents=True, exist_ok=True)
        plot_confusion(acc.confusion, names, Path(args.confusion))
    if args.json:
        # `images` scored and `skipped` (unreadable) as a U-Net's evaluation and `train --json`
        # count them: a folder with unreadable files scored fewer images without a word here.
        print(json_text({**metrics, "data": source,
                         "split": evaluation_split(source, args.split, trained_on),
                         "images": int(acc.confusion.sum()), "skipped": sum(skipped),
                         "classes": names, "confusion": acc.confusion.tolist(),
                         **acc.per_class()}))  # fmt: skip
        return 0
    n = int(acc.confusion.sum())
    # Top-5 of 5 classes or fewer is 1 by definition: not worth a column.
    top5 = f"  top-5 {metrics['top5']:.4f}" if len(names) > 5 else ""
    print(f"{shown(scored_images(source, args.split, trained_on))}: {plural(n, 'image')}, "
          f"accuracy {metrics['acc']:.4f}{top5}  loss {metrics['loss']:.4f}")
    width = max(5, *(len(shown(c)) for c in names))
    print("confusion matrix (rows: true class, columns: predicted)")
    print(" " * width + " " + " ".join(f"{i:>5d}" for i in range(len(names))))
    for i, (name, row) in enumerate(zip(names, acc.confusion.tolist(), strict=True)):
        print(f"{shown(name):>{width}} " + " ".join(f"{v:>5d}" for v in row) + f"   ({i})")
    print("\n".join(per_class_table(acc, names)))
    return 0


def checkpoint_meta(path: str) -> tuple[dict, str]:
    """(meta, task) of a `cnnzoo train` checkpoint, read mapped (the evaluation reads it again)."""
    from ..engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path, mmap=True)
    meta = ckpt.get("meta") or {}
    segmentation = "segmentation" in (ckpt.get("task"), meta.get("task"))
    return meta, "segmentation" if segmentation else "classification"


def refuse_mask_data(data: str | None, what: str, class_names: list[str] | None = None) -> None:
    """Image/mask pairs given to a classifier: its loader would read images/ and masks/ as two
    classes and score the net on them without a word."""
    from ..data.masks import holds_mask_pairs
    from ..errors import UsageError

    if data is None or not holds_mask_pairs(data) or (
            {"images", "masks"} <= set(class_names or [])):  # a classifier of those classes
        return
    raise UsageError(f"{data} holds image/mask pairs for segmentation, and {what}: score a "
                     "segmentation checkpoint (cnnzoo train unet --task segmentation) on it")


def run_segmentation(args: argparse.Namespace) -> int:
    """`cnnzoo evaluate` of a segmentation checkpoint: a table of per-class Dice / IoU."""
    import sys

    from ..engine.report import plot_confusion
    from ..segmentation.evaluation import evaluate_segmenter

    ev = evaluate_segmenter(args.checkpoint, args.data, split=args.split,
                            tile=args.tile or 512, margin=args.margin,
                            batch_size=args.batch_size or 4,
                            progress=args.progress, tta=args.tta or False)  # fmt: skip
    for line in ev.notes:
        print(shown(line), file=sys.stderr)
    acc, m, names = ev.accumulator, ev.metrics, ev.class_names
    if args.confusion:
        Path(args.confusion).parent.mkdir(parents=True, exist_ok=True)
        plot_confusion(acc.confusion, names, Path(args.confusion))
    if args.json:
        print(json_text(ev.to_dict()))
        return 0
    which = {"val": "the run's validation split" if ev.own_split else "its validation split",
             "test": "its test part", "all": "all its pairs"}[ev.split]
    pixels = int(acc.confusion.sum())
    ignored = f", {ev.ignored:,} ignored (255)" if ev.ignored else ""
    geo = ev.geometry
    tta = f", {ev.tta} TTA per tile" if ev.tta else ""
    print(f"{shown(ev.source)}, {which}: {plural(len(ev.names), 'image')}, {pixels:,} pixels scored"
          f"{ignored}; overlap-tile prediction, {geo.in_size}-px tiles with {geo.margin} px of "
          f"context{tta}")
    width = max(10, *(len(shown(c)) for c in names))
    support = acc.confusion.sum(1).tolist()
    print(f"{'class':<{width}}    Dice     IoU   pixels")
    for name, n in zip(names, support, strict=True):
        print(f"{shown(name):<{width}}  {m[f'dice_{name}']:.4f}  {m[f'iou_{name}']:.4f}  {n:>7,}")
    fg = "mean (fg)" if len(names) > 2 else "foreground"
    print(f"{fg:<{width}}  {m['dice']:.4f}  {m['iou']:.4f}")
    line = f"pixel accuracy {m['pixel_acc']:.4f}"
    if "count_err" in m:
        line += (f"; cell count error {m['count_err']:.2f} per image "
                 f"({m['count_rel']:.1%} of the true count)")
    print(line)
    return 0
