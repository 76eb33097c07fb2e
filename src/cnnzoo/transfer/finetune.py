"""Fine-tuning on the training engine: head first with the backbone frozen, then the whole net
with smaller, layer-wise learning rates.

Two phases, two ordinary runs of `engine.Trainer` (so atomic checkpoints, resume, bf16 /
channels_last, the progress bar, early stopping and the curves hold as in `cnnzoo train`):

1. *head*: every backbone parameter has `requires_grad=False` and BatchNorm runs in eval mode,
   so only the new classifier (and GoogLeNet's auxiliary ones) moves; the backbone's weights
   and running statistics stay bit-identical. Skipped when `head_epochs` is 0.
2. *full*: the backbone is unfrozen in `groups` blocks of consecutive layers; the block next to
   the head trains at `lr * lr_decay`, the next at `lr * lr_decay**2`, ... (discriminative
   fine-tuning, Howard & Ruder 2018, ULMFiT Sec. 3.2): early layers hold generic edges and
   textures and should move least. BatchNorm statistics stay frozen by default (`freeze_bn`):
   with a few dozen images per batch the batch statistics are noisy and differ from the
   pretrained ones, the known trap (keras #9214, #9965). The one-cycle schedule runs to its
   end and its final weights are kept; early stopping on validation loss (`patience`) is an
   option, off by default because a small validation set's loss is too noisy to pick by.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..callable_module import make_callable
from ..data.augment import default_augmentation
from ..data.dataset import Splits
from ..data.loader import (
    BatchLoader,
    epoch_steps,
    epochs_for_steps,
    in_raised_epochs,
    small_set_batch,
)
from ..engine.loop import FitResult, TrainConfig, Trainer
from ..engine.task import ClassificationTask, class_weights
from ..text import plural, to_stderr
from ..weights import Preprocessing
from ..weights.adapt import aux_classifiers
from .features import inference_dtype


@dataclass
class FinetuneConfig:
    """Fine-tuning's settings (`transfer(..., finetune=FinetuneConfig(...))`; the command's
    options in brackets). Phase 1 trains the new head alone for `head_epochs` (--head-epochs;
    0 skips it); phase 2 the whole network for `epochs` (--epochs), raised to reach `min_steps`
    optimizer steps (--min-steps), with AdamW at `lr` (--lr) for the head and `lr_decay`
    (--lr-decay) times less per block below it (`groups` blocks), BatchNorm statistics frozen
    unless `freeze_bn=False` (--update-bn). patience (--patience): early stopping on the
    validation loss, restoring the best epoch (None: off). augment (--augment): none, flip-crop,
    crop or photo (None: the data's default); label_smoothing; class_weight; mixup, cutmix
    (--mixup, --cutmix: Beta alphas, 0 off); sam (--sam: SAM's radius, 0 off, None: on for
    small sets). batch_size, precision, seed, progress and class_weight are set from the run's
    TransferConfig; verbose: the per-epoch lines."""

    head_epochs: int = 3  # phase 1 (0 skips it)
    # Phase 2 epochs, raised to reach `min_steps`. Only larger sets reach 12 epochs before
    # min_steps: hard set at 200 images per class 0.830 with 12 (1,152 s on one busy core),
    # against 0.816 with 6 and the earlier defaults.
    epochs: int = 12
    # Phase 2 takes at least this many optimizer steps. With 50 images an epoch is a step or
    # two, and six epochs barely moved the network: on the hard Fashion-MNIST set at 10 images
    # per class 6 steps gave 0.627 test accuracy, 90 steps 0.658.
    min_steps: int = 90
    lr: float = 1e-3  # AdamW peak learning rate of the head in phase 2 (and of phase 1)
    # Each backbone block trains at lr_decay x the block above it: gentler than ULMFiT's
    # ~1/2.6, because grey 28-pixel clothes differ from ImageNet photos in their low-level
    # statistics and the early blocks must adapt too. Hard Fashion-MNIST set, final weights:
    # 0.691 / 0.769 test accuracy at 10 / 50 images per class with 0.7, 0.670 / 0.754 with 0.4.
    lr_decay: float = 0.7
    groups: int = 4  # backbone blocks for discriminative learning rates
    weight_decay: float = 0.02
    freeze_bn: bool = True
    # Early stopping on validation loss, restoring the best epoch; None or 0 (the default): phase 2
    # runs its one-cycle schedule to the end and keeps the final weights. With 10 validation
    # images per class that loss is noise, and "best" picked early epochs: hard set at 10 / 50
    # per class, lr_decay 0.7, 0.645 / 0.719 with the best-loss epoch restored, 0.691 / 0.769
    # with the final weights.
    patience: int | None = None
    # batch_size, precision, seed, progress and class_weight: `transfer` sets them from its
    # TransferConfig (one value for the whole run; `run.SHARED_FIELDS`).
    batch_size: int = 32  # capped at a quarter of the training images (at least 8)
    # See data.augment.default_augmentation; None: `transfer` picks it for its data (flip-crop,
    # or crop on digits: `engine.run.default_augment`), and fine-tuning alone takes flip-crop.
    augment: str | None = None
    label_smoothing: float = 0.1
    # 'balanced': each class's loss weighted by n / (K n_k) over the training images
    # (`engine.task.class_weights`); 'none' or None: unweighted.
    class_weight: str | None = None
    # Batch mixing in both phases (engine/mixing.py): Beta alphas, 0 for off.
    mixup: float = 0.0
    cutmix: float = 0.0
    # Sharpness-aware minimisation's radius in phase 2 (`TrainConfig.sam`), 0 for off; None (the
    # default): `default_sam`, SAM_RHO on sets of fewer than SAM_BELOW training images per
    # class, else off.
    sam: float | None = None
    precision: str = "auto"
    channels_last: str = "auto"
    seed: int = 0
    progress: bool = True  # progress bars
    verbose: bool = True  # the engine's per-epoch lines


# SAM's radius and the set size below which fine-tuning uses it unless told (`default_sam`).
# Hard Fashion-MNIST set, 3 draws, each with two training seeds (docs/transfer.md), rho 0.05
# against off: at 10 images per class 0.668 against 0.645, at 50 per class 0.776 against 0.766
# (higher in all 6 paired runs at each size); at 200, one draw, 0.844 against 0.839 for twice
# the time (phase 2's steps take two passes each). rho 0.1 and 0.2 did worse at 10 per class
# (0.676 / 0.636 and 0.594 on draws 0 / 1 against 0.694 / 0.652).
SAM_RHO = 0.05
SAM_BELOW = 100


def default_sam(n_train: int, num_classes: int) -> float:
    """Phase 2's SAM radius when none is given: SAM_RHO on a small set (fewer than SAM_BELOW
    training images per class on average), where it paid, else 0 (off), where it costs twice
    the time for little."""
    return SAM_RHO if n_train < SAM_BELOW * max(num_classes, 1) else 0.0


def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The classifier's parameters and those of the auxiliary classifiers (GoogLeNet's aux1,
    aux2): their output layers are new too (`reset_classifier`), and torchvision's ImageNet
    file holds untrained ones. Outside the training loss they compute nothing."""
    params = list(model.get_classifier().parameters())
    for aux in aux_classifiers(model).values():
        params += [p for p in aux.parameters() if all(p is not q for q in params)]
    return params


def backbone_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) of everything but the heads, in module (= depth) order."""
    head = {id(p) for p in head_parameters(model)}
    return [(n, p) for n, p in model.named_parameters() if id(p) not in head]


def freeze_backbone(model: nn.Module, frozen: bool = True) -> None:
    """requires_grad=False on every backbone parameter (True when unfreezing); the heads train."""
    for _, p in backbone_parameters(model):
        p.requires_grad_(not frozen)
    for p in head_parameters(model):
        p.requires_grad_(True)


def layer_groups(model: nn.Module, lr: float, groups: int, decay: float) -> list[dict[str, Any]]:
    """Parameter groups for the engine: the heads at `lr`, then the backbone cut into `groups`
    consecutive blocks of about equal parameter count, the deepest at lr*decay, the one below
    at lr*decay**2, ..."""
    named = backbone_parameters(model)
    total = sum(p.numel() for _, p in named)
    blocks: list[list[nn.Parameter]] = [[] for _ in range(max(groups, 1))]
    seen = 0
    for _, p in named:
        # Block by cumulative parameter count, so that each block holds a similar share.
        idx = min(int(seen * len(blocks) / max(total, 1)), len(blocks) - 1)
        blocks[idx].append(p)
        seen += p.numel()
    out: list[dict[str, Any]] = [
        {"params": head_parameters(model), "lr": lr, "name": "head"}
    ]
    for depth, params in enumerate(reversed(blocks), start=1):
        if params:
            out.append({"params": params, "lr": lr * decay**depth,
                        "name": f"backbone{len(blocks) - depth}"})  # fmt: skip
    return out


def train_batch_size(cfg: FinetuneConfig, n: int) -> int:
    """`cfg.batch_size`, but at most n // 4 (at least 8; `small_set_batch`): with 50 images a
    batch of 32 makes one step per epoch, and the per-epoch validation would cost as much as
    the training."""
    return small_set_batch(cfg.batch_size, n)


def phase_epochs(cfg: FinetuneConfig, n: int) -> int:
    """Phase-2 epochs: `cfg.epochs`, raised so that they make at least `cfg.min_steps` steps."""
    return epochs_for_steps(cfg.epochs, cfg.min_steps, epoch_steps(n, train_batch_size(cfg, n)))


def make_loaders(splits: Splits, pre: Preprocessing, cfg: FinetuneConfig) -> tuple[BatchLoader, BatchLoader]:
    """Training batches (augmented, resized to the weights' size) and validation batches, both
    normalised with the weights' mean and std."""
    size = pre.crop_size
    n = len(splits.train)
    batch = train_batch_size(cfg, n)
    train = BatchLoader(
        splits.train.images, splits.train.labels, batch_size=batch, shuffle=True,
        drop_last=n > batch, transform=default_augmentation(cfg.augment or "flip-crop", size),
        mean=pre.mean, std=pre.std, seed=cfg.seed,
    )  # fmt: skip
    val = BatchLoader(
        splits.val.images, splits.val.labels, batch_size=max(cfg.batch_size, 64),
        transform=default_augmentation("none", size), mean=pre.mean, std=pre.std,
    )  # fmt: skip
    return train, val


def _engine_config(cfg: FinetuneConfig, epochs: int, lr: float, patience: int | None) -> TrainConfig:
    precision, channels_last = cfg.precision, cfg.channels_last
    if precision == "auto" and channels_last == "auto":
        # bf16 + channels_last where the CPU has native bf16 (measured 1.5-2.3x faster on conv
        # nets), fp32 NCHW elsewhere -- decided without the engine's timing trial, which costs
        # several full training steps of a 224-pixel network.
        precision = inference_dtype("auto")
        channels_last = "on" if precision == "bf16" else "off"
    return TrainConfig(
        epochs=epochs, optimizer="adamw", lr=lr, weight_decay=cfg.weight_decay,
        # One-cycle: the rate starts at lr/25 and rises over the first 30 % of the steps. Adam's
        # first steps are sign-like, and a full-size first step on every backbone weight at
        # once wrecked the pretrained features in a measured run (val loss 1.2 -> 4.0).
        schedule="onecycle", pct_start=0.3, precision=precision,
        # restore_best is left to the engine: on exactly when early stopping is (0: off).
        channels_last=channels_last, freeze_bn=cfg.freeze_bn, patience=patience, seed=cfg.seed,
        progress=cfg.progress, verbose=cfg.verbose, tensorboard=False, report=False,
        mixup=cfg.mixup, cutmix=cfg.cutmix,
    )  # fmt: skip


def finetune(
    model: nn.Module,
    splits: Splits,
    pre: Preprocessing,
    cfg: FinetuneConfig,
    *,
    out_dir: str | Path | None,
    meta: dict[str, Any] | None = None,
    resume: bool = False,
    say: Callable[[str], Any] | None = None,
) -> tuple[FitResult | None, FitResult | None]:
    """Run phase 1 (unless head_epochs == 0) and phase 2 (unless epochs == 0)
    on `model` in place; returns their results. Checkpoints go to out_dir/head and
    out_dir/full; `resume=True` continues an interrupted run from them. say: where the phase
    and per-epoch lines go (None: stderr, as `Trainer`'s)."""
    say = say or to_stderr
    task = ClassificationTask(splits.num_classes, label_smoothing=cfg.label_smoothing,
                              class_names=splits.class_names,
                              class_weights=class_weights(cfg.class_weight, splits.train.labels,
                                                          splits.num_classes))  # fmt: skip
    train, val = make_loaders(splits, pre, cfg)
    out = Path(out_dir) if out_dir is not None else None
    # Each phase's Trainer its own copy: a resumed phase puts its checkpoint's validation files
    # into its meta, and through one shared dict the whole net's phase then saw no other split.
    metas = [dict(meta or {}) for _ in range(2)]
    head_result = full_result = None
    phases = (cfg.head_epochs > 0) + (cfg.epochs > 0)  # "2/2" with the first skipped was odd
    if cfg.head_epochs > 0:
        say(f"fine-tune 1/{phases}: the new head alone for {plural(cfg.head_epochs, 'epoch')} "
            "(backbone and BatchNorm statistics frozen)")  # fmt: skip
        freeze_backbone(model, True)
        config = _engine_config(cfg, cfg.head_epochs, cfg.lr, None)
        config.freeze_bn = True  # nothing in the backbone may move in this phase
        # The lone new head trains at 3x --lr. As a group's own rate, not as the config's lr:
        # the config keeps --lr, which a resume compares with the checkpoint's.
        head = [{"params": head_parameters(model), "lr": cfg.lr * 3,
                 "name": "head"}]  # fmt: skip
        trainer = Trainer(model, task, train, val, config, param_groups=head,
                          out_dir=out / "head" if out else None, meta=metas[0], say=say)  # fmt: skip
        head_result = trainer.fit(resume=resume)
    if cfg.epochs > 0:
        bn = "frozen" if cfg.freeze_bn else "updating"
        epochs = phase_epochs(cfg, len(splits.train))
        # SAM where it was measured: the whole network, not the lone head.
        sam = cfg.sam if cfg.sam is not None else default_sam(len(splits.train), splits.num_classes)
        # Said, or `--epochs 3` reads as ignored when 23 epochs run (8x the time asked for).
        raised = (f" (--epochs {cfg.epochs} raised to make at least {cfg.min_steps} optimizer "
                  f"steps; --min-steps 0 keeps {cfg.epochs})" if epochs > cfg.epochs else "")
        say(f"fine-tune {phases}/{phases}: the whole network for up to "
            f"{plural(epochs, 'epoch')}{raised}, layer-wise lr "
            f"{cfg.lr:g} (head) down to {cfg.lr * cfg.lr_decay ** cfg.groups:.2g}, BatchNorm "
            f"statistics {bn}" + (f", SAM radius {sam:g}" if sam else ""))  # fmt: skip
        freeze_backbone(model, False)
        groups = layer_groups(model, cfg.lr, cfg.groups, cfg.lr_decay)
        # Patience counts nominal epochs: when short epochs were added to reach min_steps, it
        # grows with them, or noise in a 50-image validation loss would stop the run at once.
        patience = cfg.patience and in_raised_epochs(cfg.patience, epochs, cfg.epochs)
        config = _engine_config(cfg, epochs, cfg.lr, patience)
        config.sam = sam
        trainer = Trainer(model, task, train, val, config, param_groups=groups,
                          out_dir=out / "full" if out else None, meta=metas[1], say=say)  # fmt: skip
        # A run killed in the head's phase has no checkpoint of this one: it starts, without the
        # Trainer's note of a restart that found none ('starting a new run with the options
        # given here', of a bare --resume that goes on with the run's own).
        full_resume = resume and (out is None or (out / "full" / "last.pt").exists())
        full_result = trainer.fit(resume=full_resume)
    freeze_backbone(model, False)
    return head_result, full_result


# `from cnnzoo.transfer import finetune` is this module, called as the function above.
make_callable(__name__, finetune)
