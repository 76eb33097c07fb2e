"""Built-in data sets, read offline, and `load_dataset`: one entry point for every data source.

- Fashion-MNIST (Xiao, Rasul & Vollgraf 2017): 70,000 grey 28x28 clothing images in 10 classes,
  60,000 for training and 10,000 for testing. Read from Debian's `dataset-fashion-mnist` files
  in /usr/share/datasets/fashion-mnist, else from the user cache
  (~/.cache/cnnzoo/fashion-mnist, or $CNNZOO_CACHE/fashion-mnist), else downloaded there from
  Zalando's official URLs (checked against the published MD5 sums).
- digits: scikit-learn's 1,797 8x8 handwritten digits (UCI), installed with scikit-learn;
  its 17 grey levels 0..16 become 0..255.

Class names are short folder-safe words, so an exported image folder loads back with the same
names; `FASHION_MNIST_LABELS` keeps the data set's official names for display.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError, UsageError, pip_install_extra
from ..paths import cache_root, remove_stale_temps, replacing
from .dataset import ImageDataset, Splits
from .folder import CLASS_FOLDERS, ImagesSeen, load_csv, load_folder, workbook_error
from .images import IMAGE_EXTENSIONS, ImageSpec

FASHION_MNIST_CLASSES = (
    "tshirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle_boot",
)  # fmt: skip
FASHION_MNIST_LABELS = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
DIGITS_CLASSES = tuple(str(d) for d in range(10))

FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# file -> MD5 of the .gz as published in the data set's README.
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_SPLIT_PREFIX = {"train": "train", "test": "t10k"}


def fashion_mnist_dirs() -> list[Path]:
    """Where Fashion-MNIST is looked for, in order (without a home folder, and so a cache: the
    system's copy only)."""
    try:
        return [SYSTEM_FASHION_MNIST, cache_root() / "fashion-mnist"]
    except UsageError:
        return [SYSTEM_FASHION_MNIST]


# --- idx files --------------------------------------------------------------------------------

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an idx file (LeCun's MNIST format, plain or .gz) into a numpy array.

    Header: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions, then
    each dimension as a big-endian int32; the data follow in C order.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(
                f"{path}: corrupt gzip data ({exc}); delete the file and get it again"
            ) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an idx file; delete it and get it again")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - offset != expected:
        raise DataError(
            f"{path} holds {len(raw) - offset} data bytes, its header promises {expected}: "
            "the file is truncated; delete it and get it again"
        )
    return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(dims)


def _find_fashion_mnist(download: bool) -> Path:
    names = list(FASHION_MNIST_FILES)
    for d in fashion_mnist_dirs():
        if all((d / n).is_file() or (d / n[:-3]).is_file() for n in names):
            return d
    target = cache_root() / "fashion-mnist"
    help_text = (
        "install Debian's package (sudo apt-get install dataset-fashion-mnist) or copy the 4 files "
        f"({', '.join(names)}) from {FASHION_MNIST_URL} into {target}"
    )
    if not download:
        raise DataError(
            f"Fashion-MNIST not found in {' or '.join(map(str, fashion_mnist_dirs()))}: {help_text}"
        )
    try:
        download_fashion_mnist(target)
    except OSError as exc:
        reason = " ".join(str(getattr(exc, "reason", exc)).split())
        raise DataError(f"Fashion-MNIST download failed ({reason}): {help_text}") from None
    return target


def download_fashion_mnist(dest: str | os.PathLike[str], url: str = FASHION_MNIST_URL) -> None:
    """Download the four files into `dest`, each checked by MD5 and written in one step,
    fsync'ed (`paths.replacing`): a kill or a power cut leaves no file that looks whole, and
    the next download removes what a killed one left."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name, md5 in FASHION_MNIST_FILES.items():
        if (dest / name).is_file():
            continue
        remove_stale_temps(dest / name)
        with replacing(dest / name, durable=True) as tmp:
            with open(tmp, "wb") as out, urllib.request.urlopen(url + name, timeout=30) as r:
                shutil.copyfileobj(r, out)
            digest = hashlib.md5(tmp.read_bytes()).hexdigest()
            if digest != md5:  # before the rename: the temporary file goes
                raise OSError(f"{name} has MD5 {digest}, expected {md5}")


def load_fashion_mnist(split: str = "train", *, download: bool = True) -> ImageDataset:
    """Fashion-MNIST's 'train' (60,000) or 'test' (10,000) images as uint8 (N, 1, 28, 28)."""
    if split not in _SPLIT_PREFIX:
        raise DataError(f"Fashion-MNIST has splits 'train' and 'test', not {split!r}")
    d = _find_fashion_mnist(download)
    prefix = _SPLIT_PREFIX[split]

    def read(kind: str) -> np.ndarray:
        name = f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte.gz"
        return read_idx(d / name if (d / name).is_file() else d / name[:-3])

    images, labels = read("images"), read("labels")
    if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
        raise DataError(f"Fashion-MNIST files in {d} do not match each other: get them again")
    return ImageDataset(
        torch.from_numpy(images.copy()).unsqueeze(1),
        torch.from_numpy(labels.astype(np.int64)),
        list(FASHION_MNIST_CLASSES),
        [f"fashion-mnist/{split}/{i}" for i in range(len(labels))],
    )


def load_digits() -> ImageDataset:
    """scikit-learn's 1,797 handwritten digits as uint8 (N, 1, 8, 8), 0..16 scaled to 0..255."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError:
        raise DataError(
            f"the digits data set comes with scikit-learn: {pip_install_extra('data')}"
        ) from None
    bunch = sk_load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return ImageDataset(
        torch.from_numpy(images).unsqueeze(1),
        torch.from_numpy(bunch.target.astype(np.int64)),
        list(DIGITS_CLASSES),
        [f"digits/{i}" for i in range(len(images))],
    )


# --- one entry point --------------------------------------------------------------------------


def _fit(ds: ImageDataset, spec: ImageSpec) -> ImageDataset:
    ds = ds.with_channels(spec.channels)
    return ds if spec.size is None else ds.resized(spec.size)


def _fashion_mnist_splits(spec: ImageSpec, val_fraction: float, seed: int) -> Splits:
    # The official test set is the validation set: it is what published accuracies are measured on.
    del val_fraction, seed
    return Splits(_fit(load_fashion_mnist("train"), spec), _fit(load_fashion_mnist("test"), spec))


def _digits_splits(spec: ImageSpec, val_fraction: float, seed: int) -> Splits:
    train, val = load_digits().split(val_fraction, seed)
    return Splits(_fit(train, spec), _fit(val, spec), val_drawn=True)


# name -> (spec, val_fraction, seed) -> Splits. A new built-in is one entry here.
BUILTIN_DATASETS: dict[str, Callable[[ImageSpec, float, int], Splits]] = {
    "fashion-mnist": _fashion_mnist_splits,
    "digits": _digits_splits,
}
_ALIASES = {
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
}


def builtin_key(name: str) -> str:
    """A built-in set's own name for `name` as users write it: any case, Fashion-MNIST's
    aliases ('Digits' -> 'digits', 'fmnist' -> 'fashion-mnist'); other names lower-cased."""
    return _ALIASES.get(name.lower(), name.lower())


def builtin_name(source: str | os.PathLike[str]) -> str | None:
    """The built-in set `source` names ('FMNIST' -> 'fashion-mnist'), or None: a file or folder
    of that name wins, as `load_dataset` reads it."""
    key = builtin_key(str(source))
    return key if key in BUILTIN_DATASETS and not Path(str(source)).exists() else None


# Built-in sets whose mirror images are another class or none (a mirrored 2 is no digit): their
# default augmentation does not flip, and a transfer run's default views leave out the mirror.
UNMIRRORED = ("digits",)


def mirror_changes_class(source: object) -> bool:
    """Whether `source` (a data source as users give it) is a built-in set of `UNMIRRORED`."""
    return isinstance(source, str | os.PathLike) and builtin_name(source) in UNMIRRORED


def own_channels(source: str | os.PathLike[str], seen: ImagesSeen | None) -> int | None:
    """The channels a data source's images have, as training reads them: 1 for the (grey)
    built-ins and for files that are all grey (`seen`, from `folder.seen_images`), 3 for files
    of which any is colour, None when there are no files to tell."""
    if builtin_name(source) is not None:
        return 1
    return None if seen is None else 1 if seen.grey else 3


def load_dataset(
    source: str | os.PathLike[str],
    spec: ImageSpec | None = None,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    workers: int = 2,
    progress: bool = True,
    min_classes: int = 2,
    hold_out_test: bool = False,
    note_test: bool = True,
) -> Splits:
    """Train/validation data from a built-in name, an image folder or a CSV manifest.

    source: 'fashion-mnist' (validation = its official 10,000-image test set), 'digits'
    (stratified split), a folder (see `folder.load_folder`) or a .csv manifest.
    spec: size and channels to bring every image to. For built-ins the default keeps their
    native 28x28 / 8x8 grey; a spec with size=None keeps the size but applies the channels.
    min_classes: what a folder or manifest must hold (1 for a held-out set to score on).
    hold_out_test: a folder's test/ part (a manifest's test rows) without a val/ part stays the
    test part, and validation is drawn from the training images; else it validates, and
    note_test says so with the option that keeps it apart (a run's choice: not for `evaluate`,
    which reads the run's data as it was split).
    """
    name = str(source)
    if not name.strip():  # Path("") is the current folder, which is not what an empty name meant
        raise DataError(f"the data source is empty: give an image folder, a .csv manifest or "
                        f"one of {', '.join(BUILTIN_DATASETS)}")  # fmt: skip
    key = builtin_name(name)
    if key is not None:
        return BUILTIN_DATASETS[key](spec or ImageSpec(channels=1), val_fraction, seed)
    path = Path(source)
    if path.is_dir():
        return load_folder(
            path, spec, val_fraction=val_fraction, seed=seed, workers=workers, progress=progress,
            min_classes=min_classes, hold_out_test=hold_out_test, note_test=note_test,
        )
    if path.suffix.lower() == ".csv":
        return load_csv(
            path, spec, val_fraction=val_fraction, seed=seed, workers=workers, progress=progress,
            min_classes=min_classes, hold_out_test=hold_out_test, note_test=note_test,
        )
    if path.is_file() and (workbook := workbook_error(path)) is not None:
        raise workbook
    if path.is_file() and path.suffix.lower() in (".txt", ".tsv"):
        # Excel's "Unicode Text" export (UTF-16, tab-separated) is a .txt.
        raise DataError(f"{name}: a manifest's name ends in .csv (rows `path,label`; tabs or "
                        f"';' between the cells are read too): rename it {path.stem}.csv")
    if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
        raise DataError(f"{name} is a single image: the data is a folder of them, {CLASS_FOLDERS} "
                        "(or a CSV manifest)")  # fmt: skip
    if name == "cells":  # the segmentation set's name, as `cnnzoo train unet --data` reads it
        raise DataError("'cells' is the built-in segmentation set (image/mask pairs), not one "
                        "class per folder: train a U-Net on it (cnnzoo train unet --data cells)")
    raise DataError(
        f"{name!r} is neither a built-in data set ({', '.join(BUILTIN_DATASETS)}) nor an image "
        "folder or CSV manifest: check the path"
    )
