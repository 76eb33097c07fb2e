"""The transfer report: the engine's confusion matrix, curves and per-class table, plus the grid of
"top losses" -- the validation images the model got wrong, highest loss first, with their
probabilities (what fastai users know as `plot_top_losses`): mislabelled images, ambiguous
classes and what the model latches onto show up there first."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..data.folder import composed
from ..engine.report import (
    logged_metrics,
    new_figure,
    per_class_table,
    plot_confusion,
    plot_curves,
    quiet_glyphs,
    save_figure,
    short_labels,
    write_per_class_csv,
)
from ..engine.task import ClassificationAccumulator
from ..paths import write_text_atomic
from ..text import shown


def accumulate(probs: Tensor, labels: Tensor, num_classes: int) -> ClassificationAccumulator:
    """An engine accumulator (loss, accuracy, top-5, confusion) filled from probabilities."""
    acc = ClassificationAccumulator(num_classes)
    logp = probs.clamp_min(1e-12).log()
    loss = torch.nn.functional.nll_loss(logp, labels)
    acc.update(logp, labels, loss)
    return acc


def top_losses(probs: Tensor, labels: Tensor, k: int = 16) -> list[int]:
    """Indices of the wrongly predicted images, highest loss (-log p(true class)) first."""
    wrong = torch.nonzero(probs.argmax(1) != labels).flatten()
    if len(wrong) == 0:
        return []
    loss = -probs[wrong, labels[wrong]].clamp_min(1e-12).log()
    return wrong[loss.argsort(descending=True)][:k].tolist()


def shown_files(paths: Sequence[str]) -> list[str]:
    """Each image's path as a figure names it: relative to the folder all of them lie in (the
    data folder, or its val/), so 'Lager/img_003.png', 'Lager/shift 2/n0.jpg'; the paths as
    they are when they share none (a manifest's on two drives), or when they are a built-in
    set's ids ('digits/521': relative, and no file), which relative to 'digits' read '521'."""
    if not any(os.path.isabs(p) or os.path.exists(p) for p in paths):
        return list(paths)
    try:
        base = os.path.commonpath([os.path.abspath(p) for p in paths])
    except ValueError:
        return list(paths)
    if len(paths) == 1:  # commonpath of one file is the file itself
        base = os.path.dirname(base)
    return [os.path.relpath(os.path.abspath(p), base) for p in paths]


@quiet_glyphs
def plot_top_losses(images: Tensor, probs: Tensor, labels: Tensor, class_names: list[str],
                    path: Path, k: int = 16, paths: Sequence[str] = ()) -> Path:  # fmt: skip
    """A grid of the `k` wrongly predicted images of the highest loss: true class, prediction,
    probabilities, and (given the images' `paths`) the file, to find a mislabelled one."""
    idx = top_losses(probs, labels, k)
    if not idx:  # a one-line picture, not an empty grid under a title promising images
        fig = new_figure(figsize=(6.4, 0.9))
        ax = fig.subplots()
        ax.axis("off")
        ax.text(0.5, 0.5, f"every one of the {len(labels)} validation images is predicted "
                "right", ha="center", va="center", fontsize=11)  # fmt: skip
        return save_figure(fig, path, dpi=100)
    cols = 4
    rows = -(-len(idx) // cols)
    # constrained: titles never run into the row above
    fig = new_figure(figsize=(3.2 * cols, 3.4 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    names = short_labels(class_names, 30)  # a title fits one panel's width
    # The grid's use is finding mislabelled or odd images; without their file names a wrong
    # one among hundreds of photos could not be found again.
    files = []
    if paths:
        named = shown_files(paths)
        # composed: a name in Latin-1 bytes ('caf\udce9.png') stopped matplotlib's drawing
        files = short_labels([shown(composed(named[i])) for i in idx], 30)
    for n, (ax, i) in enumerate(zip(axes.flat, idx, strict=False)):
        img = images[i].permute(1, 2, 0).numpy()
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)
        p = probs[i]
        pred, true = int(p.argmax()), int(labels[i])
        file = f"{files[n]}\n" if files else ""
        ax.set_title(f"{file}true {names[true]} ({p[true]:.2f})\npredicted {names[pred]} "
                     f"({p[pred]:.2f})", fontsize=9, parse_math=False)  # fmt: skip
    fig.suptitle("validation images predicted wrong, highest loss (lowest probability of the "
                 "true class) first", fontsize=11)
    return save_figure(fig, path, dpi=100)


PHASES = {"head": "new head alone", "full": "whole network"}
# What `write_report` writes into a run's folder (curves.png only with something to plot).
REPORT_FILES = ("confusion.png", "curves.png", "top_losses.png", "per_class.csv", "metrics.json")


def curve_metrics(history: list[dict[str, Any]], num_classes: int) -> list[str]:
    """The metrics curves.png plots: loss, accuracy, ...; top-5 only with more than 5 classes
    (with 5 or fewer it is 1 at every epoch)."""
    return [m for m in logged_metrics(history) if m != "top5" or num_classes > 5]


def plot_finetune_curves(history: list[dict[str, Any]], path: Path, num_classes: int) -> Path:
    """Fine-tuning curves, one panel per metric: the phases one after the other on one epoch
    axis (each phase's log counts its epochs from 1), a dotted line where the whole network
    starts to train."""
    phases = [r.get("phase", "full") for r in history]
    # Where each phase starts: a line between its first epoch and the last of the one before.
    starts = [i for i in range(1, len(phases)) if phases[i] != phases[i - 1]]
    title = None
    if starts:
        bounds = [0, *starts, len(phases)]
        names = ", then ".join(
            f"{PHASES.get(phases[a], phases[a])} "
            f"({f'epoch {b}' if b == a + 1 else f'epochs {a + 1}-{b}'})"
            for a, b in zip(bounds, bounds[1:], strict=False))  # fmt: skip
        title = f"fine-tuning: {names}"
    return plot_curves(history, path, metrics=curve_metrics(history, num_classes),
                       epochs=list(range(1, len(history) + 1)),
                       breaks=[i + 0.5 for i in starts], title=title)  # fmt: skip


@quiet_glyphs
def plot_l2_curve(cv: list[dict[str, float]], path: Path, chosen: float | None = None) -> Path:
    """For the features head: cross-validated accuracy and loss against the L2 strength, the
    `chosen` one (the head's) marked."""
    fig = new_figure(figsize=(8.4, 3.4))
    axes = fig.subplots(1, 2)
    l2 = [r["l2"] for r in cv]
    for ax, key in zip(axes, ("cv_loss", "cv_acc"), strict=True):
        ax.semilogx(l2, [r[key] for r in cv], "-o", ms=3)
        if chosen is not None:
            ax.axvline(chosen, color="C3", ls=":", label=f"chosen: {chosen:g}")
            ax.legend(fontsize=8)
        ax.set_xlabel("L2 strength")
        ax.set_title(key.replace("_", " "))
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


def write_report(out_dir: Path, *, images: Tensor, probs: Tensor, labels: Tensor,
                 class_names: list[str], history: list[dict[str, Any]] | None,
                 cv: list[dict[str, float]] | None, metrics: dict[str, Any],
                 l2: float | None = None,
                 paths: Sequence[str] = ()) -> tuple[list[str], list[str]]:  # fmt: skip
    """confusion.png, per_class.csv, curves.png, top_losses.png and metrics.json in `out_dir`;
    returns the lines to print: the file names (notes), and the per-class table (a result).
    `l2`: the features head's, marked on its cross-validation curve `cv`; `paths`: the
    images' files, named in the top-losses grid."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    acc = accumulate(probs, labels, len(class_names))
    said = [f"confusion matrix: {plot_confusion(acc.confusion, class_names, out_dir / 'confusion.png')}"]
    if history:
        curves = plot_finetune_curves(history, out_dir / "curves.png", len(class_names))
        said.append(f"learning curves: {curves}")
    elif cv:
        curve = plot_l2_curve(cv, out_dir / "curves.png", l2)
        said.append(f"L2 cross-validation curve: {curve}")
    grid = plot_top_losses(images, probs, labels, class_names, out_dir / "top_losses.png",
                           paths=paths)
    said.append(f"top losses: {grid}" if top_losses(probs, labels, 1)
                else f"top losses: none, every validation image is predicted right ({grid})")
    write_per_class_csv(acc, class_names, out_dir / "per_class.csv")
    write_text_atomic(out_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return said, per_class_table(acc, class_names)
