"""Comparing training runs: what each net cost and scored, and what else differed between them.

A comparison of two nets says something about the nets only when everything else was the same:
the data and the validation images, the input size, the epochs and the training recipe. cnnzoo
picks some of these per model (the input size: LeNet-5 trains at 32 px, ResNet-20 at 28 on the
same images), so the table comes with the list of what differs besides the model. Everything is
read from the runs' checkpoints (`meta`, `config`, `history`); nothing is trained or evaluated.
"""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CnnzooError, UsageError, WeightsError
from ..paths import BUNDLE_JSON, bundle_in, transfer_bundle
from ..text import plural
from .checkpoint import load_checkpoint

# Per task: the validation metric the table and the plot rank by (acc, or Dice for U-Nets).
TASK_METRIC = {"classification": "acc", "segmentation": "dice"}
# Training settings that should agree for a like-for-like comparison, in the order they are
# reported, with their words; read from the checkpoint's config, else its meta.
RECIPE = (
    ("init_from", "initialised from"), ("epochs", "epochs"),
    # Both decide which epoch's weights a run ends with, so its final score.
    ("patience", "early stopping patience"), ("restore_best", "best epoch's weights restored"),
    ("augment", "augmentation"),
    ("erase", "random erasing"), ("progressive", "progressive resizing"),
    ("elastic", "elastic deformation"), ("jitter", "jitter"),
    ("label_smoothing", "label smoothing"), ("class_weight", "class weights"), ("loss", "loss"),
    ("w0", "border weight w0"), ("sigma", "border weight sigma"), ("batch_size", "batch size"), ("optimizer", "optimizer"),
    ("lr", "learning rate"), ("momentum", "momentum"), ("nesterov", "Nesterov"),
    ("weight_decay", "weight decay"), ("schedule", "schedule"),
    ("warmup_epochs", "warm-up epochs"), ("grad_clip", "gradient clipping"), ("mixup", "mixup"),
    ("cutmix", "CutMix"), ("sam", "SAM radius"), ("freeze_bn", "frozen BatchNorm"), ("precision", "precision"),
    ("seed", "seed"),
)  # fmt: skip
# What a setting a checkpoint does not record was (older runs did not record every one); how
# an unset one reads.
ABSENT = {"erase": 0.0, "progressive": None, "init_from": None, "grad_clip": None,
          "class_weight": "none", "sam": 0.0}
UNSET = {"init_from": "scratch", "progressive": "off", "grad_clip": "off", "patience": "off",
         "cpu": "not recorded", "threads": "not recorded"}
# Where a run's seconds were measured (its checkpoint's `machine`): they change the table's
# train s and img/s, not what the nets learn, and are named after the recipe.
TIMING = (("cpu", "CPU (train s, img/s)"), ("threads", "threads (train s, img/s)"))


@dataclass(frozen=True)
class RunSummary:
    """One run as the comparison sees it. `metric` is 'acc' or 'dice'; `final` and `best` are
    its validation values: of the weights the run ended with (those of `final_epoch`: the last
    epoch, or the one early stopping restored), and the best over the epochs (at
    `best_epoch`); `settings` what should be equal between runs compared."""

    label: str
    path: Path
    task: str
    model: str
    model_kwargs: dict[str, Any]
    params: int
    macs: int | None  # multiply-adds of one image at the run's input size
    input: str  # channels x size, e.g. "1x28"
    epochs: int  # epochs done
    planned: int  # epochs the run was to train (more than done: interrupted or stopped early)
    train_seconds: float
    images_per_s: float | None  # median over the epochs: the run's speed on its machine
    train_loss: float | None
    metric: str
    train_metric: float | None
    final: float | None
    final_epoch: int
    best: float | None
    best_epoch: int | None
    # Weights without the optimizer's state (a best.pt): a snapshot of epoch `epochs`, which
    # need not be the last the run trained, not a run cut short.
    weights_only: bool
    settings: dict[str, Any] = field(repr=False)
    history: list[dict[str, Any]] = field(repr=False)
    num_classes: int = 0  # (for the label-smoothing floor of its training loss)

    @property
    def name(self) -> str:
        """The model with its options: 'resnet20 shortcut=none'."""
        return self.name_with()

    def name_with(self, keep: Collection[str] = ()) -> str:
        """`name`, with the options in `keep` named even at their defaults (a run given no
        value for one was built with its default)."""
        from ..models.registry import option_defaults

        defaults = option_defaults(self.model)
        kwargs = {**{k: defaults.get(k) for k in keep}, **self.model_kwargs}
        opts = " ".join(f"{k}={v}" for k, v in sorted(kwargs.items())
                        if k in keep or defaults.get(k, ...) != v)  # act=relu is resnet20 itself
        return f"{self.model} {opts}".strip()

    @property
    def aux_loss(self) -> bool:
        """Whether the run's training loss adds auxiliary classifiers' losses (GoogLeNet with
        its aux heads): it then reads higher than another net's and its own validation loss."""
        from ..models.registry import option_defaults

        return bool(self.model_kwargs.get("aux_logits",
                                          option_defaults(self.model).get("aux_logits", False)))

    def to_dict(self) -> dict[str, Any]:
        keys = ("label", "task", "model", "model_kwargs", "params", "macs", "input", "epochs",
                "planned", "train_seconds", "images_per_s", "train_loss", "metric", "train_metric",
                "final", "final_epoch", "best", "best_epoch", "weights_only",
                "settings")  # fmt: skip
        return {"path": str(self.path), **{k: getattr(self, k) for k in keys}}


def table_names(runs: list[RunSummary]) -> list[str]:
    """Each run's net for the table's model column: its `name`, and an option that runs of one
    model were built with differently named in each of them, at its default too. A student's
    `--model-arg dropout=0` against `dropout=0.5` (VGG's default) read 'vgg11_bn dropout=0.0'
    beside a bare 'vgg11_bn', which does not say that the second run dropped half its units."""
    from ..models.registry import option_defaults

    keep: dict[str, set[str]] = {}
    for model in {r.model for r in runs}:
        defaults, same = option_defaults(model), [r for r in runs if r.model == model]
        keep[model] = {k for k in {k for r in same for k in r.model_kwargs}
                       if len({repr(r.model_kwargs.get(k, defaults.get(k))) for r in same}) > 1}
    return [r.name_with(keep[r.model]) for r in runs]


def run_checkpoint(path: str | os.PathLike[str]) -> Path:
    """The checkpoint of a run: the file given, or a run folder's last.pt (its whole history),
    else its best.pt."""
    p = Path(path)
    bundle = bundle_in(p)
    if bundle is not None:
        raise UsageError(f"{p} is a transfer run: its validation metrics are in "
                         f"{bundle / BUNDLE_JSON}; compare compares `cnnzoo train` runs")
    if p.is_dir():
        for name in ("last.pt", "best.pt"):
            if (p / name).is_file():
                return p / name
        raise UsageError(f"{p} holds no run (no last.pt or best.pt): give the --out folder of "
                         "a `cnnzoo train` run")  # fmt: skip
    if not p.exists():
        raise UsageError(f"{p}: no such run folder or checkpoint")
    return p


def _labels(paths: list[Path]) -> list[str]:
    """Each run's folder name (with '/best.pt' for a run's best.pt), or more of its path where
    two runs would share a label (runs/a/x and runs/b/x: a/x and b/x)."""
    folders = [p.parent.resolve() for p in paths]
    ends = ["" if p.name == "last.pt" else f"/{p.name}" for p in paths]
    for depth in range(1, max(len(f.parts) for f in folders) + 1):
        labels = ["/".join(f.parts[1:][-depth:]) + end for f, end in zip(folders, ends, strict=True)]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]


def _none_left(left_out: list[str]) -> UsageError:
    """The error when every path given was skipped: the first one's reason in the line
    itself, as `compare --json`'s document holds that line alone ("see the lines above"
    pointed at stderr)."""
    more = f" (and {len(left_out) - 1} more, on stderr)" if len(left_out) > 1 else ""
    return UsageError(f"none of these is a run of `cnnzoo train`: {left_out[0]}{more}")


def summarize_runs(paths: list[str | os.PathLike[str]],
                   skip: Callable[[str], None] | None = None) -> list[RunSummary]:  # fmt: skip
    """Read each run (a run folder or a checkpoint of `cnnzoo train`); all must be of one task.
    skip: given, a path that holds no run (an empty or failed run's folder, a log file in
    runs/*) is reported to it in one line and left out, instead of stopping the comparison.
    A path that does not exist is a `UsageError` either way: a glob such as runs/* names only
    what is there, so a missing one was typed (`runs/typo` was skipped, and the comparison of
    the others ended with exit status 0)."""
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise UsageError(f"{', '.join(missing)}: no such run folder or checkpoint")
    files, read, given = [], [], []
    left_out: list[str] = []  # the skipped paths' lines, for the error when none is left

    def skipped(line: str) -> None:
        left_out.append(line)
        if skip is not None:
            skip(line)

    for p in paths:
        try:
            f = run_checkpoint(p)
            read.append((f, load_checkpoint(f, mmap=True)))
            files.append(f)
            given.append(p)
        except (UsageError, WeightsError) as exc:
            if skip is None:
                raise
            skipped(f"skipped {p}: {exc}")
    if not files:
        raise _none_left(left_out)
    seen: dict[Path, Any] = {}
    for f, p in zip(files, given, strict=True):
        if f.resolve() in seen:
            raise UsageError(f"{seen[f.resolve()]} and {p} name one run: give each run once")
        seen[f.resolve()] = p
    runs = []
    for (f, ckpt), label in zip(read, _labels(files), strict=True):
        try:
            try:
                runs.append(_summary(f, label, ckpt))
            except CnnzooError:
                raise
            except (AttributeError, KeyError, TypeError, ValueError) as exc:  # a hand-made file
                raise UsageError(f"{f} is not laid out as `cnnzoo train` writes checkpoints "
                                 f"({type(exc).__name__}: {exc})") from None
        except CnnzooError as exc:  # also a net cnnzoo no longer builds (dropout=True)
            if skip is None:
                raise
            skipped(f"skipped {f}: {exc}")
    if not runs:
        raise _none_left(left_out)
    tasks: dict[str, list[str]] = {}
    for r in runs:
        tasks.setdefault(r.task, []).append(r.label)
    if len(tasks) > 1 and skip is not None:  # runs/* holding both: the more common ones
        keep = max(tasks, key=lambda t: len(tasks[t]))
        for r in runs:
            if r.task != keep:
                skip(f"skipped {r.label}: a {r.task} run among {keep} runs")
        return [r for r in runs if r.task == keep]
    if len(tasks) > 1:
        which = "; ".join(f"{t}: {', '.join(labels)}" for t, labels in tasks.items())
        raise UsageError(f"these runs are of different tasks ({which}): compare classifiers "
                         "with classifiers and U-Nets with U-Nets")  # fmt: skip
    return runs


def _summary(path: Path, label: str, ckpt: dict[str, Any]) -> RunSummary:
    from ..models.flops import counts_at
    from ..models.registry import canonical_options

    meta, config = ckpt.get("meta") or {}, ckpt.get("config") or {}
    if meta.get("transfer"):
        raise UsageError(f"{path} is a transfer fine-tuning checkpoint: its validation metrics "
                         f"are in {transfer_bundle(path) / BUNDLE_JSON}; compare compares "
                         "`cnnzoo train` runs")  # fmt: skip
    task = str(ckpt.get("task") or meta.get("task") or "classification")
    history = list(ckpt.get("history") or [])
    if not {"model", "img_size", "in_chans", "num_classes"} <= set(meta):
        # (the engine used as a library writes what its caller's meta holds)
        raise UsageError(f"{path} does not record its model and input, as `cnnzoo train` "
                         "runs do: nothing to compare it by")  # fmt: skip
    if not history:
        raise UsageError(f"{path} records no finished epoch: nothing to compare yet")
    # As the net takes them: runs from before canonical_options recorded paper_5x5=1 as given.
    name = meta["model"]
    kwargs = canonical_options(name, dict(meta.get("model_kwargs") or {}))
    size, chans = int(meta["img_size"]), int(meta["in_chans"])
    # Shapes only ('meta' device); '-' in the table for a size the net does not take alone.
    params, macs = counts_at(name, chans, size, num_classes=int(meta["num_classes"]), **kwargs)
    metric = TASK_METRIC.get(task, "acc")
    vals = [(r.get(f"val_{metric}"), r["epoch"]) for r in history]
    scored = [(v, e) for v, e in vals if v is not None]
    best, best_epoch = max(scored, key=lambda ve: ve[0]) if scored else (None, None)
    last = history[-1]
    kept = _kept_epoch(ckpt, config, history)
    speeds = [r["images_per_s"] for r in history if r.get("images_per_s")]
    from .run import trained_data

    # Where the data is now: two runs of one project, one trained before the project folder
    # moved, read the same data (their recorded absolute paths differ).
    source = trained_data(meta, path.parent) if "dataset" in meta else None
    data = f"{source}"
    if meta.get("images"):
        data += f" ({_counts(meta['images'], meta.get('tiles') or {})})"
    # The validation images: the same folder split the same way (its digest when drawn from a
    # folder), or the same built-in split; a val/ part or Fashion-MNIST's test set whatever the
    # seed (runs before `val_drawn` was recorded: the seed and fraction, as if drawn).
    val = meta.get("val_files") or (
        source if meta.get("val_drawn") is False else
        (source, meta.get("val_fraction"), meta.get("seed")))
    settings: dict[str, Any] = {"data": data, "validation images": val,
                                "input": f"{chans}x{size}"}  # fmt: skip
    for key, _ in RECIPE:
        value = config.get(key, meta.get(key, ABSENT.get(key, "absent")))
        if value == "absent":  # (a classifier has no elastic deformation, a U-Net no erasing)
            continue
        settings[key] = tuple(value) if isinstance(value, list) else value
    settings["restore_best"] = _restores(config)  # as the run decided it (None: by patience)
    # Settings the run had no use for: AdamW has no momentum, one-cycle its own warm-up.
    if settings.get("optimizer") == "adamw":
        settings.pop("momentum", None)
        settings.pop("nesterov", None)
    if settings.get("schedule") == "onecycle":
        settings.pop("warmup_epochs", None)
    if isinstance(ckpt.get("precision"), dict):  # what the run used (auto picks per model)
        settings["precision"] = str(ckpt["precision"].get("dtype"))
    machine = ckpt.get("machine") or {}  # (runs before cnnzoo recorded it: None, 'not recorded')
    settings["cpu"] = machine.get("cpu")
    # Numbers, as --json gives every other count (threads was the table's words, "1" or "2
    # processes x 1 thread"); `_show` words them for the table. None: not recorded.
    recorded = bool(machine.get("threads"))
    settings["threads"] = int(machine["threads"]) if recorded else None
    settings["processes"] = int(machine.get("processes") or 1) if recorded else None
    return RunSummary(
        label=label, path=path, task=task, model=name, model_kwargs=kwargs, params=params,
        macs=macs, input=f"{chans}x{size}", epochs=int(last["epoch"]),
        planned=int(config.get("epochs") or last["epoch"]),
        train_seconds=float(sum(r.get("seconds", 0.0) for r in history)),
        images_per_s=statistics.median(speeds) if speeds else None,
        train_loss=last.get("train_loss"), metric=metric,
        train_metric=last.get(f"train_{metric}"), final=kept.get(f"val_{metric}"),
        final_epoch=int(kept["epoch"]), best=best,
        best_epoch=best_epoch, weights_only="optimizer" not in ckpt, settings=settings,
        history=history, num_classes=int(meta["num_classes"]))  # fmt: skip


def _counts(images: dict[str, int], tiles: dict[str, int]) -> str:
    """'242 training, 60 validation', or of a U-Net's images of mixed sizes, cut into tiles,
    '5 training images in 11 tiles, 2 validation images in 3 tiles' (the tiles were said to be
    the images: 11 training, 3 validation)."""
    parts = []
    for part, word in (("train", "training"), ("val", "validation")):
        n, t = images.get(part), tiles.get(part, images.get(part))
        parts.append(f"{n} {word}" if t == n else
                     f"{plural(n or 0, f'{word} image')} in {plural(t or 0, 'tile')}")
    if "test" in images:  # (--val-fraction drew validation beside a test/ part)
        parts.append(f"{images['test']} test held out")
    return ", ".join(parts)


def _kept_epoch(ckpt: dict[str, Any], config: dict[str, Any],
                history: list[dict[str, Any]]) -> dict[str, Any]:
    """The record of the epoch whose weights the run ended with: with early stopping on (and
    its restoring not turned off) or restore_best, a finished run -- all its epochs, or stopped
    early -- gives back the weights of its best epoch by the monitored metric (the validation
    loss for classifiers), whatever the last epoch scored. An unfinished run holds its last
    epoch's."""
    last = history[-1]
    patience, best_epoch = config.get("patience"), ckpt.get("best_epoch")
    if not _restores(config) or not best_epoch:
        return last
    finished = (int(last["epoch"]) >= int(config.get("epochs") or last["epoch"])
                or patience is not None and int(ckpt.get("bad_epochs") or 0) >= int(patience))
    kept = [r for r in history if r["epoch"] == best_epoch]
    return kept[0] if finished and kept else last


def _restores(config: dict[str, Any]) -> bool:
    """Whether a run gives back its best epoch's weights at the end, as the Trainer decides it:
    restore_best as set, else whenever early stopping (patience) is on."""
    restores = config.get("restore_best")
    return bool(config.get("patience") is not None if restores is None else restores)


def aux_loss_note(runs: list[RunSummary]) -> str | None:
    """The note on runs whose training loss adds auxiliary heads' losses (GoogLeNet's), for
    the table and under the plot's training-loss panel alike; None without such runs. (The docs
    said so; the table and the plot did not, and 3.9 against 2.0 read as a worse fit.)"""
    from ..models.googlenet import AUX_WEIGHT
    from ..text import shown

    aux = [shown(r.label) for r in runs if r.aux_loss]
    if not aux:
        return None
    return (f"train loss of {', '.join(aux)}: the main head's plus {AUX_WEIGHT:g} times each "
            "auxiliary classifier's (GoogLeNet's training loss), higher than the main head's "
            "loss alone; compare accuracies")


def smoothed_entropy(smoothing: float, num_classes: int) -> float:
    """The entropy of label-smoothed targets (1 - e + e/K for the true class, e/K for each of
    the K - 1 others): the least a cross-entropy against them can be."""
    k, e = num_classes, smoothing
    probs = [1 - e + e / k] + [e / k] * (k - 1)
    return -sum(p * math.log(p) for p in probs if p > 0)


def smoothing_note(runs: list[RunSummary]) -> str | None:
    """The note on runs trained with label smoothing: their training loss has a floor above 0,
    each run's own (0.50 for 0.1 over 10 classes, 0.39 over 5, 0.78 over 100: a fixed 0.50
    was wrong for most folders); None when no run smooths."""
    from ..text import shown

    floors: dict[tuple[str, str], list[str]] = {}  # (0.1 over 10 classes, 0.50): its runs
    for r in runs:
        e = float(r.settings.get("label_smoothing") or 0)
        if e > 0 and r.num_classes > 1:
            floor = (f"{e:g} over {r.num_classes} classes",
                     f"{smoothed_entropy(e, r.num_classes):.2f}")
            floors.setdefault(floor, []).append(shown(r.label))
    if not floors:
        return None
    if len(floors) == 1:  # one floor: the runs are those the table shows smoothed
        which = "{}: {}".format(*next(iter(floors)))
    else:
        which = "; ".join(f"{', '.join(labels)}: {words}, {value}"
                          for (words, value), labels in floors.items())
    return ("train loss: against targets with the run's label smoothing, which it cannot go "
            f"below ({which})")


def differences(runs: list[RunSummary]) -> list[str]:
    """What differs between the runs besides the model, one line per setting: 'input: 1x28
    (resnet20, resnet56), 1x32 (lenet5)'. [] for a like-for-like comparison."""
    words = {"data": "data", "validation images": "validation images", "input": "input",
             **dict(RECIPE), **dict(TIMING)}  # fmt: skip
    lines = []
    for key, word in words.items():
        groups: dict[str, list[str]] = {}
        shown: dict[str, str] = {}
        for r in runs:
            value = r.settings.get(key)
            if key == "threads" and value is not None:  # one line: 2 processes x 1 thread
                value = (r.settings.get("processes") or 1, value)
            groups.setdefault(repr(value), []).append(r.label)
            shown[repr(value)] = _show(key, value)
        if len(groups) < 2:
            continue
        if key == "validation images":  # a digest or a split: its value tells a reader nothing
            data = {r.label: repr(r.settings.get("data")) for r in runs}
            val = {r.label: repr(r.settings.get(key)) for r in runs}
            # Other data have other validation images: the data line says so. Said here only
            # when runs on the same data validated on different images.
            if any(data[a] == data[b] and val[a] != val[b] for a in data for b in data):
                runs_by = "; ".join(", ".join(g) for g in groups.values())
                lines.append(f"{word}: not the same ({runs_by})")
        else:
            lines.append(f"{word}: " + ", ".join(f"{shown[k]} ({', '.join(g)})"
                                                 for k, g in groups.items()))  # fmt: skip
    return lines


def _show(key: str, value: Any) -> str:
    if value is None:
        return UNSET.get(key, "-")
    if key == "progressive":
        return f"{value[0]} px for {plural(value[1], 'epoch')}"
    if key == "threads":  # (processes, threads per process)
        procs, threads = value
        return str(threads) if procs == 1 else f"{procs} processes x {plural(threads, 'thread')}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
