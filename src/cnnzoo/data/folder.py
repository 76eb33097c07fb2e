"""Image folders and CSV manifests -> an in-memory `Splits` of uint8 tensors.

Layouts (class names are folder names, sorted as torchvision's ImageFolder and Keras sort them):

    DIR/cat/1.jpg, DIR/dog/2.png, ...              -> stratified train/val split (seeded)
    DIR/train/cat/..., DIR/val/cat/...             -> those parts ('valid', 'validation' too)
    DIR/train/..., DIR/test/...                    -> test/ serves as validation
    DIR/train/..., DIR/val/..., DIR/test/...       -> train, val and test
    labels.csv with rows `path,label[,split]`      -> paths relative to the CSV's folder
                                                      (a header may name them in any order)

Bad files never stop loading: a file with an image extension that does not decode (corrupt,
truncated, empty, not really an image) is skipped with one warning line naming it and the cause,
and a count follows at the end. Hidden files and folders (".DS_Store", "._x.jpg"), Thumbs.db,
desktop.ini and a Mac zip's __MACOSX/ are skipped silently; other files without an image
extension (notes.txt, a CSV) are listed in one note line, and images beside the class folders
(they have no class) in another. What cannot be trained on -- no images, one class, a class
folder with no readable image -- raises a one-line `DataError` that says what to do; the skip
lines are reported before it, since such an error points at them ("see warnings").

Messages go to the "cnnzoo.data" logger; without logging configured Python prints them to stderr.
Decoding runs on `workers` threads (PIL releases the GIL while decoding and resizing).
"""

from __future__ import annotations

import codecs
import csv
import io
import logging
import math
import os
import shlex
import unicodedata
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import DataError, ImageError
from ..text import has_control, plural, shown, some
from .dataset import ImageDataset, Splits
from .images import IMAGE_EXTENSIONS, ImageSpec, image_header, write_png

log = logging.getLogger("cnnzoo.data")

TRAIN_DIRS = ("train", "training")
VAL_DIRS = ("val", "valid", "validation")
TEST_DIRS = ("test", "testing")
# Junk other systems leave beside the images: Windows' thumbnail caches and folder settings, and
# the __MACOSX/ folder of a zip made on a Mac (its ._x.jpg resource forks); as classes, they
# would stop a run ("class folder __MACOSX has no images") or hide a train/ + val/ layout.
_QUIET = {"thumbs.db", "desktop.ini", "__macosx"}
# The layout a folder of labelled images needs, as the messages about it (here and in
# builtin.py) put it.
CLASS_FOLDERS = "one sub-folder per class, e.g. DIR/cat/1.jpg and DIR/dog/2.jpg"


def _is_image_file(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _visible(name: str) -> bool:
    return not name.startswith(".") and name.lower() not in _QUIET


def _subdirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and _visible(p.name))


def _files_under(folder: Path, ignored: list[Path]) -> list[Path]:
    """Image files under `folder`, recursively, in a stable order; others go to `ignored`.

    Linked folders are followed, as linked files and a linked class folder are (a phone's
    export linked into a class folder), each real folder once. A link to a folder above
    `folder` is not: it would walk `folder` again and, from the data folder, the other
    classes' images too. A file reached twice (a link to a photo beside the photo) is listed
    once, as a manifest's repeated rows are: its copies could land on both sides of the split."""
    found: list[Path] = []
    top = os.path.realpath(folder)
    seen = {top}
    seen_files: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        keep = []
        for d in sorted(d for d in dirnames if _visible(d)):
            real = os.path.realpath(os.path.join(dirpath, d))
            if real not in seen and not top.startswith(real.rstrip(os.sep) + os.sep):
                seen.add(real)
                keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            if not _visible(name):
                continue
            if not _is_image_file(name):
                ignored.append(Path(dirpath, name))
                continue
            real = os.path.realpath(os.path.join(dirpath, name))
            if real not in seen_files:
                seen_files.add(real)
                found.append(Path(dirpath, name))
    return found


# The byte-order marks of the wide Unicode encodings, which Excel's "Unicode Text" export
# (tab-separated) and Notepad's "Unicode" / "UTF-16 LE" put first. UTF-32's come first: its
# little-endian mark begins with UTF-16's.
_WIDE_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
              (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))  # fmt: skip


def wide_unicode(raw: bytes) -> str | None:
    """'utf-16' or 'utf-32' for text that starts with that encoding's byte-order mark (the
    codec then reads the mark and leaves it out), else None."""
    return next((codec for bom, codec in _WIDE_BOMS if raw.startswith(bom)), None)


# Spreadsheet workbooks: Excel's .xlsx (and LibreOffice's .ods, Numbers' files) are zip
# archives, the old .xls an OLE file; what they hold is not text, whatever the name.
_WORKBOOK_SUFFIXES = (".xlsx", ".xlsm", ".xls", ".ods", ".numbers")
_WORKBOOK_MAGIC = (b"PK\x03\x04", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1")


def workbook_error(path: Path, raw: bytes | None = None) -> DataError | None:
    """A one-line `DataError` for a spreadsheet workbook given where CSV text goes (by its name,
    or by its first bytes `raw`: a workbook renamed .csv); None for anything else. Read as
    text, a workbook was 'not UTF-8 text', 'NUL-separated', or 'neither a data set nor a
    folder: check the path'."""
    if path.suffix.lower() in _WORKBOOK_SUFFIXES or (raw and raw.startswith(_WORKBOOK_MAGIC)):
        return DataError(f"{path} is a spreadsheet workbook, not CSV text: save the sheet as CSV "
                         "(Excel: Save As > CSV UTF-8; LibreOffice: Text CSV, character set "
                         "UTF-8) and give the .csv")
    return None


def user_text(path: Path) -> str:
    """A text file the user wrote (a CSV manifest, a classes.txt) in UTF-8, with or without the
    byte-order mark Excel and Notepad put first (part of the first name otherwise), or in
    UTF-16 / UTF-32 with their mark (Excel's "Unicode Text", which read as UTF-8 was refused
    at its first byte); other bytes are a one-line `DataError`."""
    raw = path.read_bytes()
    if (workbook := workbook_error(path, raw[:8])) is not None:
        raise workbook
    wide = wide_unicode(raw)
    try:
        return raw.decode(wide or "utf-8-sig")
    except UnicodeDecodeError as exc:
        if wide:  # a cut file: an odd number of bytes
            raise DataError(f"{path} is damaged {wide.upper()} text (byte {exc.start}): save it "
                            "again, as UTF-8 (Excel: Save As > CSV UTF-8)") from None
        # Excel's plain "CSV" and Notepad's "ANSI" are in the Windows code page (cp1252: ü is
        # one byte, 0xfc); which one cannot be told from the bytes, and a wrong guess would
        # misname every file.
        line = raw.count(b"\n", 0, exc.start) + 1
        how = ("Excel: Save As > CSV UTF-8" if path.suffix.lower() == ".csv"
               else "Notepad: Save As, Encoding UTF-8")  # fmt: skip
        raise DataError(f"{path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}): "
                        f"save it as UTF-8 ({how})") from None


def manifest_rows(path: Path) -> list[list[str]]:
    """A CSV manifest's rows, blank ones as []. Excel writes ';' between cells where the
    decimal mark is a comma, and some tools a tab: the delimiter is the one (',' before ';'
    before tab) that splits the most of the first lines into cells (each row read as one cell
    said only 'expected path,label', once per row). Not the first line's characters alone: a
    file name there may hold a comma or a ';'. The text is UTF-8 (`user_text`).

    A first line `sep=;` (or `sep=,`, a tab after `sep=`) is Excel's way of naming the delimiter,
    which Excel reads and hides and some exports write: that one is used, and the line is
    returned as a blank row, so that row numbers stay line numbers. Read as a row, it was taken
    for the data's first row, and the header below it for a row of data."""
    text = user_text(path)
    first, _, rest = text.partition("\n")
    named = first.rstrip("\r").strip('"')
    if len(named) == 5 and named[:4].lower() == "sep=":
        rows = list(csv.reader(io.StringIO(rest, newline=""), delimiter=named[4]))
        return [[], *rows]
    sample = [line for line in text.splitlines() if line.strip()][:50]

    def rows_split(d: str) -> int:
        return sum(len(r) > 1 for r in csv.reader(sample, delimiter=d))

    delimiter = max(",;\t", key=rows_split)  # the first of equals: ','
    return list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))


def manifest_path(base: Path, text: str,
                  listings: dict[str, dict[str, list[str]]] | None = None) -> Path:
    """A CSV manifest's path cell, relative to the CSV's folder `base` unless absolute. A
    manifest written on Windows separates folders with backslashes, which here are part of a
    file name: read them as separators when only that names an existing file. Likewise a name
    with accents written in the other Unicode form than the file's ('ü' as one character or as
    'u' + a combining mark, as a Mac writes file names) names that file, and so does one that
    differs from it only in case, when no other name does ('bilder\\img_1.jpg' for
    Bilder/IMG_1.JPG: Windows and macOS disks ignore case, so the manifest worked where it was
    written, and here each row was 'no such file'). listings: a cache of folder listings, for
    the rows of one manifest."""
    path = base / text
    if path.exists():
        return path
    spellings = [text]
    if "\\" in text and os.sep == "/":
        spellings.insert(0, text.replace("\\", "/"))
    for spelling in spellings:
        for form in ("", "NFC", "NFD"):
            other = base / (unicodedata.normalize(form, spelling) if form else spelling)
            if other.exists():
                return other
    return _any_case(base / spellings[0], {} if listings is None else listings) or path


def _any_case(path: Path, listings: dict[str, dict[str, list[str]]]) -> Path | None:
    """The existing file that `path` names when each part of it is compared in any case and
    Unicode form, if exactly one does; else None."""
    parts = path.parts[1:] if path.anchor else path.parts
    found = Path(path.anchor)
    for part in parts:
        if part in (".", "..") or (found / part).exists():
            found = found / part
            continue
        key = str(found)
        if key not in listings:
            names: dict[str, list[str]] = {}
            try:
                for name in os.listdir(found):
                    names.setdefault(composed(name).casefold(), []).append(name)
            except OSError:  # not a folder, or not readable
                pass
            listings[key] = names
        same = listings[key].get(composed(part).casefold(), [])
        if len(same) != 1:  # none, or Cat.png and cat.png both: not for us to choose
            return None
        found = found / same[0]
    return found


def image_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Image files under `folder`, recursively, in a stable order, skipping what training skips:
    hidden files and folders (`.DS_Store`, macOS's `._x.jpg`, `.ipynb_checkpoints/`)."""
    return _files_under(Path(folder), [])


@dataclass(frozen=True)
class ImagesSeen:
    """What the headers of a data source's images say (`seen_images`)."""

    largest: int  # the largest side of any of them
    same: bool  # all of one size
    square: bool  # all square
    grey: bool  # all grey


def source_images(source: str | os.PathLike[str], *, test: bool = False) -> list[Path]:
    """The training and validation image files an image folder or CSV manifest names (its test
    part too with `test`), without decoding them; [] for anything else (a built-in name, a
    missing path: loading says what is wrong)."""
    path = Path(source)
    wanted = ("train", "val", "test") if test else ("train", "val")
    if path.is_dir():
        parts = _find_parts(path)
        if not parts:
            return image_files(path)
        return [f for part in wanted if part in parts for f in image_files(parts[part])]
    if path.suffix.lower() == ".csv" and path.is_file():
        return [p for p, _, split in _manifest_rows(path)[0] if test or split != "test"]
    return []


def seen_images(source: str | os.PathLike[str], sample: int = 256, *,
                test: bool = False) -> ImagesSeen | None:
    """Sizes and colour of a folder's or manifest's training and validation images (and test
    images, with `test`), from the headers of at most `sample` files spread evenly over them
    (`images.image_header`); None when there are none that open (a built-in name, say). A
    sample: an image it misses is resized like any other, it cannot break a run."""
    files = source_images(source, test=test)
    step = max(1, -(-len(files) // sample))
    heads = {h for f in files[::step] if (h := image_header(f)) is not None}
    if not heads:
        return None
    sizes = {(w, h) for w, h, _ in heads}
    return ImagesSeen(largest=max(max(wh) for wh in sizes), same=len(sizes) == 1,
                      square=all(w == h for w, h in sizes),
                      grey=all(grey for _, _, grey in heads))  # fmt: skip


def composed(text: str) -> str:
    """A name (class folder, manifest label, file stem) in Unicode's composed form (NFC), to
    compare it. A Mac writes 'ü' in file names as 'u' + a combining diaeresis (NFD), Windows
    and most editors as one character: both spellings are one class (two split it in two, and
    a val/Würfel typed on Windows was 'a class that train/ does not have'), one file stem.
    A name whose bytes are not UTF-8 (named in Latin-1 on an old machine: 'é' the one byte
    0xe9) arrives with surrogate escapes, which printing, plotting and saving a class name
    refused with a traceback after training; such bytes become the text '\\xe9'."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return unicodedata.normalize("NFC", text)


def _note_case(class_names: Sequence[str], where: Path | str, fix: str) -> None:
    """One note line naming the classes whose names differ only in case (Cat/ and cat/ on a
    case-sensitive disk, or manifest labels): they stay apart, silently, as two classes of half
    the images each. Not an error, nor merged: letters are such classes ('A' and 'a' of a
    handwriting set), so names of one character are left out of the note too. `fix`: what
    to do to make them one class."""
    groups: dict[str, list[str]] = {}
    for name in class_names:
        if len(name) > 1:
            groups.setdefault(name.casefold(), []).append(name)
    clashes = [" and ".join(repr(n) for n in names) for names in groups.values() if len(names) > 1]
    if clashes:
        log.warning("note: classes %s in %s differ only in case, so they are separate classes; "
                    "if they are one, %s", "; ".join(clashes[:3])
                    + ("; ..." if len(clashes) > 3 else ""), where, fix)  # fmt: skip


def refuse_control(class_names: Sequence[str], where: str, what: str, fix: str) -> None:
    """Refuse a class name holding a control character ('\x1b[2J', '\n', a '\r' from a list
    made on Windows): never meant, and the name would travel into every checkpoint, bundle,
    per_class.csv and figure, for each program that shows them to deal with; its text output
    broke the one-line-per-result format (cnnzoo prints it `shown`, others may not). A bidi
    control (the right-to-left mark of a Hebrew or Arabic name) is taken: `shown` escapes it,
    and refusing it refused such names, which the bidi escaping never meant to."""
    bad = next((name for name in class_names if has_control(name)), None)
    if bad is not None:
        raise DataError(f"{what} '{shown(bad)}' {where} holds a control character: {fix}")


def _same_but_case(name: str, names: Sequence[str]) -> str | None:
    """The one of `names` that `name` is but for case (a val/Cat/ folder or a val row labelled
    'Cat' beside the training 'cat'), else None."""
    return next((n for n in names if n.casefold() == name.casefold()), None)


def _scan_classes(root: Path, ignored: list[Path], data: Path | None = None) -> dict[str, list[Path]]:
    """{class name: image files} for a folder with one sub-folder per class, sorted by name
    (folders whose names differ only in their Unicode form are one class). data: the data
    folder `root` is a part of (DATA for DATA/train), which no class folder may hold."""
    for p in root.iterdir():
        if p.is_file() and _visible(p.name):
            ignored.append(p)
    classes: dict[str, list[Path]] = {}
    top = os.path.realpath(data or root)
    for d in _subdirs(root):
        real = os.path.realpath(d)
        if top == real or top.startswith(real.rstrip(os.sep) + os.sep):
            # A link to / (or to $HOME, or to DATA) in a downloaded set: `_files_under` follows
            # it, and read every image on the disk, the other classes' too, as this class.
            raise DataError(f"class folder {d} leads to {real}, which holds the data folder "
                            f"{data or root} itself: its images would be every class's, and all "
                            f"of {real}'s; remove the link")
        classes.setdefault(composed(d.name), []).extend(_files_under(d, ignored))
    return dict(sorted(classes.items()))


def _check_classes(
    root: Path, classes: dict[str, list[Path]], ignored: list[Path], min_classes: int = 2
) -> None:
    if not any(classes.values()):
        loose = [p for p in ignored if p.parent == root and _is_image_file(p.name)]
        if loose:
            raise DataError(
                f"{root} holds images but no class sub-folders: move them into {CLASS_FOLDERS}"
            )
        raise DataError(f"no images found in {root}: expected {CLASS_FOLDERS} (or a CSV manifest)")
    folders = {name.lower() for name in classes}  # Images/ + Masks/, made on Windows, too
    # With its val/ (or test/) part beside them too: that trained 4 classes (images, instances,
    # masks, val) without a word.
    if {"images", "masks"} <= folders and folders <= {"images", "masks", "instances", "val",
                                                      "test"}:
        # The layout of a segmentation set: as classes, every mask would be a "mask" image.
        raise DataError(
            f"{root} is a segmentation set (images/ + masks/), not one sub-folder per class: "
            f"train a U-Net on it (cnnzoo train unet --data {shlex.quote(str(root))})"
        )
    empty = [name for name, files in classes.items() if not files]
    if empty:
        raise DataError(
            f"class folder {root / empty[0]} has no images"
            + (f" (nor {', '.join(empty[1:])})" if len(empty) > 1 else "")
            + ": add images to it or remove it"
        )
    if len(classes) < min_classes:
        (name,) = classes
        # The folder as it is spelt on disk: `name` is composed, a Mac's folder is not.
        folder = next(d for d in _subdirs(root) if composed(d.name) == name)
        inner = [d.name for d in _subdirs(folder)]
        if len(inner) > 1:  # unzipped one level too high: photos/photos/{cat,dog}/
            raise DataError(
                f"{root} holds a single folder, {name!r}, whose sub-folders ("
                f"{some(inner, 4)}) look like the "
                f"data: give {folder} as the data folder"
            )
        raise DataError(
            f"{root} has a single class folder ({name!r}): a classifier needs two or more, "
            f"{CLASS_FOLDERS}"
        )


def _note_nested(root: Path, classes: dict[str, list[Path]]) -> None:
    """One note line when no class folder holds an image itself, all of them sit in its
    sub-folders, and one has two or more: `DATA/shoes/{boot,sandal}` + `DATA/shirts/{tee,polo}`
    trains 2 classes (shoes, shirts) from the images found recursively, which is right for a
    class whose photos come in dated folders, and silently wrong for a user who meant 4
    classes, or one of the sets. Not an error, since both layouts are real: the line says
    which classes were made and what to give for the others."""
    inner: dict[str, list[str]] = {}
    for name, files in classes.items():
        subs: set[str] = set()
        for f in files:
            parts = f.relative_to(root).parts
            if len(parts) == 2:  # an image right in its class folder: a plain class
                return
            subs.add(parts[1])
        inner[name] = sorted(subs)
    if max(len(subs) for subs in inner.values()) < 2:
        return
    where = "; ".join(f"{shown(name)}/: {some(subs)}" for name, subs in list(inner.items())[:2])
    if len(inner) > 2:
        where += "; ..."
    if {n.lower() for subs in inner.values() for n in subs} <= set(_SPLIT_NAMES):
        # DATA/cat/train/, DATA/cat/val/: the parts one level too low, pooled and split again.
        log.warning("note: the class folders in %s hold their images in part folders (%s), "
                    "which are pooled and split again: to train and validate on those parts, "
                    "put them above the classes (%s)", root, where,
                    root / "train" / next(iter(inner)))  # fmt: skip
        return
    first = next(iter(inner))
    log.warning("note: every class folder in %s keeps its images in sub-folders (%s): training "
                "%s (%s); if the sub-folders are the classes, give one set (%s) or list the "
                "images with their labels in a CSV manifest",
                root, where, plural(len(inner), "class", "classes"), some(list(inner), 6),
                root / first)  # fmt: skip


def _find_parts(root: Path) -> dict[str, Path]:
    """{'train'|'val'|'test': folder} when `root` is split into such sub-folders."""
    by_name = {d.name.lower(): d for d in _subdirs(root)}
    # Only when every sub-folder is a part name: 'train' may also be a class (of vehicles).
    if not by_name or not set(by_name) <= set(TRAIN_DIRS + VAL_DIRS + TEST_DIRS):
        return {}
    parts: dict[str, Path] = {}
    for part, names in (("train", TRAIN_DIRS), ("val", VAL_DIRS), ("test", TEST_DIRS)):
        for n in names:
            if n in by_name:
                parts[part] = by_name[n]
                break
    return parts if "train" in parts else {}


def decode_images(
    paths: Sequence[Path | str],
    spec: ImageSpec,
    *,
    workers: int = 2,
    progress: bool = True,
    desc: str = "decoding",
) -> tuple[list[torch.Tensor | None], list[str]]:
    """Decode files on `workers` threads: one uint8 (C, H, W) tensor per path (None where the
    file could not be read) and the one-line reasons for the failures, in path order."""
    out: list[torch.Tensor | None] = []
    errors: list[str] = []
    for result in _decoded(paths, spec, workers=workers, progress=progress, desc=desc):
        if isinstance(result, str):
            errors.append(result)
            out.append(None)
        else:
            out.append(result)
    return out, errors


def _decoded(
    paths: Sequence[Path | str], spec: ImageSpec, *, workers: int, progress: bool, desc: str
) -> Iterator[torch.Tensor | str]:
    """Each path's uint8 (C, H, W) tensor, or the one-line reason it could not be read, in
    path order, decoded on `workers` threads."""

    def one(path: Path | str) -> torch.Tensor | str:
        try:
            return spec.load(path)
        except ImageError as exc:
            return str(exc)

    with (
        ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
        tqdm(
            total=len(paths), desc=desc, unit="img", disable=None if progress else True, leave=False
        ) as bar,
    ):
        for result in pool.map(one, paths):
            yield result
            bar.update(1)


# The size to read images of several sizes at, when none is given (`data info`, and the advice
# of the error below): the largest side loses nothing, but photos' largest side (a 2000x200
# panorama, a phone's 4,000 px) took gigabytes to decode; ImageNet nets read 224.
MIXED_SIZES_AT_MOST = 224


def mixed_sizes_size(largest: int) -> int:
    """What to read images of several sizes at: their largest side, at most 224."""
    return min(largest, MIXED_SIZES_AT_MOST)


def _sizes_differ(shapes: set[tuple[int, ...]], where: Path) -> DataError:
    a, b = sorted(shapes)[:2]
    n = mixed_sizes_size(max(max(s[1:]) for s in shapes))
    return DataError(
        f"images in {where} have different sizes (e.g. {a[2]}x{a[1]} and {b[2]}x{b[1]} "
        f"pixels): give a size to resize them to (size={n}, or --img-size {n})"
    )


def _image_block(n: int, shape: tuple[int, ...], where: Path) -> torch.Tensor:
    """An empty uint8 (n, *shape) tensor for a part's images, or a one-line `DataError` when
    memory cannot hold them (photos at their own size, with no size given)."""
    try:
        return torch.empty((n, *shape), dtype=torch.uint8)
    except RuntimeError:  # torch's allocator: "can't allocate memory"
        gb = n * math.prod(shape) / 2**30
        raise DataError(f"the {n} images in {where} at {shape[2]}x{shape[1]} px need {gb:.1f} GB "
                        "of memory: give a smaller size to resize them to (--img-size)") from None


def _build(
    items: Sequence[tuple[Path, int]],
    class_names: list[str],
    spec: ImageSpec,
    where: Path,
    *,
    workers: int,
    progress: bool,
    part: str,
    skipped: list[str],
    require_all_classes: bool,
) -> ImageDataset:
    """Decode `items` ((file, class index)) into a data set; failures are appended to `skipped`.

    Each image goes into one tensor as it is decoded: a list of them stacked at the end held
    every image twice (5,000 photos at 224 px: 0.75 GB more at the peak)."""
    images: torch.Tensor | None = None
    kept: list[int] = []  # the items read, in order; row k of `images` is items[kept[k]]
    shapes: set[tuple[int, ...]] = set()
    for i, result in enumerate(_decoded([p for p, _ in items], spec, workers=workers,
                                        progress=progress, desc=f"decoding {part}")):  # fmt: skip
        if isinstance(result, str):
            skipped.append(result)
            continue
        shapes.add(tuple(result.shape))
        if images is None:
            images = _image_block(len(items), tuple(result.shape), where)
        if len(shapes) == 1:  # else only the sizes are collected, for the error below
            images[len(kept)] = result
        kept.append(i)
    if images is None:
        # The part is named where it is one (a manifest's rows, DIR/val/); a flat folder is all
        # "train" here, which read wrongly for the held-out folder `cnnzoo evaluate` was given.
        named = where.is_file() or where.name.lower() in (*TRAIN_DIRS, *VAL_DIRS, *TEST_DIRS)
        what = plural(len(items), f"{part} image" if named else "image")
        raise DataError(f"none of the {what} in {where} could be read (see warnings)")
    if len(shapes) > 1:
        raise _sizes_differ(shapes, where)
    # The rows of skipped files stay unused at the end of the block: a view, not another copy.
    images = images[: len(kept)]
    labels = torch.tensor([items[i][1] for i in kept], dtype=torch.int64)
    if require_all_classes:
        counts = torch.bincount(labels, minlength=len(class_names))
        missing = [class_names[i] for i in range(len(class_names)) if counts[i] == 0]
        if missing:
            raise DataError(
                f"class {missing[0]!r} in {where} has no readable image (see warnings): "
                "add readable images or remove the class"
            )
    return ImageDataset(images, labels, class_names, [str(items[i][0]) for i in kept])


def _report(skipped: list[str], ignored: list[Path], total: int, grouped: int = 0) -> None:
    for message in skipped:
        log.warning("skipped %s", shown(message))  # one line, whatever the file is named
    if skipped:
        log.warning("skipped %d of %d images (each named above, with why)",
                    len(skipped) + grouped, total)  # fmt: skip
    # Images among the ignored files lie beside the class folders (a class folder's own files
    # all count): they have an extension, but no class.
    loose = [p.name for p in ignored if _is_image_file(p.name)]
    other = [p.name for p in ignored if not _is_image_file(p.name)]
    if loose:
        log.warning("ignored %s outside the class folders (%s): move each into its class's "
                    "sub-folder to train on it", plural(len(loose), "image"), some(loose))
    if other:
        log.warning("ignored %s without an image extension (%s)",
                    plural(len(other), "file"), some(other))  # fmt: skip


def load_folder(
    root: str | os.PathLike[str],
    spec: ImageSpec | None = None,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    workers: int = 2,
    progress: bool = True,
    min_classes: int = 2,
    hold_out_test: bool = False,
) -> Splits:
    """Load an image folder (layouts in the module docstring) into memory.

    spec: how images are decoded and sized (default: RGB at each image's own size, which needs
    equally sized images). val_fraction/seed: the stratified split used when the folder has no
    val/ (or valid/, validation/) part nor a test/ one (which validates then, unless
    hold_out_test: the split is drawn from train/ and test/ stays the test part).
    min_classes: 2 to train a classifier; 1 for a held-out set to score one on, which may hold
    a single class.
    """
    spec = spec or ImageSpec()
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder: give an image folder ({CLASS_FOLDERS})")
    ignored: list[Path] = []
    parts = _find_parts(root)
    if parts:  # files beside train/ and val/ are in no part: named, as beside class folders
        ignored.extend(p for p in sorted(root.iterdir()) if p.is_file() and _visible(p.name))
    else:
        parts = {"train": root}
    scans = {part: _scan_classes(folder, ignored, root) for part, folder in parts.items()}
    _check_classes(parts["train"], scans["train"], ignored, min_classes)
    _note_nested(parts["train"], scans["train"])
    class_names = list(scans["train"])
    refuse_control(class_names, f"in {parts['train']}", "class folder", "rename the folder")
    _note_case(class_names, parts["train"], "move the images of one folder into the other")
    index = {name: i for i, name in enumerate(class_names)}
    for part in ("val", "test"):
        for name, files in scans.get(part, {}).items():
            if name not in index and files:
                same = _same_but_case(name, class_names)
                raise DataError(
                    f"{parts[part] / name} is a class that {parts['train']} does not have: "
                    + (f"rename it {same!r}, as the training folder spells it" if same
                       else "add it to the training folder or remove it"))  # fmt: skip

    skipped: list[str] = []
    items = {
        part: [(f, index[name]) for name, files in classes.items() for f in files]
        for part, classes in scans.items()
    }
    datasets = _build_parts(
        items, class_names, spec, parts, skipped, ignored, workers=workers, progress=progress
    )
    return _assemble(datasets, skipped, val_fraction, seed, hold_out_test=hold_out_test)


def _build_parts(
    items: dict[str, list[tuple[Path, int]]],
    class_names: list[str],
    spec: ImageSpec,
    where: dict[str, Path],
    skipped: list[str],
    ignored: list[Path],
    *,
    workers: int,
    progress: bool,
    grouped: int = 0,
) -> dict[str, ImageDataset]:
    """`_build` each part that has items, then report the skipped files -- also when a part
    cannot be used, since that error ("... (see warnings)") points at the skip lines.
    grouped: skipped CSV rows beyond one per line of `skipped` (one line names all the rows of
    an unknown split value)."""
    # skipped holds malformed CSV rows too: they count among the images.
    total = len(skipped) + grouped + sum(len(v) for v in items.values())
    datasets: dict[str, ImageDataset] = {}
    try:
        for part, part_items in items.items():
            if part_items:
                datasets[part] = _build(
                    part_items,
                    class_names,
                    spec,
                    where[part],
                    workers=workers,
                    progress=progress,
                    part=part,
                    skipped=skipped,
                    require_all_classes=part == "train",
                )
    finally:
        _report(skipped, ignored, total, grouped)
    return datasets


def _wxh(part: ImageDataset) -> str:
    return f"{part.images.shape[3]}x{part.images.shape[2]}"


def _assemble(
    datasets: dict[str, ImageDataset], skipped: list[str], val_fraction: float, seed: int,
    grouped: int = 0, hold_out_test: bool = False,
) -> Splits:
    train = datasets["train"]
    val = datasets.get("val")
    test = datasets.get("test")
    if val is None and test is not None and not hold_out_test:
        val, test = test, None  # train/ + test/ only: test/ is what there is to validate on
        # Said: its score was read as a held-out test's, while the run chose by it (best.pt,
        # early stopping) -- and manifest rows of a split spelled 'Validierung' end here too.
        # Kept as the default: runs so far validated on test/, and `evaluate` finds their
        # validation images again only if it stays so.
        log.warning("note: no validation part, so the %d test images validate the run and are "
                    "no held-out test; --val-fraction 0.2 draws the validation images from the "
                    "training ones instead and keeps the test images apart (as a val/ folder, "
                    "or rows marked val, does)", len(val))  # fmt: skip
    drawn = val is None
    if drawn:
        train, val = train.split(val_fraction, seed)
    # Named: a test/ folder of other sizes was called 'the train and validation images'.
    for name, part in (("validation", val), ("test", test)):
        if part is not None and part.images.shape[1:] != train.images.shape[1:]:
            n = mixed_sizes_size(max(*part.images.shape[2:], *train.images.shape[2:]))
            raise DataError(
                f"the train and {name} images have different sizes ({_wxh(train)} and "
                f"{_wxh(part)} pixels): give a size to resize them to (size={n}, or "
                f"--img-size {n})"
            )
    return Splits(train, val, test, skipped, grouped=grouped, val_drawn=drawn)


_SPLIT_NAMES = {
    **{n: "train" for n in TRAIN_DIRS},
    **{n: "val" for n in VAL_DIRS},
    **{n: "test" for n in TEST_DIRS},
}


def manifest_split(cell: str) -> str | None:
    """A manifest's split cell as 'train', 'val' or 'test' (any of the part folders' names, in
    any case); an empty cell is 'train'; None for another value (the row is left out)."""
    given = cell.strip()
    return _SPLIT_NAMES.get(given.lower()) if given else "train"


def unknown_split_lines(manifest: Path, unknown: dict[str, list[int]]) -> list[str]:
    """One line per split value no part is called (rows left out), with up to 3 of its lines."""
    return [f"{manifest}: {plural(len(lines), 'row')} with split {value!r} (line"
            f"{'s' if len(lines) > 1 else ''} {some([str(n) for n in lines])}): the split is "
            "train, val or test"
            for value, lines in unknown.items()]  # fmt: skip


# Header names a manifest's columns may have, in any order (the aliases are what other tools'
# CSVs use: a Kaggle `file,class` manifest should load as it is), compared in lower case with
# spaces and hyphens as underscores: a spreadsheet's "Image Path" or "File name" is image_path.
_COLUMN_NAMES = {
    **{n: "path" for n in ("path", "file", "filename", "file_name", "filepath", "image",
                           "image_path")},
    **{n: "label" for n in ("label", "class", "class_name", "category", "target")},
    **{n: "split" for n in ("split", "subset")},
}


def header_name(cell: str) -> str:
    """A manifest header cell as the column names are spelt here: a spreadsheet's "Image Path"
    or "Mask" is image_path or mask."""
    return "_".join(cell.lower().replace("-", " ").split())


def _header_columns(row: list[str], manifest: Path) -> dict[str, int] | None:
    """{'path'|'label'|'split': column index} when `row` is a header, None for a data row.

    A header names a path and a label column (in any order; other columns, e.g. width or notes,
    are ignored), or starts with a path column name (then the label is the second column, the
    layout older manifests have). A row holding an image file name is data, and so is one where
    only some cell happens to read 'class' or 'image' (a path without an extension, a label)."""
    names = [header_name(c) for c in row]
    if any(_is_image_file(n) for n in names):
        return None
    columns: dict[str, int] = {}
    for i, name in enumerate(names):
        role = _COLUMN_NAMES.get(name)
        if role is None:
            continue
        if role in columns:
            raise DataError(
                f"{manifest}: the header names the {role} column twice: name the columns path "
                "(or file, filename, image), label (or class) and optionally split"
            )
        columns[role] = i
    if "path" in columns and "label" in columns:
        return columns
    first_is_path = bool(names) and _COLUMN_NAMES.get(names[0]) == "path" and len(names) > 1
    if first_is_path and "label" not in columns and 1 not in columns.values():
        return {**columns, "label": 1}  # the older layout: path, then the label under any name
    if first_is_path or len(columns) > 1:  # a header (split,path) that lacks a column
        missing = "label" if "path" in columns else "path"
        raise DataError(
            f"{manifest}: the header has no {missing} column: name the columns path (or file, "
            "filename, image), label (or class) and optionally split"
        )
    return None


def _refuse_unnamed_columns(rows: list[list[str]], first: int, manifest: Path) -> None:
    """Without a header the columns are path,label[,split] by position. A `DataError` for a
    manifest whose rows plainly say otherwise: a first row that is no image but a header of
    names not known here (a German Excel's `Dateiname;Klasse`), read as data it was a class
    'Klasse' of a missing file 'Dateiname' ("has no readable image: add images"); or image
    file names in another column than the first, every row's label then taken for a file that
    is not there. `first`: the index of the first non-blank row."""
    data = [r for r in rows[first + 1 : first + 51] if any(c.strip() for c in r)]

    def images_in(column: int) -> int:
        return sum(column < len(r) and _is_image_file(r[column].strip()) for r in data)

    width = max((len(r) for r in data), default=0)
    column = max(range(width), key=images_in, default=0)  # the first of equals: 0
    if width == 0 or images_in(column) == 0:
        return  # no image file names to go by (files without an extension)
    head = [c.strip() for c in rows[first]]
    cells = ", ".join(repr(shown(c)) for c in head[:4]) + (", ..." if len(head) > 4 else "")
    lead = head[0] if head else ""
    if not any(_is_image_file(c) for c in head) and not (
        column == 0 and lead and manifest_path(manifest.parent, lead).exists()
    ):
        raise DataError(
            f"{manifest} line {first + 1} ({cells}) looks like a header, but names no path "
            "column: name the columns path (or file, filename, image), label (or class, "
            "category, target) and optionally split"
        )
    if column != 0:
        raise DataError(
            f"{manifest}: the image files are in column {column + 1} (line {first + 1}: {cells}), "
            "but without a header the first column is the path: add a first row that names the "
            "columns path, label and optionally split"
        )


def _header_again(row: list[str], header: list[str] | None, cells: dict[str, str]) -> bool:
    """Whether `row`, below the first, is a header: the `header` row again (if the manifest
    has one), or cells that name a path and a label column (`path,label`). Two manifests pasted together (`cat a.csv b.csv`,
    or a sheet's rows copied under another's) carry the second one's header: read as data, it
    was a class 'label' of a missing file 'path', which stopped the run."""
    names = [header_name(c) for c in row]
    if header is not None and names == [header_name(c) for c in header]:
        return True
    return (_COLUMN_NAMES.get(header_name(cells["path"])) == "path"
            and _COLUMN_NAMES.get(header_name(cells["label"])) == "label")


def _class_order(labels: set[str], manifest: Path) -> list[str]:
    """Integer labels sort as numbers ("2" before "10"); names sort as ImageFolder sorts folders.
    Labels of one number written two ways ("7" and "07": a spreadsheet keeps leading zeros
    in one export and not in another) are two classes, in their text's order: by the number
    alone, their order followed the set's, which changes from one process to the next, so
    a run's classes were another order when it resumed. A note names them."""
    if not all(label.lstrip("-").isdigit() for label in labels):
        return sorted(labels)
    order = sorted(labels, key=lambda label: (int(label), label))
    groups: dict[int, list[str]] = {}
    for label in order:
        groups.setdefault(int(label), []).append(label)
    same = [", ".join(repr(n) for n in names[:-1]) + f" and {names[-1]!r}"
            for names in groups.values() if len(names) > 1]  # fmt: skip
    if same:
        log.warning("note: labels %s in %s are one number written in two ways, so they are "
                    "separate classes; if they are one, give their rows one label",
                    "; ".join(same[:3]) + ("; ..." if len(same) > 3 else ""),
                    manifest)  # fmt: skip
    return order


def _manifest_rows(manifest: Path) -> tuple[list[tuple[Path, str, str]], list[str], int]:
    """A manifest's rows as (image path, label, split), the one-line reasons for the rows left
    out, and how many left-out rows those lines group (one line per unknown split value)."""
    if not manifest.is_file():
        raise DataError(f"{manifest} does not exist: give a CSV with rows `path,label`")
    base = manifest.parent
    rows = manifest_rows(manifest)
    first = next((i for i, r in enumerate(rows) if any(c.strip() for c in r)), len(rows))
    columns = _header_columns(rows[first], manifest) if first < len(rows) else None
    if columns is None:
        _refuse_unnamed_columns(rows, first, manifest)
    start = first + 1 if columns else 0
    # What a malformed row is told to look like: the header's order, else the documented one.
    layout = ",".join(sorted(columns, key=columns.__getitem__)) if columns else "path,label[,split]"
    columns = columns or {"path": 0, "label": 1, "split": 2}
    entries: list[tuple[Path, str, str]] = []
    skipped: list[str] = []
    unknown_splits: dict[str, list[int]] = {}  # one line per value, not per row
    # An image listed twice (pasted manifests) is read once: a copy on each side of the split
    # would be validated on after being trained on.
    first_row: dict[str, tuple[int, str]] = {}  # (line, label)
    listings: dict[str, dict[str, list[str]]] = {}  # folders read to match names in any case
    repeats: list[tuple[int, int, str]] = []  # (line, line of the first row, path as written)
    relabels: list[tuple[int, str, int, str]] = []  # (line, its label, first line, first label)
    for lineno, row in enumerate(rows[start:], start=start + 1):
        if not row or all(not c.strip() for c in row):
            continue
        cells = {k: row[i].strip() if i < len(row) else "" for k, i in columns.items()}
        if _header_again(row, rows[first] if start else None, cells):
            continue
        if start and any(c.strip() for c in row[len(rows[first]):]):
            # Cells beyond the header's: a ',' inside an unquoted label or name split it (and
            # 'Hose, lang' and 'Hose, kurz' were both the class 'Hose'), or a column has no
            # name (a split column ignored). Excel pads every row to one width, so only a CSV
            # written by hand or by a script gets here.
            raise DataError(
                f"{manifest} line {lineno} has more cells than the header names "
                f"({len(row)}: {', '.join(repr(shown(c)) for c in row[:6])}): put a label or file "
                "name holding a comma in quotes (\"T-Shirt, kurz\"), and name each column in "
                "the header"
            )
        split = manifest_split(cells.get("split", ""))
        if not cells["path"] or not cells["label"]:
            skipped.append(
                f"{manifest} line {lineno}: expected `{layout}` (split: train, val or test)"
            )
            continue
        if split is None:
            unknown_splits.setdefault(cells["split"], []).append(lineno)
            continue
        path = manifest_path(base, cells["path"], listings)
        key = os.path.normcase(os.path.abspath(path))
        label = composed(cells["label"])
        if key in first_row:
            line, first_label = first_row[key]
            repeats.append((lineno, line, cells["path"]))
            if label != first_label:
                relabels.append((lineno, label, line, first_label))
            continue
        first_row[key] = (lineno, label)
        entries.append((path, label, split))
    skipped += unknown_split_lines(manifest, unknown_splits)
    grouped = sum(len(lines) - 1 for lines in unknown_splits.values())
    if repeats:
        line, first, written = repeats[0]
        where = f"line {line} repeats line {first}, {written}"
        if len(repeats) > 1:
            where = f"lines {some([str(r[0]) for r in repeats])}; {where}"
        # A repeat with another label is a disagreement (two people labelled the image), said
        # in the same line: the first row's label is used without anyone having chosen it.
        other = ""
        if relabels:
            line, label, first, first_label = relabels[0]
            other = (f"; {len(relabels)} of them {'gives' if len(relabels) == 1 else 'give'} "
                     f"another label (line {line} {shown(label)!r}, line {first} "
                     f"{shown(first_label)!r}): remove the row that is wrong")
        skipped.append(f"{manifest}: {plural(len(repeats), 'row')} "
                       f"{'lists' if len(repeats) == 1 else 'list'} an image an earlier row lists "
                       f"({where}): each image is read once, from its first row{other}")
        grouped += len(repeats) - 1
    return entries, skipped, grouped


def refuse_none_there(paths: Sequence[Path], first: Path, manifest: Path) -> None:
    """One line, not one "no such file" per row, when none of the files a manifest lists is
    there: every path was written from elsewhere (the current folder, C:\\Users\\... on the PC
    that made the CSV). first: the first row's. For --data and predict --files-from alike."""
    if not paths or any(path.exists() or path.is_symlink() for path in paths):
        return
    # Written relative to the current folder (the CSV made beside the data, then moved into
    # it), they are there from here: say so, the fix is then plain.
    here = Path(os.path.relpath(first, manifest.parent))
    found = (f"; they are there relative to the current folder ({here} is)"
             if not here.is_absolute() and here.exists() else "")  # fmt: skip
    # A CSV in the current folder: its folder read as '.'.
    folder = manifest.parent if manifest.parent != Path() else Path.cwd()
    raise DataError(f"none of the {plural(len(paths), 'file')} {manifest} lists is there "
                    f"(the first: {first}){found}: write the paths relative to the CSV's "
                    f"folder, {folder} (or absolute)")  # fmt: skip


def manifest_image_paths(manifest: Path) -> list[Path]:
    """The image files a CSV manifest lists, from every row whatever its label and split (for
    `cnnzoo predict --files-from labels.csv`): its path column (the first, unless a header
    names another), relative to the CSV's folder as `load_csv` reads it. A list of file names
    under a header such as `filename`, without labels, is a manifest too."""
    rows = manifest_rows(manifest)
    first = next((i for i, r in enumerate(rows) if any(c.strip() for c in r)), len(rows))
    names = [header_name(c) for c in rows[first]] if first < len(rows) else []
    column = next((i for i, n in enumerate(names) if _COLUMN_NAMES.get(n) == "path"), None)
    header = column is not None and not any(_is_image_file(n) for n in names)
    if not header:
        _refuse_unnamed_columns(rows, first, manifest)
    column = column if header else 0
    cells = [r[column].strip() for r in rows[first + header:] if column < len(r)]
    if header:  # a header again, of a second manifest pasted below the first
        cells = [c for c in cells if header_name(c) != names[column]]
    listings: dict[str, dict[str, list[str]]] = {}
    paths = [manifest_path(manifest.parent, c, listings) for c in cells if c]
    # A manifest copied away from its images was one 'no such file' line per row.
    refuse_none_there(paths, paths[0] if paths else manifest, manifest)
    return paths


def legacy_row_order(manifest: Path, pool: ImageDataset) -> ImageDataset:
    """`pool` (a manifest's training and validation images, with paths) in the order of the
    manifest's rows, in which runs before `load_csv` sorted them by path drew their validation
    split: `evaluate` redraws it to score such a run's own validation images."""
    rank = {str(p): i for i, (p, _, _) in enumerate(_manifest_rows(manifest)[0])}
    order = sorted(range(len(pool)), key=lambda i: rank.get(str(pool.paths[i]), len(rank)))
    return pool.select(order)


def load_csv(
    manifest: str | os.PathLike[str],
    spec: ImageSpec | None = None,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    workers: int = 2,
    progress: bool = True,
    min_classes: int = 2,
    hold_out_test: bool = False,
) -> Splits:
    """Load a CSV manifest: rows `path,label` and optionally a third column `split`
    (train / val / test). A header row naming the columns is optional; with one, the columns may
    come in any order under the names in `_COLUMN_NAMES` (path/file/filename/image,
    label/class, split). Relative paths are relative to the CSV's folder. Without a split
    column (or without val rows: hold_out_test as in `load_folder`), a stratified split is
    made."""
    from .masks import holds_mask_pairs  # masks imports this module

    spec = spec or ImageSpec()
    manifest = Path(manifest)
    if holds_mask_pairs(manifest):  # read as path,label, every mask file would be a class
        raise DataError(f"{manifest} lists image/mask pairs for segmentation (image and mask "
                        f"columns), not labelled images: train a U-Net on it (cnnzoo train "
                        f"unet --data {shlex.quote(str(manifest))})")  # as the shell takes it
    entries, skipped, grouped = _manifest_rows(manifest)
    if not entries:  # the malformed lines say why no row was taken
        _report(skipped, [], len(skipped) + grouped, grouped)
        raise DataError(f"{manifest} lists no images: write one `path,label` row per image")
    # The rows' order is no part of the data: read in it, sorting the sheet (by label, say) drew
    # other validation images for the same seed, and `evaluate` refused the run's own manifest
    # as changed. Path order, as a folder's files have (`legacy_row_order` keeps the old one).
    first_listed = entries[0][0]
    entries.sort(key=lambda entry: str(entry[0]))
    # No training row: a sheet of held-out images. An evaluation (min_classes 1: a run trained
    # elsewhere, or on other images) scores its rows as marked, their labels its classes; it
    # was refused, and the advice to empty the split cells lost which rows were val and test.
    held_only = not any(split == "train" for _, _, split in entries)
    if held_only and min_classes > 1:  # was '0 class among its ...'
        held = " or ".join(sorted({split for _, _, split in entries}))
        raise DataError(f"every row of {manifest} is marked {held}, and none is a training "
                        "row: mark the images to train on train (or leave their split cell "
                        "empty)")
    class_names = _class_order({label for _, label, split in entries
                                if split == "train" or held_only}, manifest)  # fmt: skip
    if len(class_names) < min_classes:
        raise DataError(
            f"{manifest} has {plural(len(class_names), 'class', 'classes')} among its training "
            "rows: a classifier needs two or more labels"
        )
    refuse_control(class_names, f"of {manifest}", "label", "fix the label")
    _note_case(class_names, manifest, "give their rows one label")
    index = {name: i for i, name in enumerate(class_names)}
    for path, label, split in entries:
        if label not in index:
            same = _same_but_case(label, class_names)
            raise DataError(
                f"{manifest}: {path.name} ({split}) has label {label!r}, which no training row "
                f"has{f' (they spell it {same!r})' if same else ''}: fix the label or add "
                "training images of it"
            )
    refuse_none_there([path for path, _, _ in entries], first_listed, manifest)
    parts = ("train", "val", "test")
    items = {part: [(p, index[label]) for p, label, split in entries if split == part]
             for part in parts}  # fmt: skip
    datasets = _build_parts(
        items, class_names, spec, dict.fromkeys(parts, manifest), skipped, [],
        workers=workers, progress=progress, grouped=grouped,
    )  # fmt: skip
    if held_only:  # its val and test rows as marked, beside an empty training part
        empty = next(iter(datasets.values())).select([])
        return Splits(empty, datasets.get("val", empty), datasets.get("test"), skipped,
                      grouped=grouped)  # fmt: skip
    return _assemble(datasets, skipped, val_fraction, seed, grouped, hold_out_test)


def write_image_folder(
    dataset: ImageDataset,
    root: str | os.PathLike[str],
    *,
    stems: Sequence[str] | None = None,
    exist_ok: bool = False,
) -> list[int]:
    """Write a data set as PNGs in class sub-folders (the layout `load_folder` reads).

    Files are named `<stem>.png`, stems defaulting to the zero-padded index in `dataset`.
    Refuses a folder that already holds files unless exist_ok (files of the same name are then
    overwritten; nothing is deleted). Returns the number of images written per class.
    """
    from PIL import Image

    root = Path(root)
    if root.exists() and any(root.iterdir()) and not exist_ok:
        raise DataError(f"{root} is not empty: choose a new folder (or overwrite: --overwrite)")
    if stems is None:
        width = len(str(max(len(dataset) - 1, 0)))
        stems = [f"{i:0{width}d}" for i in range(len(dataset))]
    for name in dataset.class_names:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i in range(len(dataset)):
        a = dataset.images[i].permute(1, 2, 0).numpy()
        img = Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a)
        write_png(img, root / dataset.class_names[int(dataset.labels[i])] / f"{stems[i]}.png")
    return dataset.class_counts()
