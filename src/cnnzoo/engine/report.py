"""End-of-run report: learning curves, confusion matrix and per-class precision/recall.

Drawn on matplotlib's Agg canvas, without pyplot (no display needed, and a notebook's backend is
left alone). Tasks other than classification get the learning curves; their own figures
(segmentation contours) belong to their helpers.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from ..errors import UsageError
from ..paths import cache_root, replacing, write_text_atomic
from ..text import shown, spreadsheet_text
from .task import ClassificationAccumulator, Task

P = ParamSpec("P")
R = TypeVar("R")


def new_figure(**kwargs: Any) -> Any:
    """A matplotlib `Figure(**kwargs)` on its own Agg canvas, outside pyplot: drawing a report
    changes nothing of the caller's matplotlib. `matplotlib.use("Agg")` switched a notebook's
    inline backend to Agg for the rest of its session (its own plots then showed nothing), and
    pyplot's figures would be shown by that backend at the end of the cell."""
    _writable_matplotlib_dir()  # first: it chooses matplotlib's folder before it is imported
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _writable_matplotlib_dir() -> None:
    """Before matplotlib is first imported: when the folders it keeps its settings and font
    cache in cannot be written (a read-only or missing HOME: a batch job, a container), point
    MPLCONFIGDIR at cnnzoo's cache, or else a temporary folder removed at exit. matplotlib
    itself falls back to a temporary folder too, but says so in two lines on every run, asking
    the user to set MPLCONFIGDIR. A user's own MPLCONFIGDIR is left alone."""
    if os.environ.get("MPLCONFIGDIR") or "matplotlib" in sys.modules:
        return
    try:
        if sys.platform.startswith(("linux", "freebsd")):  # matplotlib's own choice of folders
            home = Path.home
            ours = [Path(os.environ.get("XDG_CONFIG_HOME") or home() / ".config") / "matplotlib",
                    Path(os.environ.get("XDG_CACHE_HOME") or home() / ".cache") / "matplotlib"]
        elif sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
            ours = [Path(os.environ["LOCALAPPDATA"]) / "matplotlib"]
        else:
            ours = [Path.home() / ".matplotlib"]
        if all(map(_writable_folder, ours)):
            return
    except RuntimeError:  # pathlib's: no HOME, and a user of no name
        pass
    try:
        if _writable_folder(folder := cache_root() / "matplotlib"):
            os.environ["MPLCONFIGDIR"] = str(folder)
            return
        folder = Path(tempfile.mkdtemp(prefix="cnnzoo-matplotlib-"))
    except (UsageError, OSError):  # no cache; no temporary folder: matplotlib says what it can
        return
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ["MPLCONFIGDIR"] = str(folder)


def _writable_folder(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return folder.is_dir() and os.access(folder, os.W_OK)


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Write `fig` (a `new_figure`) to `path` (in the format its extension names) in one step:
    a run killed while drawing left a truncated PNG that no viewer opens, in place of the last
    good one."""
    with replacing(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=Path(path).suffix[1:] or "png")
    return Path(path)


def quiet_glyphs(plot: Callable[P, R]) -> Callable[P, R]:
    """Decorates a plotting function: a class or file name with a character the font lacks (an
    emoji) is drawn as a box, and matplotlib's warning about it -- repeated for every glyph,
    every layout pass and every figure -- says nothing the user can act on."""

    @functools.wraps(plot)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font")
            return plot(*args, **kwargs)

    return wrapper


# Keys of an epoch's record that say how it trained, not what it scored: progressive
# resizing's input size drew a 'px' panel of curves.png, beside loss and accuracy.
NOT_METRICS = ("train_px",)


def logged_metrics(history: list[dict[str, Any]]) -> list[str]:
    """The metrics the history logs for train or validation (loss, acc, ...), sorted."""
    return sorted({k.split("_", 1)[1] for r in history for k in r
                   if k.startswith(("train_", "val_")) and k not in NOT_METRICS})  # fmt: skip


CURVE_COLUMNS = 6  # panels per row of curves.png


@quiet_glyphs
def plot_curves(
    history: list[dict[str, Any]], path: Path, *, metrics: list[str] | None = None,
    epochs: list[int] | None = None, breaks: Sequence[float] = (), title: str | None = None,
) -> Path:  # fmt: skip
    """One panel per metric (default: every logged one), train and validation per epoch.

    epochs: the x values (default: each record's 'epoch'); breaks: x positions of dotted lines
    (where a phase of training starts); title: above the panels."""
    metrics = logged_metrics(history) if metrics is None else metrics
    # Rows of CURVE_COLUMNS panels: a segmentation run logs Dice and IoU per class, and in one
    # row 4 classes made a PNG 5,544 px wide, Pascal VOC's 21 about 20,000.
    cols = min(len(metrics), CURVE_COLUMNS)
    rows = -(-len(metrics) // cols)
    fig = new_figure(figsize=(4.2 * cols, 3.4 * rows))
    from matplotlib import ticker

    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[len(metrics):]:
        ax.axis("off")
    epochs = [r["epoch"] for r in history] if epochs is None else epochs
    for ax, m in zip(axes, metrics, strict=False):
        for split, style in (("train", "-o"), ("val", "-s")):
            ys = [r.get(f"{split}_{m}") for r in history]
            if any(y is not None for y in ys):
                ax.plot(epochs, ys, style, ms=3, label=split)
        for x in breaks:
            ax.axvline(x, color="grey", ls=":", lw=1)
        ax.set_title(m, parse_math=False)  # per-class metrics carry class names: dice_$100
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True, min_n_ticks=1))  # no 1.5
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


@quiet_glyphs
def plot_runs(runs: Sequence[Any], path: Path, caption: str | None = None) -> Path:
    """Several runs' curves over one another (`engine.compare.RunSummary`s): training loss,
    validation loss and the validation metric per epoch, one line (and colour) per run.
    caption: a note under the panels (the table's on GoogLeNet's training loss, which a
    reader of the plot alone took for a worse fit)."""
    fig = new_figure(figsize=(13, 3.8))
    from matplotlib import ticker

    metric = runs[0].metric
    panels = (("train_loss", "training loss"), ("val_loss", "validation loss"),
              (f"val_{metric}", f"validation {metric}"))  # fmt: skip
    axes = fig.subplots(1, 3, squeeze=False)
    for ax, (key, title) in zip(axes[0], panels, strict=True):
        ys: list[float] = []
        for i, r in enumerate(runs):
            points = [(h["epoch"], h[key]) for h in r.history if h.get(key) is not None]
            if points:  # matplotlib has 10 colours: the 11th run on is dashed, then dotted,
                # the 41st on marked otherwise
                ax.plot(*zip(*points, strict=True), marker="os^x"[i // 40 % 4], ms=2.5,
                        label=r.label, ls=("-", "--", ":", "-.")[i // 10 % 4])  # fmt: skip
                ys += [y for _, y in points]
        ax.set_title(title)
        if key.endswith("loss") and ys and min(ys) > 0 and max(ys) > 20 * min(ys):
            ax.set_yscale("log")  # one diverging epoch (a plain net's 5,000) flattens the rest
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
    # Beside the panels, in as many columns as the runs need (25 runs overflowed one panel).
    columns = 1 + (len(runs) - 1) // 20
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), ncol=columns)
    width = 13 + 2.2 * columns
    fig.set_size_inches(width, 3.8 + 0.12 * max(0, min(len(runs), 20) - 12))
    if caption:  # wrapped to the figure's width (8 pt: about 0.065 in a character)
        import textwrap

        lines = textwrap.wrap(caption, int(width / 0.065))
        fig.text(0.01, 0.01, "\n".join(lines), fontsize=8, ha="left", va="bottom",
                 parse_math=False)  # (run labels are text)
        fig.set_size_inches(width, fig.get_size_inches()[1] + 0.16 * len(lines))
        fig.tight_layout(rect=(0, 0.16 * len(lines) / fig.get_size_inches()[1] + 0.01, 1, 1))
    else:
        fig.tight_layout()
    return save_figure(fig, path)


def short_labels(names: Sequence[str], width: int = 32) -> list[str]:
    """Class names for a figure: one longer than `width` keeps its start and its end around
    a '…' (folder names that differ only in a number at the end stay apart); names that come
    out alike are told apart by their index. A 200-character name drawn whole pushed the
    confusion matrix into a corner of its figure and its labels off the edge."""
    keep = width - 1
    out = [n if len(n) <= width else f"{n[: keep - keep // 2]}…{n[len(n) - keep // 2:]}"
           for n in names]  # fmt: skip
    if len(set(out)) < len(out):
        out = [n if n == s else f"{i}: {s}" for i, (n, s) in enumerate(zip(names, out,
                                                                         strict=True))]
    return out


# Inches per class row and the largest side of a confusion matrix figure: up to ~30 classes
# every label is drawn at the default size; more get smaller labels, and past what fits in
# CONFUSION_MAX_INCHES (4,400 px at 110 dpi) only every k-th class is labelled.
CONFUSION_MAX_INCHES = 40.0


def confusion_figure(confusion: Any, class_names: list[str]) -> Any:
    """The figure `plot_confusion` saves (matplotlib), for a test to measure."""
    import math

    cm = confusion.double()
    norm = cm / cm.sum(1, keepdim=True).clamp(min=1)
    n = len(class_names)
    labels = short_labels(class_names)
    font = 10.0 if n <= 30 else 7.0 if n <= 100 else 5.0
    # Room for the longest label (the x labels are turned 45 degrees) beside the matrix, and
    # a row height each label fits in.
    margin = 0.9 + max(len(x) for x in labels) * font * 0.6 / 72
    pitch = font * 1.5 / 72
    size = min(max(min(2.0 + 0.55 * n, 16), n * pitch + margin), CONFUSION_MAX_INCHES)
    step = max(1, math.ceil(n * pitch / (size - margin)))
    fig = new_figure(figsize=(size, size))
    ax = fig.subplots()
    ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    ticks = range(0, n, step)
    # parse_math=False: class names are text; matplotlib would read "$100 to $200" as maths
    # and fail.
    ax.set_xticks(ticks, [labels[i] for i in ticks], rotation=45, ha="right",
                  rotation_mode="anchor", parse_math=False, fontsize=font)  # fmt: skip
    ax.set_yticks(ticks, [labels[i] for i in ticks], parse_math=False, fontsize=font)
    ax.set_xlabel("predicted" + (f" (one class in {step} named)" if step > 1 else ""))
    ax.set_ylabel("true")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    fig.tight_layout()
    return fig


@quiet_glyphs
def plot_confusion(confusion: Any, class_names: list[str], path: Path) -> Path:
    """Row-normalised confusion matrix (rows: true class) with the counts written in (up to
    30 classes); long class names shortened (`short_labels`)."""
    return save_figure(confusion_figure(confusion, class_names), path)


def per_class_table(acc: ClassificationAccumulator, class_names: list[str]) -> list[str]:
    """Lines of a per-class precision / recall / support table, and a last line with the
    balanced accuracy and macro F1 (`ClassificationAccumulator.balanced`)."""
    class_names = [shown(c) for c in class_names]  # the table's, escaped: per_class.csv's are not
    pc = acc.per_class()
    support = acc.confusion.sum(1).tolist()
    width = max(8, *(len(c) for c in class_names))
    lines = [f"{'class':<{width}}  precision  recall  support"]
    for name, p, r, s in zip(class_names, pc["precision"], pc["recall"], support, strict=True):
        # A class with no image here has no recall: a 0.000 would read as a class never found.
        # ... nor precision when it was not predicted either.
        lines.append(f"{name:<{width}}  {'        -' if p is None else f'{p:9.3f}'}  "
                     f"{'     -' if r is None else f'{r:6.3f}'}  {s:7d}")
    unseen = [name for name, s in zip(class_names, support, strict=True) if not s]
    if unseen:
        lines.append(f"(no image of {', '.join(unseen)} among these: not measured)")
    if any(support):
        bal = acc.balanced()
        lines.append(f"balanced accuracy {bal['balanced_acc']:.3f} (the mean recall), macro F1 "
                     f"{bal['macro_f1']:.3f}")
    return lines


def write_per_class_csv(acc: ClassificationAccumulator, class_names: list[str],
                        path: Path) -> Path:
    """per_class.csv: class, precision, recall, support (the table above, for machines); a class
    name that a spreadsheet would take for a formula gets a leading "'" (`spreadsheet_text`)."""
    import csv
    import io

    pc = acc.per_class()
    support = acc.confusion.sum(1).tolist()
    text = io.StringIO()
    # Quotes a class named "red, large", and (with CRLF, RFC 4180's line end and Excel's)
    # one named with a '\r' too: under "\n" the csv module left '\r' unquoted, and a
    # reader split that class's row in two.
    writer = csv.writer(text, lineterminator="\r\n")
    writer.writerow(["class", "precision", "recall", "support"])
    writer.writerows([spreadsheet_text(n), "" if p is None else f"{p:.4f}",
                      "" if r is None else f"{r:.4f}", s]
                     for n, p, r, s in zip(class_names, pc["precision"], pc["recall"], support,
                                           strict=True))  # fmt: skip
    # UTF-8, not the locale's encoding: a Latin-1 or ASCII locale (PYTHONUTF8=0) cannot write
    # every class name, and the run ended in a traceback after its checkpoints.
    write_text_atomic(path, text.getvalue())
    return path


def write_report(out_dir: Path, history: list[dict[str, Any]],
                 acc: Any, task: Task) -> tuple[list[str], list[str]]:
    """Write curves.png (+ confusion.png and per_class.csv for classification); return what to
    print: the files written (notes), and the per-class table (a result)."""
    out_dir = Path(out_dir)
    said = [f"learning curves: {plot_curves(history, out_dir / 'curves.png')}"]
    table: list[str] = []
    if isinstance(acc, ClassificationAccumulator):
        names = getattr(task, "class_names", None) or [str(i) for i in range(acc.num_classes)]
        said.append(f"confusion matrix: {plot_confusion(acc.confusion, names, out_dir / 'confusion.png')}")
        write_per_class_csv(acc, names, out_dir / "per_class.csv")
        table = per_class_table(acc, names)
    return said, table
