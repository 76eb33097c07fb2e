"""Writing built-in data sets out as files, so users see the layout their own data needs.

`EXPORTERS` maps a name to `exporter(dest, options) -> summary line`; a new exportable data set is
one entry (a callable, or "module:function" imported only when used, for heavy generators).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from ..paths import check_folder
from .builtin import builtin_key, load_digits, load_fashion_mnist
from .dataset import ImageDataset
from .folder import write_image_folder


@dataclass(frozen=True)
class ExportOptions:
    """classes: which classes (names or indices; None = all); per_class: at most this many
    images per class, a seeded random choice (None = all); split: 'train' or 'test';
    overwrite: write into a folder that already holds files."""

    classes: list[str] | None = None
    per_class: int | None = None
    split: str = "train"
    seed: int = 0
    overwrite: bool = False


Exporter = Callable[[Path, ExportOptions], str]


def _write(ds: ImageDataset, name: str, dest: Path, options: ExportOptions) -> str:
    ds = ds.subset(per_class=options.per_class, classes=options.classes, seed=options.seed)
    # Named after the image's index in the original split, so every file can be traced back.
    stems = [f"{options.split}_{p.rsplit('/', 1)[-1]}" for p in ds.paths]
    counts = write_image_folder(ds, dest, stems=stems, exist_ok=options.overwrite)
    per = ", ".join(f"{c} {n}" for c, n in zip(ds.class_names, counts, strict=True))
    return f"wrote {sum(counts)} {name} {options.split} images to {dest} ({per})"


def export_fashion_mnist(dest: Path, options: ExportOptions) -> str:
    """Fashion-MNIST ('train' or 'test' split) as 28x28 grey PNGs in class sub-folders."""
    return _write(load_fashion_mnist(options.split), "Fashion-MNIST", dest, options)


def export_digits(dest: Path, options: ExportOptions) -> str:
    """scikit-learn's digits as 8x8 grey PNGs; 'train'/'test' are the 80/20 stratified split
    with seed 0 (the one `load_dataset('digits')` uses), so the two exports never overlap."""
    if options.split not in ("train", "test"):
        raise DataError(f"digits has splits 'train' and 'test', not {options.split!r}")
    train, test = load_digits().split(0.2, seed=0)
    return _write(train if options.split == "train" else test, "digits", dest, options)


EXPORTERS: dict[str, Exporter | str] = {
    "fashion-mnist": export_fashion_mnist,
    "digits": export_digits,
    "cells": "cnnzoo.data.cells:export_cells_dataset",  # synthetic microscopy (segmentation)
}


def export_dataset(
    name: str, dest: str | os.PathLike[str], options: ExportOptions | None = None
) -> str:
    """Export the built-in data set `name` into the folder `dest`; returns a summary line."""
    entry = EXPORTERS.get(builtin_key(name))  # the names training takes: 'Digits', 'fmnist'
    if entry is None:
        raise DataError(f"no built-in data set {name!r}: choose one of {', '.join(EXPORTERS)}")
    check_folder(dest, "output folder")
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = getattr(importlib.import_module(module), attr)
    return entry(Path(dest), options or ExportOptions())
