"""What a bare `cnnzoo train ... --resume` keeps of the run it continues.

A preempted job is restarted with the bare command (`cnnzoo train MODEL --data DATA --out DIR
--resume`), often without the options it began with. Each option left out is then the run's
own, read from DIR/last.pt, not the default: a run with --patience 3 resumed without early
stopping, one with --seed 3 or --val-fraction 0.25 drew another validation split (images it had
trained on among those it was scored on), a U-Net of --base-width 4 was refused as another net.
An option given is used as given; the engine warns when it differs from the run's.

`cnnzoo transfer DATA --out DIR --resume` does the same with the record its fine-tuning
checkpoints keep (DIR/finetune/{full,head}/last.pt, `transfer.run.run_record`): its model, its
weights and its settings; one of a run from before the record keeps nothing, as before.

The library keeps a few itself (`train_classifier`: epochs, --min-steps, batch size, class
weights, image size and channels), as its callers have no command line to leave them out of.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

# Options read from the checkpoint's `config` (TrainConfig's field of the option's name), for
# both tasks.
CONFIG_KEPT = ("optimizer", "lr", "momentum", "nesterov", "weight_decay", "schedule",
               "warmup_epochs", "grad_clip", "freeze_bn", "patience", "seed", "mixup", "cutmix",
               "sam", "tta", "tensorboard")
# The epochs-counting options a classifier's run raised with its epochs (`--min-steps`): its
# meta keeps them as asked for, and the run raises them again (runs from before: the config's).
ASKED = {"patience": "asked_patience", "warmup_epochs": "asked_warmup_epochs"}
# Options read from the checkpoint's `meta`, per task.
META_KEPT = {
    "classification": ("label_smoothing", "augment", "erase", "val_fraction", "hold_out_test"),
    "segmentation": ("loss", "elastic", "w0", "sigma", "val_fraction", "cells", "classes",
                     "encoder_weights", "batch_size"),
}
# A U-Net's options of their own, in its model_kwargs (segmentation.training.build_model).
UNET_OWN = {"padding": "padding", "base_width": "base_width", "encoder_name": "encoder"}


def keep_run_options(args: argparse.Namespace, out: Path) -> None:
    """Set each option of `args` left out (None, or no --model-arg) to the value of the run
    `out`/last.pt holds. Nothing when there is no such run or it cannot be read: the Trainer
    then starts afresh or says what is wrong."""
    from ..engine.run import run_checkpoint

    path = Path(out) / "last.pt"
    ckpt = run_checkpoint(path) if path.is_file() else None
    if not ckpt:
        return
    config, meta = ckpt.get("config") or {}, ckpt.get("meta") or {}
    task = str(ckpt.get("task") or meta.get("task") or "classification")
    if task != args.task:  # the Trainer refuses it, naming the task
        return

    def keep(option: str, value: Any) -> None:
        _keep(args, option, value)

    for option in CONFIG_KEPT:
        asked = ASKED.get(option, "")
        value = meta[asked] if asked in meta else config.get(option)
        keep(option, _asked(value, config, meta) if option == "patience" and asked not in meta
             else value)
    for option in META_KEPT.get(task, ()):
        keep(option, meta.get(option))
    kwargs = dict(meta.get("model_kwargs") or {})
    if task == "segmentation":
        keep("epochs", config.get("epochs"))
        if meta.get("dataset") == "cells" and "cells" not in meta:  # a run from before "cells"
            keep("cells", sum((meta.get("images") or {}).values()) or None)
        # The tile is the input side; in 'valid' mode the crop asked for is the output side,
        # which the run records as "crop" (earlier runs did not: those take the default).
        if args.crop is None and args.img_size is None:
            same = kwargs.get("padding", "same") == "same"
            keep("crop", meta.get("crop") or (meta.get("tile") if same else None))
        own = {option: kwargs.pop(key) for key, option in UNET_OWN.items() if key in kwargs}
        if args.encoder not in (None, own.get("encoder")):
            return  # another net, given: the Trainer names what differs
        for option, value in own.items():
            keep(option, value)
    elif args.progressive is None and meta.get("progressive"):
        small, span = meta.get("asked_progressive") or meta["progressive"]
        if "asked_progressive" not in meta:
            span = _asked(span, config, meta)
        args.progressive = (small, span)
    if not args.model_arg and kwargs:
        args.model_arg = list(kwargs.items())


def _asked(count: Any, config: dict[str, Any], meta: dict[str, Any]) -> Any:
    """A run written before the meta kept the counts asked for recorded --patience and the
    --progressive span raised with its epochs (3 of 10 asked as 23 of 75): the count asked
    for, which the run raises again to the same (`count` as it is when it was not raised)."""
    from ..data.loader import asked_count

    epochs, asked = config.get("epochs"), meta.get("asked_epochs")
    if not (isinstance(count, int) and count and isinstance(epochs, int)
            and isinstance(asked, int) and epochs > asked):
        return count
    return asked_count(count, epochs, asked)


def _keep(args: argparse.Namespace, option: str, value: Any) -> None:
    """`value` for `option` when it was left out (None)."""
    if getattr(args, option, None) is None and value is not None:
        setattr(args, option, value)


# `cnnzoo transfer`'s options of the features step or of mode both alone (`check_config`
# refuses --stages and --keep-best in the other modes).
MODE_BOUND = ("stages", "l2", "keep_best")


def keep_transfer_options(args: argparse.Namespace, out: Path) -> None:
    """Set each option of `cnnzoo transfer`'s `args` left out (None) to the value the
    interrupted fine-tuning in `out` recorded. Nothing without a record: the run starts
    afresh, or `transfer` says what is wrong."""
    from ..transfer.run import resumed_record
    from .transfer import FINETUNE_OPTIONS, RUN_OPTIONS

    record = resumed_record(out)
    if record is None:
        return
    config = dict(record.get("config") or {})
    if isinstance(config.get("stages"), list):
        config["stages"] = tuple(config["stages"])
    if isinstance(config.get("freeze_bn"), bool):
        config["update_bn"] = not config["freeze_bn"]
    # Another --mode given: the run's options that only its own mode takes are not kept
    # (--stages 4,5 or --keep-best of a `both` run, resumed with --mode finetune, are refused).
    own_mode = args.mode in (None, config.get("mode"))
    for option in (*RUN_OPTIONS, *FINETUNE_OPTIONS):
        if own_mode or option not in MODE_BOUND:
            _keep(args, option, config.get(option))
    # Not an option: --val-fraction given sets it (`commands.transfer.run`), else the run's.
    _keep(args, "hold_out_test", config.get("hold_out_test"))
    cache = record.get("cache") or {}
    if args.cache is None and args.use_cache is None:  # (one given decides alone)
        _keep(args, "cache", cache.get("dir"))
        _keep(args, "use_cache", cache.get("use"))
    if args.model not in (None, record.get("model")):
        return  # another net, given: `transfer` refuses it, naming the run's
    _keep(args, "model", record.get("model"))
    source = (record.get("weights") or {}).get("source")
    if args.weights is None and isinstance(source, str) and Path(source).is_absolute() \
            and not Path(source).exists():  # (a tag, 'imagenet', is kept as it was given)
        from ..errors import UsageError

        raise UsageError(f"the run in {out} began from --weights {source}, which is gone: "
                         "give --weights with that file where it is now, or start over with "
                         "--overwrite")  # fmt: skip
    _keep(args, "weights", source)
