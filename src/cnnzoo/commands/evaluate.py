"""`cnnzoo evaluate CHECKPOINT | --bundle DIR [--data ...]`: accuracy, top-5 and the confusion
matrix of a `cnnzoo train` checkpoint or a `cnnzoo transfer` bundle."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..text import plural
from .argtypes import COUNT
from .train import add_tta_argument


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", nargs="?", help="last.pt or best.pt written by `cnnzoo train`")
    p.add_argument("--bundle", metavar="DIR",
                   help="instead of a checkpoint: a bundle written by `cnnzoo transfer` "
                        "(OUT/bundle), predicted as `cnnzoo predict` does")
    p.add_argument("--data", default=None,
                   help="image folder, CSV manifest, 'fashion-mnist' or 'digits' (default: the "
                        "data set the model was trained on, its validation split)")
    p.add_argument("--split", choices=("val", "test", "all"), default=None,
                   help="which images: the run's validation split (default on the training "
                        "data and built-ins), the test part, or all (default on other data)")
    p.add_argument("--batch-size", type=COUNT, default=256)
    add_tta_argument(p, "test-time augmentation (checkpoints; a bundle averages the views it "
                        "was trained with)")
    p.add_argument("--confusion", metavar="PNG", help="also write the confusion matrix as a PNG")
    p.add_argument("--json", action="store_true", help="machine-readable output")


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
    from ..errors import UsageError

    p = Path(path)
    for bundle in (p, p / "bundle", p.parent):
        if (bundle / "bundle.json").is_file() and (p.is_dir() or p.parent == bundle):
            raise UsageError(f"{path}: a transfer bundle is evaluated with --bundle {bundle}")
    if p.is_dir():
        found = [p / n for n in ("best.pt", "last.pt") if (p / n).is_file()]
        raise UsageError(f"{path} is a folder: give a checkpoint file"
                         + (f", e.g. {found[0]}" if found else " (a run's best.pt or last.pt)"))


def run(args: argparse.Namespace) -> int:
    from ..engine.report import per_class_table, plot_confusion
    from ..engine.run import evaluate_checkpoint
    from ..errors import UsageError

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
    if args.bundle is not None:
        if args.tta:
            raise UsageError("--tta is for checkpoints: a bundle predicts with the views it was "
                             "trained with (cnnzoo transfer --views)")  # fmt: skip
        from ..transfer import load_bundle

        bundle = load_bundle(args.bundle)
        # --batch-size's default (256) suits checkpoints at their training size; a bundle's net
        # runs at its weights' size (224-260 px) over several views, so batches stay at 64.
        metrics, acc = bundle.evaluate(args.data, split=args.split,
                                       batch_size=min(args.batch_size, 64))  # fmt: skip
        names = bundle.class_names
    else:
        metrics, acc, names = evaluate_checkpoint(args.checkpoint, args.data,
                                                  batch_size=args.batch_size, split=args.split,
                                                  tta=args.tta or False)  # fmt: skip
    if args.confusion:
        # Its folder is made, as `--out` folders are: a path that names a new folder is one
        # the user meant to have.
        Path(args.confusion).parent.mkdir(parents=True, exist_ok=True)
        plot_confusion(acc.confusion, names, Path(args.confusion))
    if args.json:
        print(json.dumps({**metrics, "classes": names, "confusion": acc.confusion.tolist(),
                          **acc.per_class()}))
        return 0
    n = int(acc.confusion.sum())
    # Top-5 of 5 classes or fewer is 1 by definition: not worth a column.
    top5 = f"  top-5 {metrics['top5']:.4f}" if len(names) > 5 else ""
    print(f"{plural(n, 'image')}: accuracy {metrics['acc']:.4f}{top5}  loss {metrics['loss']:.4f}")
    width = max(5, *(len(c) for c in names))
    print("confusion matrix (rows: true class, columns: predicted)")
    print(" " * width + " " + " ".join(f"{i:>5d}" for i in range(len(names))))
    for i, (name, row) in enumerate(zip(names, acc.confusion.tolist(), strict=True)):
        print(f"{name:>{width}} " + " ".join(f"{v:>5d}" for v in row) + f"   ({i})")
    print("\n".join(per_class_table(acc, names)))
    return 0
