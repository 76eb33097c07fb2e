"""The 1000 ImageNet (ILSVRC-2012) class names and `decode_predictions`.

`imagenet_classes.txt` holds one line per class index: the WordNet id and the short name Keras
Applications uses (`n03788365 mosquito_net`), the order every ImageNet classifier's logits use.
The list agrees with torchvision's `_IMAGENET_CATEGORIES` except that Keras's names keep the two
historic duplicates ('crane' 134 and 517, 'maillot' 638 and 639) and underscores for spaces.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..errors import UsageError
from ..text import plural


class Prediction(NamedTuple):
    """One of `decode_predictions`' top classes: its logit `index` (`imagenet_wnids()[index]` is
    its WordNet id), its `name` and its `probability`. Unpacks as Keras's (wnid, name, score)
    does: `for _, name, p in decode_predictions(probs)[0]`."""

    index: int
    name: str
    probability: float


@cache
def _read() -> tuple[tuple[str, ...], tuple[str, ...]]:
    text = resources.files(__package__).joinpath("imagenet_classes.txt").read_text("utf-8")
    rows = [line.split(" ", 1) for line in text.splitlines() if line.strip()]
    return tuple(r[0] for r in rows), tuple(r[1] for r in rows)


def given_class_names(text: str) -> list[str]:
    """`--classes` as given: a text file of one name per line (a classes.txt, ImageFolder's
    `classes` written out), or the names separated by commas ('daisy,rose,tulip')."""
    from ..data.folder import user_text

    path = Path(text)
    if path.is_file():
        names = [line.strip() for line in user_text(path).splitlines() if line.strip()]
    elif "," not in text and (path.is_dir() or path.suffix or len(path.parts) > 1):
        # A mistyped or moved classes.txt was one class named 'classes.txt': "--classes gives
        # 1 names, but ... has 5 classes", no word of the file.
        what = "is a folder" if path.is_dir() else "no such file"
        raise UsageError(f"--classes {text}: {what}: give a text file of one class name per "
                         "line, or the names separated by commas (daisy,rose,tulip)")
    else:
        names = [c.strip() for c in text.split(",") if c.strip()]
    if not names:
        raise UsageError(f"--classes {text!r} names no class: give the names in the order of "
                         "the net's outputs, daisy,rose,tulip, or a file of one name per line")
    return names


def check_class_names(names: Sequence[str], n_classes: int, source: object) -> None:
    """A one-line `UsageError` unless `names` name each of the `n_classes` outputs once."""
    if len(names) != n_classes:
        raise UsageError(f"--classes gives {plural(len(names), 'name')}, but {source} has "
                         f"{n_classes} classes: give one name per class, in the order of its "
                         "outputs")
    if len(set(names)) != len(names):
        twice = sorted({c for c in names if list(names).count(c) > 1})
        raise UsageError(f"--classes names {', '.join(twice)} twice: give each class once")


def imagenet_classes() -> list[str]:
    """The 1000 class names in logit order ('tench', 'goldfish', ..., 'toilet_tissue')."""
    return list(_read()[1])


def imagenet_wnids() -> list[str]:
    """The WordNet ids of the 1000 classes ('n01440764', ...), the folder names of ImageNet."""
    return list(_read()[0])


def decode_predictions(
    probs: Tensor | np.ndarray, top: int = 5, class_names: list[str] | None = None
) -> list[list[Prediction]]:
    """The `top` most probable classes of each row of `probs` (N, K) (or one row (K,)), a
    tensor or a numpy array (Keras's habit).

    `probs` are probabilities: rows of logits (which do not sum to 1) are refused, since their
    values would read as probabilities of 15. Names default to ImageNet's when K is 1000.
    """
    if top < 1:
        raise UsageError(f"top must be at least 1, not {top}")
    probs = torch.as_tensor(probs)
    if probs.dim() == 1:
        probs = probs[None]
    if probs.dim() != 2:
        raise UsageError(f"expected probabilities (N, K) or (K,), not shape {tuple(probs.shape)}")
    sums = probs.detach().double().sum(1)
    if len(sums) and not (torch.isfinite(sums).all() and (sums - 1).abs().max() <= 1e-2
                          and probs.min() >= 0):  # fmt: skip
        raise UsageError("the rows are not probabilities (they do not sum to 1): pass "
                         "model(x).softmax(1), not the logits")
    k = probs.shape[1]
    names = class_names if class_names is not None else (imagenet_classes() if k == 1000 else None)
    if names is not None and len(names) != k:
        raise UsageError(f"{len(names)} class names for {k} outputs")
    # A stable sort, not topk: equal probabilities (bf16 logits tie often) keep class order,
    # so rank 1 is argmax's class -- the one `cnnzoo evaluate` counts as predicted.
    values, indices = torch.sort(probs.detach().float(), dim=1, descending=True, stable=True)
    values, indices = values[:, :top], indices[:, :top]
    return [
        [
            Prediction(int(i), names[int(i)] if names else str(int(i)), float(p))
            for p, i in zip(vs, ix, strict=True)
        ]
        for vs, ix in zip(values, indices, strict=True)
    ]
