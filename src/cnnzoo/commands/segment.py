"""`cnnzoo segment`: masks and contour overlays from a trained U-Net, for images of any size.

    cnnzoo segment scan.png --checkpoint runs/unet/best.pt --out masks/
    cnnzoo segment folder/ --checkpoint runs/unet/best.pt --tile 256

Each image is decoded on its own (a bad file prints one line; the others are still segmented;
the exit code is then 1) and segmented with the paper's overlap-tile strategy
(`cnnzoo.segmentation.tiling`), so the network's memory stays bounded whatever the image size
(the decoded image, its mask and overlay are whole: about 40 bytes per pixel in all, 1.1 GB for
a 24-Mpx photo), in the run's numeric precision (bf16 autocast if it trained in bf16), as
`cnnzoo evaluate` scores it. Writes
`<stem>_mask.png` (0/255 for two classes, else a palette PNG of class indices: the format
training reads)
and `<stem>_overlay.png` (the predicted contours over the image). Folders are expanded
recursively, without the masks and overlays an earlier run wrote into the output folder, and
without the masks/ and instances/ of image/mask pairs.
`--tta` averages test-time augmentation views per tile, as `cnnzoo evaluate --tta` scores.

Also home of the segmentation options of `cnnzoo train --task segmentation`
(`add_training_arguments`), so that they live next to the rest of the segmentation CLI.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..paths import folders_released
from .argtypes import (
    COUNT,
    add_progress_argument,
    add_threads_argument,
    real,
    refuse_resume_with_overwrite,
    whole,
)
from .train import add_tta_argument


def add_training_arguments(p: argparse.ArgumentParser) -> None:
    """The `--task segmentation` options of `cnnzoo train` (left out: None, and `train`'s
    defaults, or with --resume the run's own)."""
    g = p.add_argument_group("segmentation (--task segmentation; model unet)")
    g.add_argument("--loss", choices=("ce", "dice", "ce+dice", "weighted_ce"), default=None,
                   help="weighted_ce: U-Net's border-weighted cross-entropy (default ce+dice)")
    g.add_argument("--classes", help="class names in index order, e.g. background,cell "
                   "(default: classes.txt in the folder, else 0, 1, ...)")
    g.add_argument("--crop", type=COUNT, default=None,
                   help="training tile side in pixels (default 128, with --resume the run's "
                        "own; snapped to a legal size); "
                        "with --padding valid the output side: 388 gives the paper's 572-px "
                        "input")
    g.add_argument("--padding", choices=("same", "valid"), default=None,
                   help="'valid' is the paper's net (output smaller than input); default same")
    g.add_argument("--base-width", type=COUNT, default=None,
                   help="channels of the first U-Net level (paper: 64; default 16; not with "
                        "--encoder, which has its own)")
    g.add_argument("--encoder", metavar="NAME", default=None,
                   help="a zoo classifier as the contracting path: resnet18, resnet34, "
                        "resnet50, vgg16_bn or efficientnet_lite0/1/2 (default: none, the "
                        "paper's own)")
    g.add_argument("--encoder-weights", metavar="imagenet|FILE|none", default=None,
                   type=_encoder_weights,
                   help="pretrained weights of the encoder (default: none, a random start)")
    g.add_argument("--cells", type=COUNT, default=None,
                   help="--data cells: number of synthetic images (default 200; refused with "
                        "other data)")
    g.add_argument("--elastic", type=real(0), default=None,
                   help="elastic deformation std in pixels (default 10, the paper's; 0 disables)")
    g.add_argument("--w0", type=real(0), default=None,
                   help="weighted_ce border weight (default 10, the paper's)")
    g.add_argument("--sigma", type=real(0, above=True), default=None,
                   help="weighted_ce border width in pixels (default 5; paper: about 5)")


def _encoder_weights(text: str) -> str | None:
    """--encoder-weights: 'none' is a random start, as leaving the option out is (smp's
    encoder_weights=None, and this help's 'default: none'); it was looked up as a weights file
    and refused. A file of that name is taken as the file."""
    return None if text.lower() == "none" and not Path(text).exists() else text


def segmentation_options_set(args: argparse.Namespace) -> list[str]:
    """The options of `add_training_arguments` that `args` sets away from their defaults (read
    from a parser of those options alone, so they are written down once): a classifier's run
    has no use for them."""
    p = argparse.ArgumentParser(add_help=False)
    add_training_arguments(p)
    return [a.option_strings[0] for a in p._actions
            if getattr(args, a.dest, a.default) != a.default]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders")
    p.add_argument("--checkpoint", required=True, metavar="FILE",
                   help="best.pt or last.pt of `cnnzoo train unet --task segmentation`")
    p.add_argument("--out", metavar="DIR", default="segmented",
                   help="output folder (default ./segmented)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run into --out: segment only the images it "
                        "holds no mask and overlay for")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the masks and overlays --out holds for these images (those "
                        "of other images stay); without it (or --resume) they are refused")
    add_tiling_arguments(p)
    add_tta_argument(p, "test-time augmentation of each overlap tile, as `cnnzoo evaluate --tta` "
                        "scores (default off)")
    p.add_argument("--batch-size", type=COUNT, default=4, help="tiles per forward pass (default 4)")
    p.add_argument("--json", action="store_true",
                   help="machine-readable output on stdout: one JSON list of records, one per "
                        "image, as `cnnzoo predict --json` gives")  # fmt: skip
    add_threads_argument(p)
    add_progress_argument(p)


def add_tiling_arguments(p: argparse.ArgumentParser, default: int | None = 512,
                         note: str = "") -> None:
    """--tile and --margin of the overlap-tile prediction (`segment`, and `evaluate` on a
    segmentation checkpoint, which scores what `segment` writes)."""
    p.add_argument("--tile", type=COUNT, default=default,
                   help=f"{note}input tile side in pixels (default 512; bounds the memory)")
    p.add_argument("--margin", type=whole(0), default=None,
                   help=f"{note}context per tile side in 'same' mode (default: the "
                        "receptive-field radius, which makes the tiles of the paper's U-Net "
                        "agree exactly with a whole-image pass; with a classifier encoder, "
                        "whose receptive field is larger, 96 px: nearly)")


# What a mask PNG records of its making (tEXt keys), for --resume and a folder that collects batch
# after batch: the image by content (`file_digest`: day2/x.png is told from day1/x.png, whose
# mask x_mask.png is), the checkpoint (`weights_fingerprint`: two nets' masks, half and half,
# are not one run's) and the test-time augmentation (`--tta`: another mask of the same net).
# TTA_KEY is written only with --tta, so a mask without it was made without (as every mask was
# before segment had --tta) and plain masks are what they were.
SOURCE_KEY = "cnnzoo-source-sha256"
MADE_BY = "cnnzoo checkpoint"
TTA_KEY = "cnnzoo tta"


def mask_record(image: Path, made_by: str, tta: str | None) -> dict[str, str]:
    """The record `write_mask_png` stores for the mask of `image` (the keys above)."""
    from ..paths import file_digest

    return {SOURCE_KEY: file_digest(image), MADE_BY: made_by, **({TTA_KEY: tta} if tta else {})}


def write_mask_png(mask, num_classes: int, path: Path,
                   record: dict[str, str] | None = None) -> Path:
    """Save a (H, W) class-index mask: 0/255 grey for two classes; otherwise a palette PNG, as
    Pascal VOC's masks are, whose pixel values are the class indices (what training reads, and
    `np.array(Image.open(path))` gives) and whose colours are the overlay's: an L-mode PNG of
    0, 1, 2 looked black in every viewer. `record` ({SOURCE_KEY: ..., MADE_BY: ...}) is stored
    in it."""
    import numpy as np
    from PIL import Image

    from ..data.images import write_png
    from ..segmentation.visual import CLASS_COLOURS

    m = np.asarray(mask, dtype=np.uint8)
    if num_classes == 2:
        png = Image.fromarray(m * 255)
    else:
        png = Image.fromarray(m)
        png.putpalette(CLASS_COLOURS.tobytes())  # an L image becomes P, its values unchanged
    write_png(png, path, text=record)  # a kill leaves no cut mask
    return path


def mask_result(image: Path, mask, mask_path: Path, overlay_path: Path,
                class_names: list[str]) -> dict[str, Any]:
    """`run`'s record of one image (as `predict --json`'s): its size, its files and each
    class's share of the pixels of its (H, W) class-index `mask`."""
    import numpy as np

    m = np.asarray(mask)
    return {"image": os.fspath(image), "width": int(m.shape[1]), "height": int(m.shape[0]),
            "mask": os.fspath(mask_path), "overlay": os.fspath(overlay_path),
            "classes": [{"index": i, "class": name, "share": float((m == i).mean())}
                        for i, name in enumerate(class_names)]}  # fmt: skip


def earlier_result(image: Path, names: dict[Path, str], out: Path,
                   class_names: list[str]) -> dict[str, Any]:
    """The record of an image an earlier run segmented into `out` (`--resume` skips it), read
    from its mask, with "earlier_run": true; {"image", "error"} when that mask cannot be read.
    `--resume --json` lists every image given, so a script whose first run was stopped before
    it printed its JSON still learns where every mask is."""
    import numpy as np
    from PIL import Image

    mask_path, overlay_path = outputs_of(image, names, out)
    try:
        with Image.open(mask_path) as img:
            m = np.asarray(img)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        return {"image": os.fspath(image), "error": f"{mask_path}, the mask an earlier run "
                f"wrote, cannot be read ({exc}): pass --overwrite to segment again"}  # fmt: skip
    if len(class_names) == 2:  # 0/255, as `write_mask_png` writes two classes
        m = m // 255
    return {**mask_result(image, m, mask_path, overlay_path, class_names), "earlier_run": True}


def output_stems(paths: list[Path]) -> dict[Path, str]:
    """Output name (without _mask.png) per image: its stem, or, for the images that share a stem
    (a/x.png, b/x.png, x.jpg), their path below their common folder, and their extension when
    that is not enough (x.png, x.jpg side by side), so none overwrites another. Images whose stem
    is their own keep it (`b_png_mask.png` for a lone b.png was a surprise)."""
    from collections import Counter

    names = {p: p.stem for p in paths}

    def clashing() -> list[Path]:
        count = Counter(names.values())
        return [p for p in paths if count[names[p]] > 1]

    groups: dict[str, list[Path]] = {}
    for p in clashing():
        groups.setdefault(names[p], []).append(p)
    for same in groups.values():  # each stem's files, below their own common folder
        root = Path(os.path.commonpath([p.resolve().parent for p in same]))
        names.update({p: p.resolve().relative_to(root).with_suffix("").as_posix() for p in same})
    names.update({p: f"{names[p]}_{p.suffix.lstrip('.')}" for p in clashing()})
    names.update({p: f"{names[p]}_{i}" for i, p in enumerate(clashing(), 1)})  # a.png, a_png.png
    return {p: _short_enough(name) for p, name in names.items()}


NAME_MAX = 255  # bytes in one file name, on the usual file systems (ext4, XFS, btrfs, APFS)
# What the atomic writers add to a name for the temporary file they rename into place
# (`paths.temp_prefix` + mkstemp's part): '.NAME.PID.xxxxxxxx.tmp', with a PID of up to 7 digits.
TEMP_EXTRA = len("." + ".4194304." + "xxxxxxxx" + ".tmp")


def _short_enough(name: str) -> str:
    """`name` (an `output_stems` value), its last part cut so that each output's file name, and
    the temporary one it is written under, fit in NAME_MAX bytes, and told from other cuts by a
    hash of the whole: an image named with 240 bytes (a generated name) has a legal name, but
    its `_overlay.png` had none, and the run ended in a traceback before segmenting any image."""
    head, _, base = name.rpartition("/")
    room = NAME_MAX - TEMP_EXTRA - max(len(s) for s in OUTPUT_SUFFIXES)

    def size(text: str) -> int:
        return len(os.fsencode(text))

    if size(base) <= room:
        return name
    import hashlib

    tag = "~" + hashlib.sha256(os.fsencode(name)).hexdigest()[:8]
    while size(base) + len(tag) > room:  # by characters: a multi-byte one is not split
        base = base[:-1]
    return f"{head}/{base}{tag}" if head else base + tag


OUTPUT_SUFFIXES = ("_mask.png", "_overlay.png")  # the files `run` writes for each image


def outputs_of(path: Path, names: dict[Path, str], out: Path) -> list[Path]:
    """The files `run` writes for image `path` (`output_stems` names them)."""
    return [out / f"{names[path]}{suffix}" for suffix in OUTPUT_SUFFIXES]


def check_earlier_outputs(paths: list[Path], names: dict[Path, str], out: Path, *,
                          resume: bool, overwrite: bool, made_by: str,
                          tta: str | None = None) -> list[Path]:  # fmt: skip
    """The images still to segment: all of `paths`, or with `resume` those whose mask and
    overlay `out` does not hold yet. Outputs of these images already in `out` (an earlier run:
    another checkpoint's masks, or the first half of a killed run) are a `UsageError` unless
    `resume` or `overwrite` says what to do with them, as `cnnzoo train` treats a run in its
    --out: they were replaced without a word. Outputs of other images are not this run's
    business (a folder that collects the masks of one batch of scans after another). `resume`
    refuses masks that another checkpoint than `made_by` wrote (their PNG says which), or that
    were made with another `tta` (None: none): a folder of two nets' masks, or of one net's
    with and without test-time augmentation, half and half, looks like one run's."""
    from ..data.images import png_text
    from ..errors import UsageError
    from ..paths import file_digest

    held = [p for p in paths if any(f.exists() for f in outputs_of(p, names, out))]
    if not held or overwrite:
        return paths
    # What each mask records (`write_mask_png`); masks of older versions record nothing and are
    # taken as this image's and this checkpoint's.
    records = {p: png_text(outputs_of(p, names, out)[0]) for p in held}
    # A mask recorded for other bytes is another image's of the same name (day2/x.png where
    # day1/x.png's x_mask.png is): --resume took it for this one's, and skipped an image never
    # segmented ('nothing to do').
    other = [p for p in held if records[p].get(SOURCE_KEY) not in (None, file_digest(p))]
    if other:
        mask = outputs_of(other[0], names, out)[0]
        raise UsageError(f"{mask} is the mask of another image than {other[0]} (the same name, "
                         "other contents): segment into another --out, or pass --overwrite to "
                         "replace it")  # fmt: skip
    if not resume:
        first = next(f for f in outputs_of(held[0], names, out) if f.exists())
        which = "this image" if len(paths) == 1 else f"{len(held)} of these {len(paths)} images"
        raise UsageError(f"{out} holds what an earlier run wrote for {which} ({first}): pass "
                         "--resume to segment only the others, --overwrite to replace it, or "
                         "another --out")
    by_other_net = [p for p in held if records[p].get(MADE_BY) not in (None, made_by)]
    if by_other_net:
        raise UsageError(f"{out} holds masks another checkpoint wrote "
                         f"({outputs_of(by_other_net[0], names, out)[0]}): --resume continues "
                         "with the same --checkpoint only; pass --overwrite to segment every "
                         "image again, or another --out")  # fmt: skip
    by_other_tta = [p for p in held if records[p].get(TTA_KEY) != tta]
    if by_other_tta:
        theirs = records[by_other_tta[0]].get(TTA_KEY)
        made = f"with --tta {theirs}" if theirs else "without --tta"
        again = f"--tta {theirs}" if theirs else "no --tta"
        raise UsageError(f"{out} holds masks made {made} "
                         f"({outputs_of(by_other_tta[0], names, out)[0]}): --resume continues "
                         f"with the test-time augmentation they were made with ({again}); pass "
                         "--overwrite to segment every image again, or another --out")  # fmt: skip
    return [p for p in paths if not all(f.exists() for f in outputs_of(p, names, out))]


def earlier_outputs(paths: list[Path], given: list[str], out: Path) -> list[Path]:
    """The files of `paths` that a folder expanded to and that are this command's own outputs:
    `*_mask.png` and `*_overlay.png` inside `out`. Run twice on a folder that holds `out` (the
    default ./segmented with `cnnzoo segment .`), the second run segmented the first one's masks
    and overlays (x_mask_mask.png, x_overlay_overlay.png), one more layer each time. A file
    named on the command line is taken as asked."""
    named = {os.path.realpath(g) for g in given if not os.path.isdir(g)}
    root = Path(os.path.realpath(out))
    return [p for p in paths
            if p.name.endswith(OUTPUT_SUFFIXES) and os.path.realpath(p) not in named
            and Path(os.path.realpath(p)).is_relative_to(root)]  # fmt: skip


def label_files(paths: list[Path], given: list[str]) -> list[Path]:
    """The files of `paths` in the masks/ or instances/ folder of image/mask pairs (beside an
    images/ folder, `holds_mask_pairs`) inside a folder given: `cnnzoo segment test_set/`
    segmented the ground-truth masks as images, each into a mask of its own. The masks folder
    given itself (`cnnzoo segment test_set/masks`) is taken as asked, as a file named is."""
    from functools import cache

    from ..data.masks import holds_mask_pairs

    folders = [Path(os.path.realpath(g)) for g in given if os.path.isdir(g)]

    @cache
    def of_pairs(parent: Path) -> bool:
        root = Path(os.path.realpath(parent.parent))
        return (parent.name.lower() in ("masks", "instances") and holds_mask_pairs(root)
                and any(root.is_relative_to(f) for f in folders))

    return [p for p in paths if of_pairs(p.parent)]


@folders_released()  # lets go of --out (`hold_folder` below) however the run ends
def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from ..data.images import frame_count, load_image, write_png
    from ..engine.checkpoint import load_checkpoint
    from ..engine.distributed import use_threads
    from ..engine.precision import Precision
    from ..errors import ImageError
    from ..paths import check_folder, hold_folder
    from ..segmentation.tiling import checked_geometry, predict_tiled
    from ..segmentation.training import load_segmenter
    from ..segmentation.visual import overlay
    from ..text import plural, shown, some
    from ..weights.files import weights_fingerprint
    from .predict import expand_paths, print_results

    refuse_resume_with_overwrite(args)
    use_threads(args.threads)
    problems: list[dict[str, str]] = []  # a folder without images: exit status 1, as an
    paths = expand_paths(args.images, problems)  # unreadable image, and its record in --json
    out = Path(args.out)
    check_folder(out, "--out")
    skip = earlier_outputs(paths, args.images, out)
    if skip:
        paths = [p for p in paths if p not in skip]
        print(f"cnnzoo segment: note: left out {plural(len(skip), 'file')} in {out}, the "
              "masks and overlays of an earlier run", file=sys.stderr)
        if not paths:
            raise ImageError(f"no images to segment: the folders given hold only the masks and "
                             f"overlays in {out}")  # fmt: skip
    labels = label_files(paths, args.images)
    if labels:
        paths = [p for p in paths if p not in labels]
        folders = sorted({shown(p.parent) for p in labels})
        print(f"cnnzoo segment: note: left out {plural(len(labels), 'file')} in {some(folders)}, "
              "the masks of image/mask pairs: name that folder to segment them",
              file=sys.stderr)  # fmt: skip
        if not paths:
            raise ImageError("no images to segment: the folders given hold only masks")
    names = output_stems(paths)
    # The checkpoint before the masks in --out are judged by it: a mistyped path, a run's folder
    # or a classifier's checkpoint was 'seg holds masks another checkpoint wrote' with --resume.
    # Mapped, not read: the fingerprint below reads the file through once (loading it as well
    # read it twice), and the pages the net's weights take come from the cache then; a
    # last.pt's optimizer state is never read at all.
    ckpt = load_checkpoint(args.checkpoint, mmap=True)
    model, meta = load_segmenter(args.checkpoint, ckpt)
    made_by = weights_fingerprint(args.checkpoint)
    # One run per --out, as `train` and `transfer` hold theirs: a --resume started while the
    # first run still wrote there took the same masks as still to do, and both segmented
    # them. Held before the masks there are judged, which another run may be writing.
    hold_folder(out)
    todo = check_earlier_outputs(paths, names, out, resume=args.resume,
                                 overwrite=args.overwrite, made_by=made_by,
                                 tta=args.tta)  # fmt: skip
    k, channels = int(meta["num_classes"]), int(meta["in_chans"])
    class_names = [str(c) for c in meta.get("class_names") or range(k)]
    if not todo:
        print(f"cnnzoo segment: note: all {plural(len(paths), 'image')} given are segmented in "
              f"{out} already: nothing to do (--overwrite segments them again)", file=sys.stderr)
        # A JSON reader gets its document all the same: the problems' records (folders without
        # images) and every image's, read from its mask.
        earlier = (earlier_result(p, names, out, class_names) for p in paths) if args.json else ()
        failed = print_results(itertools.chain(problems, earlier), as_json=args.json,
                               command="segment")  # fmt: skip
        return 1 if failed else 0
    if len(todo) < len(paths):
        print(f"cnnzoo segment: note: resuming: {len(paths) - len(todo)} of "
              f"{plural(len(paths), 'image')} already segmented in {out}", file=sys.stderr)
    # --json lists every image given, those an earlier run segmented too (read from their
    # masks); the text output has this run's lines, and the note above counts the others.
    listed = paths if args.json else todo
    todo_set = set(todo)
    # The run's own precision, as `cnnzoo evaluate` predicts: the masks written are the ones it
    # scores (in fp32, a bf16 run's masks differed from them on about 1 % of the pixels).
    precision = Precision.of_checkpoint(ckpt)
    model.to(memory_format=precision.memory_format)
    del ckpt  # the model holds its own copy of the weights: not two in memory while segmenting
    geo = checked_geometry(model, args.tile, args.margin)
    if geo.out_size * 4 < geo.in_size:
        # Each input tile is mostly context: many more forward passes than the image needs.
        # In 'valid' mode the net itself trims the context: only a larger tile helps.
        faster = "a larger --tile" + ("" if geo.trim else " or a smaller --margin")
        print(f"cnnzoo segment: note: tiles of {geo.in_size} px keep {geo.out_size} px each "
              f"({geo.margin} px of context per side); {faster} is faster",
              file=sys.stderr)  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)

    def segmented() -> Iterator[dict[str, Any]]:
        """One record per image, as `predict`'s: {"image", "error"} for a file that cannot be
        read, else its size, the files written and each class's share of the pixels."""
        # A bar over the images, or for one image over its tiles (a large scan takes minutes).
        for path in tqdm(listed, desc="segment", leave=False,
                         disable=None if args.progress and len(todo) > 1 else True):
            if path not in todo_set:
                yield earlier_result(path, names, out, class_names)
                continue
            try:
                img = np.array(load_image(path, 1 if channels == 1 else 3))
            except ImageError as exc:
                yield {"image": os.fspath(path), "error": str(exc)}
                continue
            chw = torch.from_numpy(img[None] if img.ndim == 2 else img.transpose(2, 0, 1).copy())
            with precision.autocast():
                mask = predict_tiled(model, chw, tile=args.tile, margin=args.margin,
                                     batch_size=args.batch_size, mean=tuple(meta["mean"]),
                                     std=tuple(meta["std"]), output="mask",
                                     progress=args.progress and len(todo) == 1,
                                     tta=args.tta or False).numpy()
            mask_path, overlay_path = outputs_of(path, names, out)
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            write_mask_png(mask, k, mask_path, mask_record(path, made_by, args.tta))
            write_png(overlay(img, mask), overlay_path)  # last: --resume redoes an image without it
            args.segmented = getattr(args, "segmented", 0) + 1  # for cli's line after a Ctrl-C
            frames = frame_count(path)
            if frames > 1:  # a microscope's time-lapse or z-stack: said, not segmented in part silently
                print(f"cnnzoo segment: note: {shown(path)} holds {frames} frames (a stack); only the first "
                      "was segmented: save each frame as its own image to segment them all",
                      file=sys.stderr)  # fmt: skip
            yield mask_result(path, mask, mask_path, overlay_path, class_names)

    def line(r: dict[str, Any]) -> str:
        share = ", ".join(f"{c['class']} {c['share']:.1%}" for c in r["classes"])
        return f"{r['image']}: {r['width']}x{r['height']} -> {r['mask']}, {r['overlay']} ({share})"

    # One line per image (`shown` by print_results, whatever the file and its classes are
    # named), or the JSON records; errors on stderr either way, as predict's.
    failed = print_results(itertools.chain(problems, segmented()), as_json=args.json,
                           command="segment", lines=lambda r: [line(r)],
                           path_line=False)  # fmt: skip
    return 1 if failed else 0
