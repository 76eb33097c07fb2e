"""The training loop: one loop for every task (classification, transfer learning, segmentation).

A task (`engine/task.py`) says what the loss and the metrics are; `TrainConfig` says how to
optimise; the caller's parameter groups say which parameters train at which learning rate
(frozen parameters have `requires_grad=False`). The loop adds what every run needs: bf16 /
channels_last where measured faster (`engine/precision.py`), a progress bar, per-epoch metrics
(JSONL + TensorBoard), atomic checkpoints every epoch, bit-identical `resume`, a clean stop on a
NaN/inf loss, early stopping that restores the best weights, DDP under torchrun, and a report.

The hot path does no per-step `.item()` and no per-step Python beyond the optimizer step: metrics
accumulate as tensors and the loss is checked for NaN/inf only every `log_every` steps (the steps
in between are thrown away with the run, the last good checkpoint is from the previous epoch).
"""

from __future__ import annotations

import contextlib
import math
import numbers
import statistics
import sys
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import (
    ArgumentKindError,
    DamagedCheckpointError,
    DataError,
    NewerFormatError,
    TrainingError,
    UsageError,
    WeightsError,
)
from ..models.base import count_parameters, is_integral
from ..paths import (
    check_folder,
    folders_released,
    from_run,
    hold_folder,
    remove_entries,
    run_data,
    same_source,
)
from ..text import duration, plural
from ..weights.files import CHECKPOINT_FORMAT
from .checkpoint import (
    atomic_save,
    caller_rng_kept,
    check_optimizer_state,
    check_run_state,
    load_checkpoint,
    rng_state,
    set_rng_state,
)
from .distributed import (
    DistContext,
    all_reduce_sum,
    broadcast_flag,
    broadcast_object,
    library_threads,
    sync_buffers,
    unwrap_model,
    wrap_model,
)
from .logs import MetricsLog
from .mixing import BatchMixer
from .optim import ParamGroup, StepSchedule, build_optimizer
from .precision import Precision, choose_precision, cpu_features
from .task import MetricAccumulator, Task, is_better


def _config_problem(cfg: TrainConfig) -> str | None:
    """What is wrong with `cfg`'s values, in a phrase, or None: what the command line's parser
    refuses (`cnnzoo train --help` gives the same ranges)."""
    choices = {"optimizer": ("sgd", "adamw"), "schedule": ("onecycle", "cosine", "constant"),
               "precision": ("auto", "bf16", "fp32"), "channels_last": ("auto", "on", "off")}
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            return f"{name} must be one of {', '.join(allowed)}, not {getattr(cfg, name)!r}"
    if cfg.tta not in (False, None, True, *TTA_MODES):
        return f"tta must be one of {', '.join(TTA_MODES)} (True: flip; False: off), not {cfg.tta!r}"
    if not is_integral(cfg.epochs, 0):
        return f"epochs must be a whole number >= 0, not {cfg.epochs!r}"
    if not is_integral(cfg.log_every, 1):
        return f"log_every must be a whole number of steps >= 1, not {cfg.log_every!r}"
    if cfg.patience is not None and not is_integral(cfg.patience, 0):
        return f"patience must be a number of epochs >= 1 (0 or None: off), not {cfg.patience!r}"

    def number(value: object, finite: bool = True) -> bool:
        return (isinstance(value, numbers.Real) and not isinstance(value, bool)
                and value >= 0 and (math.isfinite(value) or not finite))  # fmt: skip

    # lr=inf is left to the run (a loss that becomes inf is a TrainingError at its step, which
    # the tests use to make a run diverge); a negative or NaN rate is never meant.
    if not number(cfg.lr, finite=False):
        return f"lr must be a number >= 0, not {cfg.lr!r}"
    for name in ("weight_decay", "warmup_epochs", "mixup", "cutmix"):
        if not number(getattr(cfg, name)):
            return f"{name} must be a number >= 0, not {getattr(cfg, name)!r}"
    if not number(cfg.sam):
        return f"sam is a radius >= 0 (0: off), not {cfg.sam!r}"
    if not (number(cfg.momentum) and cfg.momentum < 1):
        return f"momentum must lie in [0, 1), not {cfg.momentum!r}"
    if cfg.grad_clip is not None and not (number(cfg.grad_clip) and cfg.grad_clip > 0):
        return f"grad_clip must be a gradient norm > 0 (None: off), not {cfg.grad_clip!r}"
    # The switches: freeze_bn='False' (a string from a config file) froze every BatchNorm, and
    # nesterov='no' kept Nesterov's momentum, as any non-empty string is true.
    for name in ("nesterov", "freeze_bn", "restore_best", "progress", "verbose", "tensorboard",
                 "report"):
        value = getattr(cfg, name)
        if not (isinstance(value, bool | np.bool_) or value is None and name == "restore_best"):
            return f"{name} must be True or False, not {value!r}"
    return None


@dataclass
class TrainConfig:
    """How to optimise. Defaults are the recipe that trains the small zoo nets well on a CPU:
    SGD with Nesterov momentum, one-cycle schedule, weight decay 5e-4 (not on norms/biases)."""

    epochs: int = 10
    optimizer: str = "sgd"  # 'sgd' | 'adamw'
    lr: float = 0.1  # peak learning rate (per-group lrs in param_groups override it)
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "onecycle"  # 'onecycle' | 'cosine' | 'constant'
    warmup_epochs: float = 0.0  # linear warm-up for 'cosine' / 'constant'
    pct_start: float = 0.25  # rising fraction of 'onecycle'
    grad_clip: float | None = None  # max global gradient norm
    precision: str = "auto"  # 'auto' | 'bf16' | 'fp32'
    channels_last: str = "auto"  # 'auto' | 'on' | 'off'
    # Freeze every BatchNorm layer as it is: running statistics are neither used from the batch
    # nor updated (eval mode), and the affine weight/bias are left out of the optimizer -- unless
    # a caller's param_groups list them explicitly (then they train, with frozen statistics).
    freeze_bn: bool = False
    # Early stopping on the monitored validation metric after `patience` epochs without
    # improvement; None or 0: off (0 would otherwise stop after the first epoch).
    patience: int | None = None
    restore_best: bool | None = None  # default: True when early stopping is on
    seed: int = 0
    log_every: int = 20  # steps between progress-bar updates and NaN checks
    progress: bool = True  # tqdm bars (the per-epoch lines are printed regardless)
    verbose: bool = True  # per-epoch lines, resume / early-stop / precision notes on stderr
    tensorboard: bool = True
    report: bool = True  # learning curves / confusion matrix PNGs at the end
    # Also evaluate the final model with test-time augmentation (`tta_views`): `FitResult.final_tta`.
    # 'flip' (or True): each validation image and its mirror image; 'flip-shift': those and the
    # four one-pixel diagonal shifts of both. Only for data whose training augmentation flips
    # and crops; per-epoch validation and best-epoch selection stay plain.
    tta: bool | str = False
    # Batch mixing for classification (engine/mixing.py): the Beta alpha of mixup and of CutMix,
    # 0 for off; with both on, each batch uses one of them.
    mixup: float = 0.0
    cutmix: float = 0.0
    # Sharpness-aware minimisation (Foret et al., ICLR 2021): the radius rho, 0 for off. Each
    # step takes the gradient at w + rho * g / ||g|| (g: the batch's gradient at w, the norm
    # over every trained parameter) and steps the optimizer from w with it: two forward and
    # backward passes per step. Measured in transfer's fine-tuning, docs/transfer.md.
    sam: float = 0.0

    def __post_init__(self) -> None:
        # Checked here, when a notebook builds the config, not steps into fit(): an unknown
        # optimizer was a plain ValueError after the data and precision trial, log_every=0 a
        # ZeroDivisionError, epochs=-1 a run that trained nothing without a word. The command
        # line's parser refuses these before they get here.
        problem = _config_problem(self)
        if problem:
            raise UsageError(f"TrainConfig: {problem}")
        if self.patience == 0:
            self.patience = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class FitResult:
    """What `Trainer.fit` returns. history: one record per epoch ({'epoch', 'lr', 'train_loss',
    'val_loss', 'val_acc', ..., 'seconds', 'images_per_s'}: plain numbers, for
    `pandas.DataFrame(result.history)`); best_epoch and best_value: the epoch of the best
    `monitor` value (e.g. 'val_loss'); precision: how it ran (bf16 / fp32, memory format);
    stopped_early: early stopping ended it; final: the validation metrics of the weights the
    model holds at the end (the best epoch's when they were restored; a classifier's with
    'balanced_acc' and 'macro_f1', as `train --json` gives them); out_dir: its
    checkpoints and report; accumulator: the final validation pass's (a confusion matrix for
    classification; the last epoch's own pass when the model ends with the weights it scored);
    final_tta: `final` with test-time augmentation (`TrainConfig.tta`), tta_accumulator its pass's;
    skipped: the files of the data left out as unreadable (`train_classifier`, a U-Net's
    `train`; 0 from `fit` alone)."""

    # Out of the repr, as TransferResult's: a notebook cell ending in `result` printed every
    # epoch's record (20 numbers each for a segmentation run); `pd.DataFrame(result.history)`.
    history: list[dict[str, Any]] = field(repr=False)
    best_epoch: int
    best_value: float | None
    monitor: str
    precision: Precision
    stopped_early: bool = False
    final: dict[str, float] = field(default_factory=dict)  # validation metrics of the final model
    out_dir: Path | None = None
    accumulator: MetricAccumulator | None = None  # of the final validation pass
    final_tta: dict[str, float] = field(default_factory=dict)  # the same with config.tta
    tta_accumulator: MetricAccumulator | None = None
    skipped: int = 0  # set by the run that loads the data (`Splits.skipped_count`)


def final_metrics(acc: MetricAccumulator) -> dict[str, float]:
    """A final validation pass's metrics: a classifier's `summary()` (balanced accuracy and
    macro F1 too, which `train --json` and `evaluate --json` give: `FitResult.final` lacked
    them), another task's `compute()`."""
    summary = getattr(acc, "summary", None)
    return summary() if callable(summary) else acc.compute()


def batchnorm_params(model: nn.Module) -> list[nn.Parameter]:
    """The affine weights and biases of every BatchNorm layer of `model`."""
    return [p for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for p in m.parameters(recurse=False)]


def set_train_mode(model: nn.Module, freeze_bn: bool) -> None:
    """`model.train()`, but with BatchNorm in eval mode when `freeze_bn` (the fine-tuning trap:
    a frozen backbone must keep its moving statistics, keras #9214)."""
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def _check_kinds(model: Any, task: Any, train_loader: Any, val_loader: Any,
                 config: Any) -> None:
    """Trainer's arguments of the wrong kind, one line each: a task given by its name
    (Keras's compile(loss=...) habit), a config as a dict, or a TrainConfig in the place of
    the validation loader (Trainer(model, task, train, cfg)) were "'str' object has no
    attribute 'name'" in __init__, or "'TrainConfig' object is not iterable" after the first
    epoch had trained."""
    if not isinstance(model, nn.Module):
        raise ArgumentKindError(f"model must be a torch nn.Module such as cnnzoo.create_model("
                                f"'lenet5', num_classes=10), not {_kind(model)}")
    if not all(hasattr(task, a) for a in ("name", "loss", "metrics")):
        raise ArgumentKindError(f"task must be a task object, ClassificationTask(num_classes) "
                                f"or SegmentationTask(num_classes), not {_kind(task)}")
    if isinstance(val_loader, TrainConfig):
        raise ArgumentKindError("a TrainConfig was given as the validation loader: pass it "
                                "as config=..., Trainer(model, task, train_loader, config=cfg) "
                                "(the validation loader, if any, comes before it)")
    for name, loader in (("train_loader", train_loader), ("val_loader", val_loader)):
        if (loader is not None or name == "train_loader") and not hasattr(loader, "__iter__"):
            raise ArgumentKindError(f"{name} must be a BatchLoader (or any iterable of "
                                    f"(inputs, targets) batches), not {_kind(loader)}")
    if config is not None and not isinstance(config, TrainConfig):
        how = ": TrainConfig(**config)" if isinstance(config, dict) else ""
        raise ArgumentKindError(f"config must be a TrainConfig, not {_kind(config)}{how}")


def _kind(value: Any) -> str:
    """"the str 'classification'", 'a dict', 'None': what was given, for a one-line error."""
    if value is None:
        return "None"
    if isinstance(value, str | int | float):
        return f"the {type(value).__name__} {value!r}"
    return f"a {type(value).__name__}"


def _check_labels(task: Task, loader: Any, name: str) -> None:
    """A classification loader's labels, once, before anything runs: a label at or above the
    task's class count was torch's "IndexError: Target 2 is out of bounds" at the first step,
    and float or one-hot labels (Keras's to_categorical) its "expected target dtype to be Long".
    Other loaders (any iterable of batches) are taken as they are."""
    k = getattr(task, "num_classes", None)
    targets = getattr(loader, "targets", None)
    if task.name != "classification" or not isinstance(k, int) or not isinstance(targets, Tensor):
        return
    if targets.is_floating_point() or targets.dim() != 1:
        raise DataError(f"{name}'s targets must be class indices (N,), not {targets.dtype} "
                        f"{tuple(targets.shape)}: one-hot labels (Keras's to_categorical) "
                        "become indices with labels.argmax(1)")  # fmt: skip
    if len(targets):
        lo, hi = int(targets.min()), int(targets.max())
        if lo < 0 or hi >= k:
            raise DataError(f"{name} holds label {lo if lo < 0 else hi}, outside the task's "
                            f"{k} classes (0..{k - 1}): build ClassificationTask and the model "
                            f"with num_classes={max(hi + 1, k)}, or check the labels")


def _batches(loader: Any) -> str:
    """'45 batches of 32' for a loader with a length, else its type (any iterable will do)."""
    if loader is None:
        return "None"
    try:
        n = len(loader)
    except TypeError:
        return type(loader).__name__
    size = getattr(loader, "batch_size", None)
    return plural(n, "batch", "batches") + (f" of {size}" if size else "")


class Trainer:
    """Train `model` on `task` with batches from `train_loader` (a `BatchLoader` or any iterable
    of (inputs, targets) with `len()` and optional `set_epoch`).

    out_dir: where last.pt / best.pt / metrics.jsonl / tb / report PNGs go (None: nothing written,
        resume impossible). param_groups: [{"params": [...], "lr": ..., "name": ...}, ...] for
        discriminative learning rates; parameters not listed train at `config.lr`.
    meta: primitives stored in every checkpoint (model name, classes, preprocessing) so that
        `cnnzoo evaluate` can rebuild the model.
    say: where the per-epoch, precision and resume lines go (default: stderr); they are said
        only with `config.verbose`, on the main process.
    show: where the run's result at the end goes, the per-class table (default: as `say`):
        `cnnzoo train` prints it on stdout with its final lines, as `cnnzoo evaluate` does.
    """

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        train_loader: Any,
        val_loader: Any = None,
        config: TrainConfig | None = None,
        *,
        out_dir: str | Path | None = None,
        param_groups: list[ParamGroup] | None = None,
        meta: dict[str, Any] | None = None,
        dist: DistContext | None = None,
        say: Callable[[str], None] | None = None,
        show: Callable[[str], None] | None = None,
    ) -> None:
        _check_kinds(model, task, train_loader, val_loader, config)
        self.model = model
        self.say = say
        self.show = show
        self.task = task
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.config = config or TrainConfig()
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.param_groups = param_groups
        self.meta = meta or {}
        self.dist = dist or DistContext()
        self.precision = Precision()
        self._replacing = False  # fit() is replacing the run out_dir holds, not yet cleared
        self._machine: dict[str, Any] = {}  # set by fit(): the CPU and threads it trains on
        self._resumed_from: Path | None = None  # the checkpoint fit() resumes from
        cfg = self.config
        self.mixer = BatchMixer(cfg.mixup, cfg.cutmix, seed=cfg.seed, rank=self.dist.rank)
        check_mixing(cfg, task.name)
        for name, loader in (("train_loader", train_loader), ("val_loader", val_loader)):
            _check_labels(task, loader, name)

    def __repr__(self) -> str:
        # A notebook line: the model by name and size, the task, the batches and only the
        # settings changed from TrainConfig's defaults (its own repr has 25 fields), not the
        # whole network that the default repr of the model attribute would print.
        model = unwrap_model(self.model)
        cfg = getattr(model, "default_cfg", None)
        name = cfg.name if cfg is not None else type(model).__name__
        changed = ", ".join(f"{f.name}={getattr(self.config, f.name)!r}"
                            for f in fields(self.config)
                            if getattr(self.config, f.name) != f.default)  # fmt: skip
        parts = [f"{name} ({count_parameters(model):,} parameters)", repr(self.task),
                 f"train={_batches(self.train_loader)}",
                 f"val={_batches(self.val_loader)}", f"TrainConfig({changed})"]
        if self.out_dir is not None:
            parts.append(f"out_dir={str(self.out_dir)!r}")
        return f"Trainer({', '.join(parts)})"

    # ----------------------------------------------------------------- files
    @property
    def _writes(self) -> bool:
        return self.out_dir is not None and self.dist.is_main

    def _say(self, msg: str, to: Callable[[str], None] | None = None) -> None:
        if self.dist.is_main and self.config.verbose:
            to = to or self.say
            if to is None:
                print(msg, file=sys.stderr, flush=True)
            else:
                to(msg)

    def _checkpoint(self, **state: Any) -> dict[str, Any]:
        meta = self.meta
        if self.out_dir is not None and (rel := from_run(meta.get("dataset"), self.out_dir)):
            meta = {**meta, "dataset_from_run": rel}  # see paths.run_data
        from .. import __version__

        return {
            "format": CHECKPOINT_FORMAT,
            "cnnzoo_version": __version__,
            "model": unwrap_model(self.model).state_dict(),
            "config": self.config.to_dict(),
            "precision": self.precision.to_dict(),
            # Where the epochs' seconds were measured (`cnnzoo compare` names a difference).
            "machine": self._machine,
            "task": self.task.name,
            "meta": meta,
            **state,
        }

    # ----------------------------------------------------------------- main
    @caller_rng_kept()
    @folders_released()
    def fit(self, *, resume: bool | str | Path = False, overwrite: bool = True) -> FitResult:
        """Train for `config.epochs` epochs (continuing from a checkpoint with `resume`).

        resume=True continues from out_dir/last.pt when it exists (and starts afresh otherwise);
        a path continues from that file. A resumed run that early stopping ended stays finished.
        overwrite: a new run into an out_dir that holds one (last.pt) replaces it -- its files
        go when this run writes its first checkpoint, so a run that fails before keeps them;
        False refuses with `TrainingError` (what `cnnzoo train` does without --overwrite).
        Raises `TrainingError` when the loss becomes NaN/inf. The model comes back in eval mode
        with contiguous parameters (training may switch it to channels_last), also when training
        fails or is interrupted.
        """
        library_threads()  # a Python caller's, within a container's CPU quota
        # A BatchLoader makes channels_last batches itself when training does (set in _fit);
        # whatever happens, the loaders go back as they came and the model ready to predict:
        # in eval mode, with contiguous parameters (safetensors refuses channels-last ones).
        flags = {id(ld): (ld, ld.channels_last) for ld in (self.train_loader, self.val_loader)
                 if isinstance(getattr(ld, "channels_last", None), bool)}  # fmt: skip
        try:
            return self._fit(resume, overwrite, [ld for ld, _ in flags.values()])
        finally:
            unwrap_model(self.model).to(memory_format=torch.contiguous_format).eval()
            for loader, flag in flags.values():
                loader.channels_last = flag

    def _fit(self, resume: bool | str | Path, overwrite: bool, loaders: list[Any]) -> FitResult:
        cfg, task = self.config, self.task
        # The timing conditions of this session (a resumed run records its last session's).
        self._machine = {"cpu": cpu_features()["model"], "threads": torch.get_num_threads(),
                         "processes": self.dist.world}
        check_out_dir(self.out_dir, resume=resume is not False and resume is not None,
                      overwrite=overwrite)
        ckpt = self._load_resume(resume)
        # A new run into a folder that holds one: the old files go with the first checkpoint.
        self._replacing = ckpt is None and self.out_dir is not None and bool(run_files(self.out_dir))
        model = unwrap_model(self.model)  # a second fit() must not wrap DDP twice
        if ckpt is not None:
            try:
                model.load_state_dict(ckpt["model"])
            except RuntimeError as exc:  # a mismatch the meta checks could not see
                first = str(exc).strip().splitlines()[0]
                raise TrainingError(
                    f"the checkpoint in {self._resume_where(resume)} does not fit this model "
                    f"({first}): resume with the model and options it was trained with, or "
                    "start a new run with another --out") from None
        else:
            torch.manual_seed(cfg.seed)
            sample = next(iter(self.train_loader))
            # Rank 0 chooses for all: timed on each process, 'auto' can differ between them.
            if self.dist.is_main:
                with one_image_batchnorm_hint():
                    self.precision = choose_precision(
                        model, task, sample, precision=cfg.precision,
                        channels_last=cfg.channels_last)
            self.precision = broadcast_object(self.precision)
        prec = self.precision
        self._say(f"precision: {prec.describe()}")
        if prec.channels_last:
            # A BatchLoader then makes channels_last batches itself; without a transform it keeps
            # multi-channel images in that layout, so no batch is permuted in the loop.
            for loader in loaders:
                loader.channels_last = True
        model.to(memory_format=prec.memory_format)
        net = wrap_model(model, self.dist)
        self.model = net

        optimizer = build_optimizer(
            model, name=cfg.optimizer, lr=cfg.lr, weight_decay=cfg.weight_decay,
            momentum=cfg.momentum, nesterov=cfg.nesterov, groups=self.param_groups,
            exclude=batchnorm_params(model) if cfg.freeze_bn else ())
        steps = len(self.train_loader)
        scheduler = StepSchedule(optimizer, cfg.epochs * steps, schedule=cfg.schedule,
                                 warmup=int(cfg.warmup_epochs * steps), pct_start=cfg.pct_start)

        monitor = f"{'val' if self.val_loader is not None else 'train'}_{task.monitor}"
        start, history, best, best_epoch, bad_epochs = 0, [], None, 0, 0
        best_state: dict[str, Tensor] | None = None
        stopped = False
        if ckpt is not None:
            try:  # here, once the weights fit: a model of other shapes is said as such above
                check_optimizer_state(ckpt["optimizer"], optimizer, self._resumed_from)
            except DamagedCheckpointError as exc:
                raise self._unresumable(exc, resume) from None
            restore_optimizer(optimizer, scheduler, ckpt)
            set_rng_state(ckpt["rng"])
            start, history = ckpt["epoch"], list(ckpt["history"])
            best, best_epoch, bad_epochs = ckpt["best"], ckpt["best_epoch"], ckpt["bad_epochs"]
            best_path = self.out_dir / "best.pt" if self.out_dir else None
            if best_path is not None and best_path.exists():
                best_state = load_checkpoint(best_path)["model"]
            # Early stopping ended the run after writing this checkpoint: it is finished, as a
            # run of all its epochs is (a larger --patience continues it, with a warning).
            stopped = cfg.patience is not None and bad_epochs >= cfg.patience
            if stopped:
                self._say(f"the run stopped early after epoch {start} of {cfg.epochs} ({monitor} "
                          f"best at epoch {best_epoch}): nothing left to train")
            elif start >= cfg.epochs:
                # Not "--epochs": transfer's head phase counts --head-epochs.
                self._say(f"the run has trained {plural(start, 'epoch')} and "
                          f"{cfg.epochs} {'is' if cfg.epochs == 1 else 'are'} asked for: "
                          "nothing left to train")
            else:
                self._say(f"resuming after epoch {start} of {cfg.epochs}")

        if self._writes:  # its first write: from here on this run alone writes there
            hold_folder(self.out_dir)
            # A run into the same folder that ended while this one started (it passed the same
            # check when the folder was empty) left its files there: refused as any would be.
            check_out_dir(self.out_dir, resume=ckpt is not None, overwrite=overwrite)
        log = MetricsLog(self.out_dir, tensorboard=cfg.tensorboard, history=history) \
            if self._writes else None
        walls: list[float] = []  # each epoch's whole time, validation and checkpoints included
        # The last epoch's validation and the epoch whose weights it scored: the final scores
        # when the run ends with those weights (a second pass over the validation set gave the
        # same numbers, at the cost of a whole validation epoch).
        scored: tuple[int, MetricAccumulator] | None = None
        try:
            for epoch in range(start, start if stopped else cfg.epochs):
                if hasattr(self.train_loader, "set_epoch"):
                    self.train_loader.set_epoch(epoch)
                self.mixer.set_epoch(epoch)
                t0 = time.perf_counter()
                with one_image_batchnorm_hint():
                    train_acc, n_images = self._train_epoch(net, optimizer, scheduler, epoch)
                seconds = time.perf_counter() - t0
                # The rate the epoch ended with: the one its last step used (first group).
                record: dict[str, Any] = {"epoch": epoch + 1, "lr": scheduler.used_lr()}
                # Progressive resizing: which epochs trained at the smaller size, in the log.
                smaller = getattr(getattr(self.train_loader, "transform", None), "smaller_size",
                                  None)  # fmt: skip
                if smaller is not None and smaller(epoch) is not None:
                    record["train_px"] = smaller(epoch)
                record.update({f"train_{k}": v for k, v in train_acc.compute().items()})
                if self.val_loader is not None:
                    val_acc = self.evaluate(self.val_loader)
                    record.update({f"val_{k}": v for k, v in val_acc.compute().items()})
                    scored = (epoch + 1, val_acc)
                record["seconds"] = round(seconds, 3)
                record["images_per_s"] = round(n_images / max(seconds, 1e-9), 1)
                history.append(record)

                if self._replacing and self._writes:
                    clear_run(self.out_dir)
                    self._replacing = False
                value = record[monitor]
                if is_better(value, best, task.mode):
                    best, best_epoch, bad_epochs = value, epoch + 1, 0
                    best_state = {k: v.detach().clone()
                                  for k, v in unwrap_model(net).state_dict().items()}
                    if self._writes:
                        atomic_save(self._checkpoint(epoch=epoch + 1, history=history),
                                    self.out_dir / "best.pt")
                else:
                    bad_epochs += 1
                if self._writes:
                    atomic_save(self._checkpoint(
                        epoch=epoch + 1, history=history, optimizer=optimizer.state_dict(),
                        scheduler=scheduler.state_dict(), rng=rng_state(), best=best,
                        best_epoch=best_epoch, bad_epochs=bad_epochs), self.out_dir / "last.pt")
                    log.write(record)
                walls.append(time.perf_counter() - t0)
                # The last epochs' pace: a progressive run's first epochs are faster than the rest.
                left = statistics.median_high(walls[-3:]) * (cfg.epochs - epoch - 1)
                self._say(_epoch_line(record, cfg.epochs, getattr(self.task, "num_classes", 0),
                                      left=left, quiet=getattr(self.task, "line_quiet", ())))
                if cfg.patience is not None and bad_epochs >= cfg.patience:
                    stopped = True
                    self._say(f"early stopping: {monitor} has not improved for "
                              f"{plural(bad_epochs, 'epoch')} (best {best:.4f} at epoch "
                              f"{best_epoch})")
                    break
        finally:
            if log is not None:
                log.close()

        restore = cfg.restore_best if cfg.restore_best is not None else cfg.patience is not None
        if restore and best_state is not None:
            unwrap_model(net).load_state_dict(best_state)
            self._say(f"restored the best weights (epoch {best_epoch})")
            if scored is not None and scored[0] != best_epoch:
                scored = None
        result = FitResult(history, best_epoch, best, monitor, prec, stopped, out_dir=self.out_dir)
        if self.val_loader is not None:
            acc = scored[1] if scored is not None else self.evaluate(self.val_loader)
            result.final, result.accumulator = final_metrics(acc), acc
            if cfg.tta:
                result.tta_accumulator = self.evaluate(self.val_loader, tta=cfg.tta)
                result.final_tta = final_metrics(result.tta_accumulator)
        if self._writes and cfg.report and history:
            from .report import write_report

            notes, table = write_report(self.out_dir, history, result.accumulator, task)
            for line in notes:
                self._say(line)
            for line in table:
                self._say(line, self.show)
        return result

    def _load_resume(self, resume: bool | str | Path) -> dict[str, Any] | None:
        if resume is False or resume is None:
            return None
        if resume is True:
            if self.out_dir is None:
                raise TrainingError("resume needs an output folder: pass out_dir / --out DIR")
            path = self.out_dir / "last.pt"
            if not path.exists():
                # A queue's bare restart of a run killed in its first epoch gets only the
                # options it gives: nothing of the killed run's was written to take.
                self._say(f"note: no checkpoint in {self.out_dir} (a run writes its first when "
                          "epoch 1 ends): starting a new run with the options given here")
                return None
        else:
            path = Path(resume)
        self._resumed_from = path
        try:
            ckpt = load_checkpoint(path)
            if "optimizer" in ckpt:  # (weights only: said below)
                check_run_state(ckpt, path)
        except WeightsError as exc:
            raise self._unresumable(exc, resume) from None
        if "optimizer" not in ckpt:
            raise TrainingError(f"{path} holds weights only, not a resumable run: resume from "
                                "last.pt, or start a new run with --init-from")
        old_meta = dict(ckpt.get("meta") or {})
        if "dataset" in old_meta and "dataset" in self.meta:  # moved with its data: the same
            old_meta["dataset"] = run_data(old_meta["dataset"], old_meta.get("dataset_from_run"),
                                           path.parent, given=self.meta["dataset"])
        conflict = resume_conflict(old_meta, self.meta, ckpt.get("task"), self.task.name)
        if conflict:
            raise TrainingError(f"the checkpoint in {self._resume_where(resume)} {conflict}, or "
                                "start a new run with another --out")
        old = ckpt["config"]
        # The optimizer's state (momentum, Adam's moments) is per parameter group: another
        # optimizer, or BatchNorm's weights joining or leaving the groups, cannot continue it.
        # (freeze_bn only moves parameters when the net has BatchNorm layers to freeze.)
        kinds = ("optimizer", "freeze_bn") if batchnorm_params(unwrap_model(self.model)) \
            else ("optimizer",)
        for k in kinds:
            problem = optimizer_state_conflict(old, self.config, k,
                                               transfer=bool(self.meta.get("transfer")))
            if problem:
                raise TrainingError(f"the checkpoint in {self._resume_where(resume)} {problem}")
        changed = [f"{k} (was {old.get(k)}, now {getattr(self.config, k)})"
                   for k in RESUME_WARN_CONFIG
                   if old.get(k) != getattr(self.config, k)]
        old_meta = ckpt.get("meta") or {}
        changed += meta_changes(old_meta, self.meta)
        # A --precision / --channels-last given explicitly applies to the remaining epochs.
        saved = Precision(**ckpt["precision"])
        self.precision = saved.resumed(self.config.precision, self.config.channels_last)
        if self.precision.source != "checkpoint":
            changed.append(f"precision (was {saved.setup}, now {self.precision.setup})")
        if old_meta.get("val_files") and self.meta.get("val_files") not in (
                None, old_meta["val_files"]):
            # Of the same number (a manifest's rows read in another order, an image swapped for
            # another): the epochs after the resume would validate on images it trained on.
            changed.append("validation images (the data splits otherwise now)")
        if changed:
            self._say(f"warning: resuming with different {', '.join(changed)} than the "
                      "checkpoint; the result will differ from an uninterrupted run")
        was, now = old.get("tensorboard", self.config.tensorboard), self.config.tensorboard
        if self._writes and was != now:  # the logs differ, not the result: a note
            tb = self.out_dir / "tb"
            if not now:
                where = f"{tb} keeps the epochs before this resume; metrics.jsonl has every epoch"
            elif not tb.exists():  # MetricsLog writes the run's history there first
                where = f"{tb} gets the epochs so far too"
            else:
                where = f"{tb} misses the epochs run without them"
            self._say(f"note: resuming with TensorBoard event files {'on' if now else 'off'} "
                      f"(the run had them {'on' if was else 'off'}): {where}")
        if "val_files" in old_meta:
            # The validation files the run started with: the epochs before this resume trained
            # on the rest, so a folder changed since still cannot be scored as its validation
            # split (`evaluate`), even from this run's later checkpoints.
            self.meta["val_files"] = old_meta["val_files"]
        if "init_from" in old_meta:  # a grown run stays one when resumed without --init-from
            self.meta.setdefault("init_from", old_meta["init_from"])
        return ckpt

    def _unresumable(self, exc: WeightsError,
                     resume: bool | str | Path) -> WeightsError | TrainingError:
        """What to raise for `exc`, a checkpoint to resume from that cannot be read or is
        damaged: the run's own last.pt (resume=True) says how to go on, as asking whether it
        is a file of `cnnzoo train` does not help."""
        if resume is not True or isinstance(exc, NewerFormatError):
            return exc
        why = (str(exc) if isinstance(exc, DamagedCheckpointError)
               else f"cannot read {self._resumed_from}")  # fmt: skip
        return TrainingError(f"{why}, so the run cannot be resumed: start it again with "
                             "--overwrite, or train into another --out")

    def _resume_where(self, resume: bool | str | Path) -> Path:
        """The folder (resume=True) or file a resumed run continues from, for messages."""
        if resume is True and self.out_dir is not None:
            return self.out_dir
        return Path(resume)

    # ----------------------------------------------------------------- epochs
    def _train_epoch(
        self, net: nn.Module, optimizer: torch.optim.Optimizer,
        scheduler: StepSchedule, epoch: int,
    ) -> tuple[MetricAccumulator, int]:
        cfg, task, prec = self.config, self.task, self.precision
        set_train_mode(net, cfg.freeze_bn)
        acc = task.metrics()
        nonfinite = torch.zeros((), dtype=torch.bool)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        cl = prec.channels_last
        total = len(self.train_loader)
        bar = _progress(total, f"epoch {epoch + 1}/{cfg.epochs}",
                        enabled=cfg.progress and self.dist.is_main)
        n_images, shown, t0 = 0, 0, time.perf_counter()
        for step, (x, y) in enumerate(self.train_loader):
            mix = None
            if self.mixer.enabled:
                x, mix = self.mixer(x)
            if cl and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)

            def loss_of(out: Any, y: Tensor = y, mix: Any = mix) -> Tensor:
                loss = task.loss(out, y)
                if mix is not None:
                    partner = task.loss(out, y.index_select(0, mix.perm))
                    loss = mix.lam * loss + (1.0 - mix.lam) * partner
                return loss

            with prec.autocast():
                out = net(x)
            loss = loss_of(out)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.sam:
                self._sharpness_aware(net, x, loss_of, optimizer, params, cfg.sam)
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            with torch.no_grad():
                acc.update(out, y, loss)
                nonfinite |= ~torch.isfinite(loss.detach())
            n_images += y.shape[0]
            if (step + 1) % cfg.log_every == 0 or step + 1 == total:
                if broadcast_flag(bool(nonfinite)):
                    if bar is not None:
                        bar.close()
                    self._diverged(epoch, step, scheduler)
                if bar is not None:
                    run = acc.running()
                    ips = n_images * self.dist.world / max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix_str(
                        " ".join(f"{k} {v:.4f}" for k, v in run.items()) + f" {ips:,.0f} img/s",
                        refresh=False)
                    bar.update(step + 1 - shown)
                    shown = step + 1
        if bar is not None:
            bar.close()
        acc.reduce(all_reduce_sum)
        return acc, n_images * self.dist.world

    def _sharpness_aware(self, net: nn.Module, x: Tensor, loss_of: Any,
                         optimizer: torch.optim.Optimizer, params: list[nn.Parameter],
                         rho: float) -> None:
        """Replace the gradients (at w) by those at w + rho * g / ||g||, the nearby point where
        the batch's loss rises fastest, and put the weights back: the optimizer then steps from
        w toward a flat minimum (SAM, Foret et al. 2021). The metrics keep the first pass's, and
        BatchNorm's running statistics too: the pass at the perturbed weights leaves them be (a
        momentum of 0), so they average the batches once, as without SAM."""
        with torch.no_grad():
            live = [p for p in params if p.grad is not None]
            norm = torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(p.grad.float()) for p in live]))
            scale = rho / (norm + 1e-12)
            steps = [(p.grad.float() * scale).to(p.dtype) for p in live]
            for p, e in zip(live, steps, strict=True):
                p.add_(e)
        optimizer.zero_grad(set_to_none=True)
        norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                 and m.training and m.momentum is not None]  # fmt: skip
        momenta = [m.momentum for m in norms]
        try:
            for m in norms:
                m.momentum = 0.0
            with self.precision.autocast():
                out = net(x)
            loss_of(out).backward()
        finally:
            for m, momentum in zip(norms, momenta, strict=True):
                m.momentum = momentum
        with torch.no_grad():
            for p, e in zip(live, steps, strict=True):
                p.sub_(e)

    def _diverged(self, epoch: int, step: int, scheduler: StepSchedule) -> None:
        where = f"epoch {epoch + 1}, by step {step + 1}"
        lr = scheduler.used_lr()
        keep = (f"the last good checkpoint is {self.out_dir / 'last.pt'} (epoch {epoch})"
                if self.out_dir is not None and epoch > 0 else "no checkpoint was written")
        if self._replacing:
            keep += f" and the run already in {self.out_dir} is left as it was"
        err = TrainingError(
            f"loss became NaN/inf in {where} (lr {lr:.3g}): lower --lr or set --grad-clip "
            "(TrainConfig lr=, grad_clip=); "
            f"{keep}")
        err.every_rank = True  # every process stops here together (broadcast_flag)
        raise err

    @torch.no_grad()
    def evaluate(
        self, loader: Any, model: nn.Module | None = None, *, tta: bool | str = False
    ) -> MetricAccumulator:
        """Metrics of `model` (default: the trained model) over `loader`, summed over processes.

        tta: test-time augmentation ('flip' or True, 'flip-shift'; see `tta_views`) -- the
        model's logits for the views of each image are averaged (the loss is that of the
        averaged logits); dense (segmentation) logits are moved back into place first."""
        net = unwrap_model(model if model is not None else self.model)
        sync_buffers(net)  # rank 0's BatchNorm statistics: the ones its checkpoint holds
        was_training = net.training
        net.eval()
        acc = self.task.metrics()
        cl = self.precision.channels_last
        try:
            for x, y in loader:
                if cl and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                with self.precision.autocast():
                    if tta:
                        out = tta_forward(net, x, tta)
                    else:
                        out = net(x)
                acc.update(out, y, self.task.loss(out, y))
        finally:
            net.train(was_training)
        acc.reduce(all_reduce_sum)
        return acc


# Changes that a resumed run survives but that make it differ from an uninterrupted one: the
# config's, and the meta's (segmentation's loss; the input size, the validation split and the
# number of images, which a folder given more images or another --cells changes).
RESUME_WARN_CONFIG = ("epochs", "lr", "schedule", "warmup_epochs", "weight_decay", "momentum",
                      "nesterov", "grad_clip", "seed", "mixup", "cutmix", "sam", "patience")
# batch_size too: another one changes the steps per epoch, so the schedule's step lands elsewhere.
# The rest of the recipe as runs record it (`cnnzoo compare` shows a resumed run's last values).
RESUME_WARN_META = ("loss", "img_size", "val_fraction", "hold_out_test", "images", "tiles",
                    "batch_size", "augment", "erase", "progressive", "label_smoothing",
                    "class_weight", "elastic", "jitter", "w0", "sigma")


def meta_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The RESUME_WARN_META settings of `new` that differ from the checkpoint's `old`, as
    'images (was train 5, val 2, now train 6, val 2)'."""
    old = dict(old)
    if "tiles" in new and "tiles" not in old and "images" in old \
            and new["tiles"] != new.get("images"):
        # A U-Net run from before "tiles" was recorded counted the tiles of images of mixed
        # sizes as its "images": compared with the images, every such run warned at its resume
        # that its data had changed.
        old["tiles"] = old.pop("images")
        new = {k: v for k, v in new.items() if k != "images"}
    return [f"{k} (was {_plain(old[k])}, now {_plain(new[k])})" for k in RESUME_WARN_META
            if k in old and k in new and old[k] != new[k]
            and _split_setting_applied(k, old, new)]


def _split_setting_applied(key: str, old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether `key`, when a split setting, chose the validation images of the run resumed
    (meta `old`) or of this session (`new`): a run given val/ was warned of "val_fraction (was
    0.2, now 0.1)", a fraction that drew nothing. val_fraction draws only a split that no
    val/ part (nor test/ validating in its place) gives; hold_out_test changes the split only
    of data with test/ and no val/, where it makes the validation images drawn or not. Meta
    that does not record `val_drawn` (older runs, a caller's own): compared as before."""
    drawn = old.get("val_drawn"), new.get("val_drawn")
    if key not in ("val_fraction", "hold_out_test") or None in drawn:
        return True
    return all(drawn) if key == "val_fraction" else drawn[0] != drawn[1]


def restore_optimizer(optimizer: torch.optim.Optimizer, scheduler: StepSchedule,
                      ckpt: dict[str, Any]) -> None:
    """Load the checkpoint's optimizer and scheduler state (momentum, step), keeping this run's
    hyper-parameters: loading would bring back the old lr, weight decay and momentum, so a
    resumed run told to lower --lr (after a NaN, say) would go on with the old one. Unchanged
    settings give back exactly the saved values (a resume stays bit-identical)."""
    fresh = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    for group, hyper in zip(optimizer.param_groups, fresh, strict=True):
        group.update(hyper)  # initial_lr is the new peak lr of the group
    scheduler.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
    for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs,
                                   scheduler.lr_lambdas, strict=True):  # fmt: skip
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]  # what get_last_lr() reports


def _plain(value: Any) -> str:
    """{'train': 242, 'val': 60} -> 'train 242, val 60' for a message; a progressive schedule
    [16, 3] -> '16:3' as --progressive takes it, None -> 'off'; other values as they are."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ":".join(map(str, value))
    return "off" if value is None else str(value)


def differing_options(
    a: dict[str, Any] | None, b: dict[str, Any] | None, defaults: dict[str, Any] | None = None
) -> tuple[str, str] | None:
    """The model options two nets were built with, where they differ, for a message:
    ('width_mult=0.5 fc_dim unset', 'width_mult=1 fc_dim=256'); None when they agree.
    defaults: the model's (`registry.option_defaults`): an option left out is its default, and
    reads as one ('all five stages', 'fc_dim=4096'; 'stages unset' said nothing)."""
    from ..models.registry import option_words, same_option

    a, b = dict(a or {}), dict(b or {})
    for k, v in (defaults or {}).items():
        if k in a or k in b:
            a.setdefault(k, v)
            b.setdefault(k, v)
    keys = sorted(k for k in {*a, *b} if not (k in a and k in b and same_option(k, a[k], b[k])))
    if not keys:
        return None

    def show(kwargs: dict[str, Any]) -> str:
        return " ".join(option_words(k, kwargs[k]) if k in kwargs else f"{k} unset" for k in keys)

    return show(a), show(b)


def resume_conflict(old: dict[str, Any], new: dict[str, Any], old_task: str | None = None,
                    new_task: str | None = None) -> str | None:
    """Why a checkpoint whose meta is `old` cannot continue as a run whose meta is `new` (the
    end of a sentence starting 'the checkpoint in DIR ...'), or None. Keys either side lacks
    are not compared (transfer runs store no data set)."""
    if old_task and new_task and old_task != new_task:
        return f"is a {old_task} run, not {new_task}: resume it with --task {old_task}"
    if "model" in old and "model" in new and old["model"] != new["model"]:
        return (f"is {old['model']}, not {new['model']}: resume it as "
                f"`cnnzoo train {old['model']} ... --resume`")
    if "model_kwargs" in old and "model_kwargs" in new:
        from ..errors import UnknownModelError
        from ..models.registry import option_defaults

        try:  # an option left out is its default, and reads as one ('all five stages')
            defaults = option_defaults(str(new.get("model")))
        except UnknownModelError:  # (a net of the caller's own: its options as given)
            defaults = None
        diff = differing_options(old["model_kwargs"], new["model_kwargs"], defaults)
        if diff:
            return (f"was trained with other model options ({diff[0]}, not {diff[1]}): resume "
                    "with the checkpoint's options")
    if "dataset" in old and "dataset" in new and not same_source(old["dataset"], new["dataset"]):
        # Not "--data": transfer takes its data as an argument.
        return f"was trained on {old['dataset']}, not {new['dataset']}: resume on {old['dataset']}"
    if "class_names" in old and "class_names" in new and \
            list(old["class_names"]) != list(new["class_names"]):
        return (f"was trained on the classes {', '.join(map(str, old['class_names']))}, and "
                f"the data now has {', '.join(map(str, new['class_names']))}: resume with the "
                "data it was trained on")
    for k in ("num_classes", "in_chans"):
        if k in old and k in new and old[k] != new[k]:
            flag = f" (or --channels {old[k]})" if k == "in_chans" else ""
            return (f"has {k}={old[k]}, not {new[k]}: resume with the data it was trained "
                    f"on{flag}")  # fmt: skip
    return None


# A folder holding one of these holds a run: its checkpoints, and its logs (a run whose
# checkpoints were deleted to save space still has results worth keeping).
RUN_MARKERS = ("last.pt", "best.pt", "metrics.jsonl", "tb")
# Everything a run writes (report.py, logs.py, segmentation's grid); last.pt first, see clear_run.
RUN_FILES = (*RUN_MARKERS, "curves.png", "confusion.png", "per_class.csv", "validation.png")


def run_files(out_dir: Path) -> list[str]:
    """The `RUN_MARKERS` that `out_dir` holds."""
    return [n for n in RUN_MARKERS if (out_dir / n).exists()]


def optimizer_state_conflict(old: dict[str, Any], config: TrainConfig, key: str, *,
                             transfer: bool = False) -> str | None:
    """Why a checkpoint whose config is `old` cannot go on with `config`'s `key` (optimizer or
    freeze_bn: the optimizer's state is per parameter group), the end of a sentence starting
    'the checkpoint in DIR ...'; None when they agree."""
    was, now = old.get(key, getattr(TrainConfig, key)), getattr(config, key)
    if was == now:
        return None
    if transfer and key == "freeze_bn":  # in `cnnzoo transfer`'s words
        how = (f"resume {'without' if was else 'with'} --update-bn, as the run began, or start "
               "over (--overwrite)")
    else:
        how = f"resume with the run's {key}, or start a new run from its weights (--init-from)"
    return (f"was trained with {key}={was}, and its optimizer state cannot continue with "
            f"{key}={now}: {how}")


def check_mixing(config: TrainConfig, task_name: str) -> None:
    """Refuse mixup / CutMix for a task without class labels to mix (segmentation's callers
    ask before loading their data, the Trainer again for callers that build it directly)."""
    if (config.mixup or config.cutmix) and task_name != "classification":
        raise TrainingError(f"mixup and CutMix mix class labels; the {task_name} task has "
                            "none: leave --mixup / --cutmix at 0 (mixup=0, cutmix=0)")


def check_out_dir(out_dir: str | Path | None, *, resume: bool, overwrite: bool) -> None:
    """Refuse an output folder that is a file, or that holds a run when this run neither
    resumes it (from its last.pt) nor replaces it: one `TrainingError` line saying what to do,
    before any data is loaded or file written."""
    if out_dir is None:
        return
    out = Path(out_dir)
    check_folder(out, "--out")
    held = run_files(out)
    if not held or overwrite or (resume and "last.pt" in held):
        return
    # Each option in the library's spelling too, as transfer's check_out says it: a notebook
    # calling fit() or train() was told of --resume and --overwrite alone.
    if resume:
        raise TrainingError(f"{out} has no last.pt to resume (it holds {', '.join(held)}): pass "
                            "--overwrite (overwrite=True) to start a new run there, or another "
                            "--out")  # fmt: skip
    if "last.pt" not in held:  # nothing --resume could continue
        raise TrainingError(f"{out} holds a run's files ({', '.join(held)}) but no last.pt to "
                            "resume: pass --overwrite (overwrite=True) to replace them, or "
                            "another --out")  # fmt: skip
    raise TrainingError(f"{out} holds a run ({held[0]}): pass --resume (resume=True) to continue "
                        "it, --overwrite (overwrite=True) to replace it, or another --out")


def clear_run(out_dir: Path) -> None:
    """Remove the files of the run a new one replaces, so none of its metrics, TensorBoard
    events or figures mix with the new run's. last.pt goes first: a kill before the new one is
    written leaves no checkpoint to resume into the half-replaced folder."""
    remove_entries(out_dir, RUN_FILES)


TTA_MODES = ("flip", "flip-shift")


def tta_views(x: Tensor, mode: bool | str) -> list[tuple[Tensor, Any]]:
    """(view, undo) pairs of test-time augmentation for a batch x (N, C, H, W); `undo` maps a
    dense (N, K, H, W) output of the view back onto the original pixels and leaves class
    logits alone.

    'flip' (True): x and its mirror image. 'flip-shift': also x shifted by one pixel along
    each of the four diagonals (reflect-padded, as the training pad-and-crop fills), each
    with its mirror image -- ten views. Measured on three 16-epoch Fashion-MNIST VGG runs
    (docs/training.md): +0.10..0.21 points for 'flip', +0.23..0.43 for 'flip-shift'."""
    mode = "flip" if mode is True else mode  # True: the original boolean option
    if mode not in TTA_MODES:
        raise UsageError(f"unknown TTA {mode!r}: choose one of {', '.join(TTA_MODES)}")

    def flip_back(out: Tensor) -> Tensor:
        return out.flip(-1) if out.dim() == 4 else out

    views: list[tuple[Tensor, Any]] = [(x, lambda out: out), (x.flip(-1), flip_back)]
    if mode == "flip-shift":
        h, w = x.shape[-2:]
        # Reflection needs a side of 2 px or more; a 1-px side (a net trained at --img-size 1)
        # repeats its pixel instead, as the training pad-and-crop does not shift it at all.
        padded = torch.nn.functional.pad(x, (1, 1, 1, 1),
                                         mode="reflect" if min(h, w) > 1 else "replicate")
        for dy in (-1, 1):
            for dx in (-1, 1):
                # view[i, j] = x[i + dy, j + dx]; a dense output moves back by (-dy, -dx).
                view = padded[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]

                def back(out: Tensor, dy: int = dy, dx: int = dx) -> Tensor:
                    if out.dim() != 4:
                        return out
                    # The output's own size: a 'valid' U-Net's is the input's, centred, less
                    # what its convolutions trim, and it shifts with the input all the same.
                    oh, ow = out.shape[-2:]
                    out = torch.nn.functional.pad(out, (1, 1, 1, 1), mode="replicate")
                    return out[..., 1 - dy:1 - dy + oh, 1 - dx:1 - dx + ow]

                views.append((view, back))
                views.append((view.flip(-1), lambda out, back=back: back(flip_back(out))))
    return views


def tta_forward(net: Any, x: Tensor, mode: bool | str) -> Tensor:
    """The mean of `net`'s float32 outputs for the `tta_views` of x, each moved back into place:
    the one averaging of test-time augmentation, for the training's final validation
    (`Trainer.evaluate`) and the overlap tiles of `cnnzoo evaluate` and `cnnzoo segment`
    (`segmentation.tiling`) alike."""
    outs = [undo(net(view).float()) for view, undo in tta_views(x, mode)]
    return torch.stack(outs).mean(0)


def _progress(total: int, desc: str, *, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    # disable=None: no bar when stderr is not a terminal (a log file), as everywhere in cnnzoo.
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, mininterval=0.5,
                disable=None)


@contextlib.contextmanager
def one_image_batchnorm_hint() -> Iterator[None]:
    """BatchNorm cannot normalise one value per channel: a batch of one image whose maps have
    shrunk to 1x1 (resnet18 at 32 px, --batch-size 1). Torch's ValueError, raised deep in the
    first forward pass, becomes one line that says what to change."""
    try:
        yield
    except ValueError as exc:
        if "Expected more than 1 value per channel" not in str(exc):
            raise
        # Trainer.fit's callers are notebooks too: each option with its keyword.
        raise TrainingError("a batch of one image reaches a BatchNorm layer as 1x1 maps, which "
                            "it cannot normalise: use --batch-size 2 or more (batch_size=2), "
                            "or larger images (--img-size, img_size=; --crop for "
                            "segmentation)") from None


def _epoch_line(record: dict[str, Any], epochs: int, num_classes: int = 0, *,
                left: float = 0.0, quiet: Collection[str] = ()) -> str:
    """One epoch's log line; top-5 accuracy only above 5 classes, where it can be below 1
    (metrics.jsonl keeps it); `left`: the estimated seconds the run's remaining epochs take
    (a 10-minute fine-tuning gave no word of how long it would take); `quiet`: metrics (without
    train_/val_) left out of the line, kept in metrics.jsonl (a task's `line_quiet`)."""
    parts = [f"epoch {record['epoch']}/{epochs}"]
    if "train_px" in record:
        parts.append(f"at {record['train_px']} px")
    for k, v in record.items():
        if k in ("epoch", "seconds", "images_per_s") or k.endswith("_top5") and num_classes <= 5:
            continue
        if k.split("_", 1)[-1] in quiet:
            continue
        if isinstance(v, float) and math.isfinite(v):
            parts.append(f"{k} {v:.4g}")
    parts.append(f"{record['seconds']:.1f}s {record['images_per_s']:,.0f} img/s")
    if left > 0:
        parts.append(f"about {duration(left)} left")
    return "  ".join(parts)
