"""Image/mask pairs for segmentation: a folder pair matched by file stem, or a CSV manifest.

Layout read by `load_mask_pairs(root)`::

    root/images/a.png   root/masks/a.png   [root/instances/a.png]   [root/classes.txt]

Masks are single-channel PNGs of class indices (0, 1, 2, ...; palette PNGs, 16-bit and float
TIFFs of whole values and grey PNGs with alpha count as indices), or 0/255 for two classes:
when every mask holds only 0 and 255 (and no more than two classes are given), 255 becomes
class 1, and so it is in a two-class set whose masks are some 0/1 and the others 0/255 (none
holding 1 and 255 together: two ways of saving one set's masks). Otherwise 255 means "ignore"
(the Pascal VOC convention) and is kept as `IGNORE_INDEX`, also in a mask that holds only 0
and 255. JPEG and lossy WebP masks are refused: compression
adds in-between values along every edge, and each would become a class. An optional `instances/`
folder holds 16-bit PNGs of instance ids (0 = background), used for the border weight map of
U-Net's loss; without it, instances are the connected components of the foreground -- also for
the pairs that lack an instance file when others have one (a note names them).

A CSV manifest has a header and columns `image,mask[,instances][,split]`, paths relative to the
CSV; a split column (train/val/test, as in classification manifests) picks the validation pairs
and holds the test ones out. Its pairs are read in the order of their image paths, not of its
rows, so sorting the sheet does not change a seeded split.

A pair with a missing mask, an unreadable file, a JPEG mask, two files of one stem (a.png and
a.jpg) or a mask whose size differs from its image is reported in one line (`report`, stderr by
default) and skipped; the rest of the data set loads. When the classes are inferred from the
largest mask value, a note names the inferred classes that hardly occur or do not occur at all.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from ..errors import DataError
from ..text import plural, shown, some
from .folder import composed, manifest_path, refuse_control, user_text
from .images import GREY_MODES, IMAGE_EXTENSIONS

if TYPE_CHECKING:
    from PIL import Image

IGNORE_INDEX = 255
# Lossy formats: their compression puts in-between values along every edge of a mask, and each
# of those would become a class (a 0/255 JPEG mask reads as 254 classes).
_LOSSY_FORMATS = frozenset({"JPEG", "MPO"})
# An inferred class (above 0) holding less than this share of the labelled pixels is named in a
# note: one stray value in one mask silently adds classes, and absent classes score 1.
_RARE_SHARE = 1e-3


def _stderr(msg: str) -> None:
    print(shown(msg), file=sys.stderr)  # a skip line names a file: one line, whatever its name


@dataclass
class MaskPairs:
    """Decoded pairs. images: uint8 (H, W, C) arrays; masks: uint8 (H, W) class indices
    (`IGNORE_INDEX` = ignore); instances: int32 (H, W) ids or None; sizes may differ per pair."""

    images: list[np.ndarray]
    masks: list[np.ndarray]
    instances: list[np.ndarray] | None
    names: list[str]
    classes: list[str]
    skipped: list[str] = field(default_factory=list)
    binary_255: bool = False  # the masks' 255 was read as class 1 (a 0/255 two-class set)
    # Per pair 'train' or 'val': a manifest's split column; None without one (a folder).
    splits: list[str] | None = None
    # Each pair's image file, for putting a manifest's pairs back in its rows' order
    # (`row_ranks`); None when not known.
    files: list[Path] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_chans(self) -> int:
        return self.images[0].shape[2]

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:  # a notebook line, as ImageDataset's (not the arrays)
        return (f"MaskPairs({plural(len(self), 'pair')}, {len(self.classes)} classes, "
                f"{len(self.skipped)} skipped)")

    def subset(self, idx: Sequence[int]) -> MaskPairs:
        """The pairs at `idx`, same classes and reading of 255 (`skipped` stays with the whole)."""
        inst = None if self.instances is None else [self.instances[i] for i in idx]
        splits = None if self.splits is None else [self.splits[i] for i in idx]
        files = None if self.files is None else [self.files[i] for i in idx]
        return MaskPairs([self.images[i] for i in idx], [self.masks[i] for i in idx], inst,
                         [self.names[i] for i in idx], list(self.classes), [], self.binary_255,
                         splits, files)  # fmt: skip

    def __add__(self, other: MaskPairs) -> MaskPairs:
        """Both sets of pairs (a folder's and its val/ folder's), the classes of the first."""
        both = self.instances is not None and other.instances is not None
        inst = [*self.instances, *other.instances] if both else None
        files = None if self.files is None or other.files is None else [*self.files,
                                                                         *other.files]
        return MaskPairs([*self.images, *other.images], [*self.masks, *other.masks], inst,
                         [*self.names, *other.names], list(self.classes),
                         [*self.skipped, *other.skipped], self.binary_255,
                         files=files)  # fmt: skip


def foreground_components(mask: np.ndarray) -> np.ndarray:
    """Instance ids of a mask without an instance file: the 4-connected components of its
    foreground (any class above 0; ignored pixels are not foreground)."""
    return ndimage.label((mask > 0) & (mask != IGNORE_INDEX))[0].astype(np.int32)


def layout_folder(root: str | Path, name: str) -> Path:
    """`root`'s sub-folder `name` (images, masks, instances, val, test) in whatever case it is
    spelt: Images/ made on Windows or a Mac, whose folder names ignore case and where it already
    reads as images/, reads so here too, as Train/ and Val/ of a classification folder do.
    `root / name` (which may not exist) when no spelling is there; two (images/ and Images/)
    are a one-line `DataError`, since which is meant cannot be told."""
    root = Path(root)
    found = [p for p in sorted(root.iterdir()) if p.name.lower() == name and p.is_dir()] \
        if root.is_dir() else []  # fmt: skip
    if len(found) > 1:
        raise DataError(f"{root} has {' and '.join(p.name + '/' for p in found)}: folder names "
                        f"that differ only in case; keep one {name}/ folder")  # fmt: skip
    return found[0] if found else root / name


def _files_by_stem(folder: Path, problems: list[str], ambiguous: set[str]) -> dict[str, Path]:
    """{stem: file}; a stem held by two files (a.png and a.jpg) is left out, added to
    `ambiguous` and reported in `problems`: which of them the pair means cannot be told."""
    by_stem: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        # Every format images are read in (.webp, .gif, ...); no hidden files (macOS's ._a.png).
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."):
            # One stem however its accents are spelt: a Mac's masks/é.png names images/é.jpg.
            by_stem.setdefault(composed(p.stem), []).append(p)
    for stem, paths in by_stem.items():
        if len(paths) > 1:
            ambiguous.add(stem)
            problems.append(
                f"skipped {stem}: {' and '.join(map(str, paths))} have the same stem: "
                "keep one of them (pairs are matched by file stem)"
            )
    return {stem: paths[0] for stem, paths in by_stem.items() if len(paths) == 1}


def masks_elsewhere(root: Path) -> str:
    """', as labels/ may be (it holds files named as the images')' when `root` has images/ but
    no masks/, and another folder of it holds files of the images' stems: masks under another
    name (labels/, annotations/, gt/), which the layout does not look for; else ''."""
    img_dir = layout_folder(root, "images")
    if not img_dir.is_dir() or layout_folder(root, "masks").is_dir():
        return ""
    stems = {composed(p.stem) for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS}
    for d in sorted(p for p in root.iterdir() if p.is_dir() and p != img_dir):
        if d.name.lower() in ("val", "test", "instances"):
            continue
        if any(composed(p.stem.removesuffix("_mask")) in stems for p in d.iterdir()
               if p.suffix.lower() in IMAGE_EXTENSIONS):
            return (f" ({d.name}/ holds files named as the images': if they are the masks, "
                    f"rename it masks/)")
    return ""


def classes_file(root: Path) -> list[str] | None:
    """The class names `root/classes.txt` lists, one per line (None without one): UTF-8, a
    Notepad byte-order mark and Windows line ends allowed (a cp1252 file was a traceback, and
    the mark made the first name '\\ufeffbackground', which prints as 'background' but is not
    the held-out set's)."""
    path = root / "classes.txt"
    if not path.is_file():
        return None
    return [c.strip() for c in user_text(path).splitlines() if c.strip()]


def _refuse_voc_layout(root: Path) -> None:
    """A DataError saying how to train on a Pascal VOC folder, when `root` is one: its
    JPEGImages/ and SegmentationClass/ were 'root/images is not a folder: put images in
    root/images and masks in root/masks', which said nothing of its split lists, and renaming
    the folders would pair each of VOC 2012's 17,125 photos, most of which have no mask."""
    jpegs, classes = (layout_folder(root, n) for n in ("jpegimages", "segmentationclass"))
    if not (jpegs.is_dir() and classes.is_dir()):
        return
    lists = layout_folder(layout_folder(root, "imagesets"), "segmentation")
    raise DataError(f"{root} is a Pascal VOC folder ({jpegs.name}/, {classes.name}/), which is "
                    "read through a CSV manifest: write one into it, a header image,mask,split "
                    f"and a row {jpegs.name}/NAME.jpg,{classes.name}/NAME.png,train for each "
                    f"NAME in {lists / 'train.txt'} (val for those in val.txt), and pass it as "
                    "--data (docs/segmentation.md)")  # fmt: skip


def find_pairs(
    root: str | Path, *, images: str = "images", masks: str = "masks", instances: str = "instances"
) -> tuple[list[tuple[str, Path, Path, Path | None]], list[str]]:
    """(name, image, mask, instances-or-None) per stem present in both folders, and one message
    per image without a mask or mask without an image."""
    root = Path(root)
    img_dir, mask_dir, inst_dir = (layout_folder(root, n) for n in (images, masks, instances))
    for d in (img_dir, mask_dir):
        if not d.is_dir():
            _refuse_voc_layout(root)
            raise DataError(
                f"{d} is not a folder: put images in {img_dir} and masks (same file stems) in "
                f"{mask_dir}{masks_elsewhere(root)}, or pass a CSV manifest."
            )
    problems: list[str] = []
    ambiguous: set[str] = set()
    imgs = _files_by_stem(img_dir, problems, ambiguous)
    msks = _files_by_stem(mask_dir, problems, ambiguous)
    insts = _files_by_stem(inst_dir, problems, ambiguous) if inst_dir.is_dir() else {}
    # A stem reported above for two files in one folder is not also "without a mask/image".
    imgs = {s: p for s, p in imgs.items() if s not in ambiguous}
    msks = {s: p for s, p in msks.items() if s not in ambiguous}
    # img_05_mask.png is img_05.png's mask: the names `cnnzoo segment` writes, and a common way
    # of naming masks, unless a mask of the plain stem is there too.
    for stem in [s for s in msks if s.endswith("_mask") and s not in imgs]:
        if stem[: -len("_mask")] in imgs and stem[: -len("_mask")] not in msks:
            msks[stem[: -len("_mask")]] = msks.pop(stem)
    problems += [f"skipped {imgs[s]}: no mask {s}.* in {mask_dir}" for s in imgs if s not in msks]
    problems += [f"skipped {msks[s]}: no image {s}.* in {img_dir}" for s in msks if s not in imgs]
    pairs = [(s, imgs[s], msks[s], insts.get(s)) for s in imgs if s in msks]
    return pairs, problems


def read_manifest(
    path: str | Path, problems: list[str] | None = None
) -> list[tuple[str, Path, Path, Path | None, str | None]]:
    """Rows of a CSV manifest with columns image,mask[,instances][,split] (paths relative to the
    CSV) as (name, image, mask, instances, split). split: 'train', 'val' or 'test' (the names
    classification manifests take, `folder.manifest_split`), 'train' in an empty cell, None
    without a split column; rows of another split value are left out, one line per value in
    `problems`."""
    from .folder import header_name, manifest_rows, manifest_split, unknown_split_lines

    path = Path(path)
    lines = [(n, r) for n, r in enumerate(manifest_rows(path), start=1)
             if any(c.strip() for c in r)]  # (Excel's empty rows are ';;')
    header = [header_name(c) for c in lines[0][1]] if lines else []  # Excel's Image,Mask too
    if not {"image", "mask"} <= set(header):
        raise DataError(f"{path}: expected a header with the columns image,mask[,instances]"
                        "[,split].")
    column = next((c for c in ("split", "subset") if c in header), None)
    base = path.parent
    out = []
    unknown: dict[str, list[int]] = {}
    for lineno, cells in lines[1:]:
        if [header_name(c) for c in cells] == header:  # a second manifest's, pasted below
            continue
        row = {k: cells[i] if i < len(cells) else "" for i, k in enumerate(header)}
        split = None
        if column is not None:
            split = manifest_split(row.get(column) or "")
            if split is None:
                unknown.setdefault((row.get(column) or "").strip(), []).append(lineno)
                continue
        img, mask = manifest_path(base, row["image"]), manifest_path(base, row["mask"])
        inst = manifest_path(base, row["instances"]) if row.get("instances") else None
        out.append((img.stem, img, mask, inst, split))
    if problems is not None:
        problems += unknown_split_lines(path, unknown)
    return out


class _LossyFile(ValueError):
    """A mask or instance file in a lossy format (its values are not the ones saved)."""


def _rare_values_note(masks: Sequence[np.ndarray], names: Sequence[str], k: int) -> list[str]:
    """A note when classes inferred from the largest mask value include classes (above 0) that
    hardly occur or do not occur: usually stray values, each of which adds classes silently."""
    counts = np.zeros(IGNORE_INDEX, dtype=np.int64)
    files: dict[int, list[str]] = {}
    for m, name in zip(masks, names, strict=True):
        c = np.bincount(m.ravel(), minlength=256)[:IGNORE_INDEX]
        counts += c
        for v in np.flatnonzero(c[1:k]) + 1:
            files.setdefault(int(v), []).append(name)
    labelled = int(counts.sum())
    rare = [v for v in range(1, k) if 0 < counts[v] < _RARE_SHARE * labelled]
    absent = [v for v in range(1, k) if counts[v] == 0]
    if not rare and not absent:
        return []
    parts = [
        f"value {v} is on {plural(counts[v], 'pixel')} in "
        f"{plural(len(files[v]), 'mask')} ({some(files[v])})"
        for v in rare
    ]
    if absent:
        parts.append(
            f"{'value' if len(absent) == 1 else 'values'} {', '.join(map(str, absent))} in no mask"
        )
    return [
        f"note: {k} classes inferred from the mask values 0..{k - 1}, but "
        + "; ".join(parts)
        + ": if these are stray values, name the classes (--classes or classes.txt) and "
        "masks with values beyond them are skipped"
    ]


def _lossy_format(path: Path, fmt: str | None) -> str | None:
    """'JPEG' or 'lossy WebP' for a file whose stored values are not the ones saved, else None.
    WebP is lossy or lossless per file: its first image chunk says which ('VP8 ' or 'VP8L');
    a lossy one also decodes to RGB, and was taken for a colour mask."""
    if fmt in _LOSSY_FORMATS:
        return "JPEG"
    if fmt != "WEBP":
        return None
    with open(path, "rb") as f:
        data = f.read(1 << 16)  # the chunk headers before the image data
    pos = 12  # after 'RIFF' size 'WEBP'
    while pos + 8 <= len(data):
        fourcc, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        if fourcc == b"VP8 ":
            return "lossy WebP"
        if fourcc == b"VP8L":
            return None
        pos += 8 + size + (size & 1)  # 'VP8X', 'ALPH', 'ICCP', ... (padded to even sizes)
    return None


def _stored_values(im: Image.Image) -> np.ndarray:
    """The values a file stores. PIL inverts 1- and 8-bit TIFFs marked WhiteIsZero (as ImageJ
    saves an image with an inverting LUT) to show them the right way round, which for a mask
    swapped its classes: 255 on the cells read as 0, the background as 255."""
    tiles = getattr(im, "tile", None) or ()  # a file not yet decoded (not a channel of one)
    inverted = any(str(t[3][0] if isinstance(t[3], tuple) else t[3]).endswith(";I")
                   for t in tiles)
    arr = np.asarray(im)
    if not inverted:
        return arr
    return ~arr if arr.dtype == bool else np.iinfo(arr.dtype).max - arr


def _read_mask(path: Path) -> np.ndarray:
    from .images import open_raw

    with open_raw(path) as im:
        lossy = _lossy_format(path, im.format)
        if lossy:
            raise _LossyFile(
                f"{lossy} mask: lossy compression changes the class values along every edge; "
                "save masks as PNG"
            )
        if im.mode in ("RGB", "RGBA"):
            arr = np.asarray(im.convert("RGB"))
            if not (
                np.array_equal(arr[..., 0], arr[..., 1])
                and np.array_equal(arr[..., 0], arr[..., 2])
            ):
                raise ValueError("colour mask; save one channel of class indices (or 0/255)")
            return arr[..., 0].copy()
        if im.mode == "LA":  # grey with alpha (an editor's layer with transparency): the grey
            im = im.getchannel("L")  # is the mask, as an RGBA mask's grey is
        # Every grey mode: 16-bit TIFFs are I;16B when big-endian (ImageJ writes those), float
        # TIFFs F; these were refused as "mask mode I;16B; save one channel of class indices".
        if im.mode not in GREY_MODES and im.mode != "P":
            raise ValueError(f"mask mode {im.mode}; save one channel of class indices")
        arr = _stored_values(im)
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if arr.dtype.kind == "f" and not (np.isfinite(arr).all() and (arr == np.round(arr)).all()):
        raise ValueError("mask of fractional values (a float image); save whole class indices")
    if arr.max(initial=0) > 255:
        raise ValueError("mask values above 255; save class indices 0..254")
    if arr.min(initial=0) < 0:  # -1 wrapped round to 255 (ignore), -100 to 156 (a class)
        raise ValueError("mask values below 0; save class indices 0..254 (255: ignore)")
    return arr.astype(np.uint8)


def _read_instances(path: Path) -> np.ndarray:
    from .images import open_raw

    with open_raw(path) as im:
        lossy = _lossy_format(path, im.format)
        if lossy:
            raise _LossyFile(f"{lossy} instance ids: lossy compression changes them; save a PNG")
        arr = _stored_values(im)
    if arr.ndim != 2:
        raise ValueError("not one channel; save instance ids as a grey (16-bit) PNG")
    return arr.astype(np.int32)


def _read_image(path: Path, channels: int | None = None) -> np.ndarray:
    """uint8 (H, W, 1) for grey files, (H, W, 3) otherwise (or `channels`, 1 or 3: what a
    trained net takes, converted as `cnnzoo segment` converts its files); decoded by
    `images.load_image`, so every mode converts as everywhere else in cnnzoo and a bad file
    fails with one line."""
    from .images import load_image, open_raw

    if channels is None:
        try:
            with open_raw(path) as im:
                channels = 1 if im.mode in GREY_MODES else 3
        except (OSError, ValueError):
            channels = 3  # let load_image produce the one-line error
    arr = np.asarray(load_image(path, channels))
    return arr[..., None] if arr.ndim == 2 else arr


def part_reading(pairs: MaskPairs) -> bool | None:
    """How a val/ or test/ folder beside the folder `pairs` were read from reads its masks' 255
    (`load_mask_pairs`'s binary_255): as that folder does, unless no mask there holds 255, so
    that its reading decided nothing; then as the part's own masks say. (0/255 val/ masks
    beside 0/1 training masks are one set's masks saved two ways, as within one folder; read
    as 'ignore', they had no foreground.)"""
    if pairs.binary_255 is False and not any((m == IGNORE_INDEX).any() for m in pairs.masks):
        return None
    return pairs.binary_255


def holds_mask_pairs(source: str | Path) -> bool:
    """Whether `source` is segmentation data: 'cells', a folder with images/ and masks/, or a
    CSV manifest with image and mask columns (told apart from a classifier's data by layout)."""
    source = Path(source)
    if str(source) == "cells":
        return True
    if source.is_dir():
        return layout_folder(source, "images").is_dir() and layout_folder(source, "masks").is_dir()
    if source.suffix.lower() == ".csv" and source.is_file():
        from .folder import header_name, manifest_rows

        header = next((r for r in manifest_rows(source) if any(c.strip() for c in r)), [])
        return {"image", "mask"} <= {header_name(c) for c in header}
    return False


def has_test_part(source: Path) -> bool:
    """Whether a folder of pairs has a test/ part (with images/), or a manifest test rows: the
    pairs held out from training, which `cnnzoo evaluate --split test` scores."""
    if source.suffix.lower() == ".csv":
        return any(row[4] == "test" for row in read_manifest(source))
    return layout_folder(layout_folder(source, "test"), "images").is_dir()


def held_out_only(manifest: Path) -> bool:
    """Whether a manifest's rows are all held out (marked test): none validates, and none trains
    to draw validation rows from (a split cell empty is train)."""
    rows = read_manifest(manifest)
    return bool(rows) and all(row[4] not in (None, "train", "val") for row in rows)


def _no_pairs(source: Path) -> str:
    """Why a folder or manifest gave no image/mask pair at all, in one line."""
    if source.suffix.lower() == ".csv":
        return f"{source} lists no image/mask pair: write one `image,mask` row per image."
    img_dir, mask_dir = layout_folder(source, "images"), layout_folder(source, "masks")
    todo = {"images": "put the images there, and their masks (same file stems) in "
                      f"{mask_dir}.",
            "masks": f"save one mask per image in {mask_dir}, named by the image's stem "
                     "(masks/a.png for images/a.jpg)."}
    for what, how in todo.items():
        d = img_dir if what == "images" else mask_dir
        if not any(p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
                   for p in d.iterdir()):
            return f"{d} holds no {what}: {how}"
    return (f"no mask in {mask_dir} has the stem of an image in {img_dir}: "
            "pairs are matched by file stem (masks/a.png or masks/a_mask.png for images/a.jpg); "
            "see the lines above.")


def class_list(classes: Sequence[str] | None) -> list[str] | None:
    """Class names as `--classes` gives them ('background,cell') or as a list; None stays None."""
    if isinstance(classes, str):  # a str is a Sequence[str]: 'background,cell' made 15 classes
        return [c.strip() for c in classes.split(",") if c.strip()]
    return None if classes is None else list(classes)


def _refuse_twice_named(classes: Sequence[str] | None, named_in: str) -> None:
    """A DataError for two classes of one name: each class's Dice and IoU are reported under
    its name (`dice_cell`), and with 'bg,cell,cell,marker' class 2's scores replaced class 1's
    in metrics.jsonl, and `evaluate` printed class 2's for both, without a word."""
    seen: dict[str, int] = {}
    for index, name in enumerate(classes or ()):
        if name in seen:
            raise DataError(f"class '{shown(name)}' is named twice in {named_in} (classes "
                            f"{seen[name]} and {index}): give each class a name of its own; "
                            "its Dice and IoU are reported under it")  # fmt: skip
        seen[name] = index


def load_mask_pairs(
    source: str | Path,
    *,
    classes: Sequence[str] | None = None,
    report: Callable[[str], None] | None = _stderr,
    binary_255: bool | None = None,
    parts: Sequence[str] = ("train", "val"),
    channels: int | None = None,
) -> MaskPairs:
    """Load pairs from a folder (`images/` + `masks/`) or a CSV manifest (a `.csv` path).

    classes: class names, index order: a list, or one comma-separated string as `--classes`
        takes it ('background,cell'); default `classes.txt` in the folder if present, else '0',
        '1', ... up to the largest index found.
    report: called with one line per skipped pair (kept in `MaskPairs.skipped` too) and per
        note (pairs without an instance file, rare inferred classes); None: silent.
    binary_255: whether 255 is class 1 (True) or ignored (False); None: decided from these
        masks (module docstring). A `val/` folder takes its training folder's decision where
        that folder's masks hold 255 (`part_reading`).
    parts: the rows of a manifest's split column that are read (test rows are held out).
    channels: decode every image with 1 or 3 channels (a trained net's); None: each file's own.
    A manifest's pairs come in the order of their image paths, as a folder's come by file name
    (`row_ranks` gives their rows' order back).
    """
    classes = class_list(classes)
    source = Path(source)
    if source.suffix.lower() == ".csv":
        problems: list[str] = []
        rows = read_manifest(source, problems)
        entries = [e for e in rows if e[4] is None or e[4] in parts]
        if rows and not entries:
            # A sheet of test rows only was 'lists no image/mask pair: write one image,mask row
            # per image', of a sheet that lists them.
            held = sorted({str(e[4]) for e in rows})
            raise DataError(f"every row of {source} is marked {' or '.join(held)}, held out: "
                            "mark the pairs to train on train (or leave their split cell "
                            "empty), and those to validate on val")
        # The rows' order is no part of the data: read in it, sorting the sheet (by name, by
        # split) drew other validation pairs for the same seed, as for classification
        # manifests (`folder.load_csv`).
        entries.sort(key=lambda e: str(e[1]))
        root = source.parent
    elif source.is_dir():
        found, problems = find_pairs(source)
        entries = [(*e, None) for e in found]
        root = source
    else:
        raise DataError(
            f"{source} is neither a folder with images/ and masks/ nor a .csv manifest."
        )
    named_in = "--classes"
    if classes is None:
        classes = classes_file(root)
        if classes is not None:
            named_in = str(root / "classes.txt")
            refuse_control(classes, f"in {named_in}", "class", "fix its line")
    if classes is not None and len(classes) < 2:  # before reading every file for nothing
        raise DataError("segmentation needs at least two classes (e.g. --classes background,cell).")
    _refuse_twice_named(classes, named_in)

    images, masks, insts, names, splits, files = [], [], [], [], [], []
    # Instance files for some pairs only: use them where they exist and components elsewhere
    # (said in a note below), rather than dropping every instance file for one missing.
    have_instances = any(e[3] is not None for e in entries)
    without_instances: list[str] = []
    lossy = 0  # masks skipped for a lossy format: when all are, the error says so
    for name, img_path, mask_path, inst_path, split in entries:
        try:
            img = _read_image(img_path, channels)
        except (OSError, ValueError) as exc:
            problems.append(f"skipped {name}: {exc}")  # ImageError names the file
            continue
        if mask_path.is_dir():  # a manifest row with an empty mask cell names the CSV's folder
            problems.append(f"skipped {name}: no mask file given for {img_path}")
            continue
        try:
            mask = _read_mask(mask_path)
        except _LossyFile as exc:
            lossy += 1
            problems.append(f"skipped {name}: {mask_path}: {exc}")
            continue
        except (OSError, ValueError) as exc:
            problems.append(f"skipped {name}: cannot read mask {mask_path}: {exc}")
            continue
        try:
            inst = _read_instances(inst_path) if inst_path else None
        except (OSError, ValueError) as exc:
            problems.append(f"skipped {name}: cannot read instances {inst_path}: {exc}")
            continue
        if mask.shape != img.shape[:2]:
            # Images are turned upright by their EXIF orientation (a phone's portrait photo); a
            # mask drawn on the stored pixels then has the image's sides swapped.
            turned = " (the image's sides swapped: is it turned by its EXIF orientation? draw " \
                "the mask on the upright image)" if mask.shape == img.shape[1::-1] else ""
            problems.append(
                f"skipped {name}: mask {mask.shape[1]}x{mask.shape[0]} but image "
                f"{img.shape[1]}x{img.shape[0]} ({mask_path}){turned}"
            )
            continue
        if inst is not None and inst.shape != mask.shape:
            problems.append(
                f"skipped {name}: instance mask size differs from the image ({inst_path})"
            )
            continue
        if have_instances and inst is None:
            without_instances.append(name)
        images.append(img)
        masks.append(mask)
        insts.append(inst)
        names.append(name)
        splits.append(split)
        files.append(img_path)
    if report is not None:
        for line in problems:
            report(line)
    if not entries:  # (with none, "every mask is a JPEG" was true of 0 of 0 masks)
        raise DataError(_no_pairs(source))
    if not images and lossy == len(entries):
        raise DataError(
            f"every mask in {source} is a JPEG or lossy WebP, whose compression changes class "
            "values: "
            "save the masks as PNG."
        )
    if not images:
        raise DataError(f"no usable image/mask pairs in {source}: see the messages above.")
    # 0/255 masks are two classes only when every mask is 0/255: one mask of a multi-class set
    # that holds just background and ignored pixels must not turn its ignored pixels into class 1.
    values = [set(np.unique(m).tolist()) for m in masks]
    only_0_255 = all(v <= {0, IGNORE_INDEX} for v in values)
    white = [n for n, v in zip(names, values, strict=True) if v == {0, IGNORE_INDEX}]
    # Two classes saved two ways, some masks 0/1 and the others 0/255 (a common slip: masks
    # from two tools or two people), none holding 1 and 255 together: 255 is the foreground
    # of its masks. Read as 'ignore' (as in a set that labels with 1 and ignores with 255),
    # those masks had no foreground, and the net learnt to call their cells background.
    two_ways = (binary_255 is None and bool(white) and not only_0_255
                and (classes is None or len(classes) == 2)
                and all(v <= {0, 1} or v <= {0, IGNORE_INDEX} for v in values))
    # Some masks 0/255, the others class indices: the 0/255 ones lose their foreground.
    mixed = binary_255 is None and bool(white) and not only_0_255 and not two_ways
    # A val/ folder reads 255 as its training folder does: 0/255 masks there next to 0/1 training
    # masks lose all their foreground just as a mix within one folder does, and are named too.
    inherited_ignore = binary_255 is False and bool(white)
    unlabelled = binary_255 is None and only_0_255 and classes is not None and len(classes) != 2
    if binary_255 is None:
        binary_255 = two_ways or ((classes is None or len(classes) == 2) and only_0_255)
    if binary_255:
        masks = [np.where(m == IGNORE_INDEX, 1, m).astype(np.uint8) for m in masks]
    insts = [foreground_components(m) if have_instances and inst is None else inst
             for m, inst in zip(masks, insts, strict=True)]  # as for a set without any
    notes: list[str] = []
    if unlabelled:  # every foreground pixel ignored: a run that learns nothing, without a word
        notes.append(f"note: every mask holds only 0 and 255, and with {len(classes)} classes "
                     f"255 means 'ignore', so no pixel is labelled {', '.join(classes[1:])}; "
                     "if 255 marks the foreground, name two classes (--classes background,cell)")
    if two_ways:
        notes.append(f"note: {len(white)} of {len(names)} masks hold 0 and 255 "
                     f"({some(white)}), the others 0 and 1: 255 is read as 1, the foreground, "
                     "in these; save every mask one way to silence this note")  # fmt: skip
    if mixed:
        notes.append(f"note: {len(white)} of {len(names)} masks hold only 0 and 255 "
                     f"({some(white)}), the others class indices: 255 means 'ignore' in such a "
                     "set, so these masks have no foreground; save them with 1 for the "
                     "foreground if 255 marks it")  # fmt: skip
    if inherited_ignore:
        notes.append(f"note: {len(white)} of {len(names)} masks in {source} hold only 0 and 255 "
                     f"({some(white)}), but 255 means 'ignore' for the training masks, so these "
                     "masks have no foreground; save them with 1 for the foreground if 255 "
                     "marks it")  # fmt: skip
    if without_instances:
        notes.append(
            f"note: {len(without_instances)} of {len(names)} pairs have no instance file "
            f"({some(without_instances)}): their instances are the connected components of "
            "the mask's foreground"
        )

    largest = max(int(m[m != IGNORE_INDEX].max(initial=0)) for m in masks)
    if classes is None:
        classes = [str(i) for i in range(max(largest + 1, 2))]
        notes += _rare_values_note(masks, names, len(classes))
    if report is not None:
        for line in notes:
            report(line)
    classes = list(classes)
    if largest >= len(classes):
        # Drop the offending masks rather than fail: one stray value should not cost the run.
        keep = []
        for i, m in enumerate(masks):
            bad = int(m[m != IGNORE_INDEX].max(initial=0))
            if bad >= len(classes):
                line = f"skipped {names[i]}: mask value {bad} but only {len(classes)} classes"
                problems.append(line)
                if report is not None:
                    report(line)
            else:
                keep.append(i)
        images, masks = [images[i] for i in keep], [masks[i] for i in keep]
        insts, names = [insts[i] for i in keep], [names[i] for i in keep]
        splits, files = [splits[i] for i in keep], [files[i] for i in keep]
        if not images:
            raise DataError(f"no mask in {source} fits the {len(classes)} classes given.")
    # Grey and colour mixed: promote the grey ones, so one data set has one channel count.
    if len({im.shape[2] for im in images}) > 1:
        images = [np.repeat(im, 3, axis=2) if im.shape[2] == 1 else im for im in images]
    return MaskPairs(
        images=images,
        masks=masks,
        instances=insts if have_instances and entries else None,
        names=names,
        classes=classes,
        skipped=problems,
        binary_255=binary_255,
        splits=splits if entries and entries[0][4] is not None else None,
        files=files,
    )


def row_ranks(manifest: Path, pairs: MaskPairs) -> list[int]:
    """The indices of `pairs` (read from `manifest`) in the order of the manifest's rows, in
    which runs before `load_mask_pairs` sorted them by path drew their validation pairs and
    shuffled their training pairs: `--resume` and `evaluate` of such a run take it again."""
    rank = {str(row[1]): i for i, row in enumerate(read_manifest(manifest))}
    files = pairs.files or []
    return sorted(range(len(files)), key=lambda i: rank.get(str(files[i]), len(rank)))
