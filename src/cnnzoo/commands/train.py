"""`cnnzoo train`: train a zoo model from scratch (or grown from a shallower one) on a data set.

    cnnzoo train lenet5 --data digits --epochs 10
    cnnzoo train resnet20 --data fashion-mnist --epochs 8 --batch-size 256 --lr 0.2
    cnnzoo train vgg13 --data DIR --init-from runs/vgg11/best.pt      # growth, Simonyan & Zisserman
    torchrun --nproc-per-node 2 -m cnnzoo train resnet20 --data fashion-mnist   # data parallel
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .argtypes import (
    COUNT,
    FRACTION,
    IMG_SIZE,
    LEARNING_RATE,
    SAM_RADIUS,
    SEED,
    add_positional_or_option,
    add_progress_argument,
    add_threads_argument,
    beta_alpha,
    model_arg,
    patience_epochs,
    real,
    refuse_resume_with_overwrite,
    settle_positional,
    size_epochs,
    whole,
)

LABEL_SMOOTHING = 0.1


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_positional_or_option(p, "model", help="zoo model name (`cnnzoo models` lists them)")
    p.add_argument("--data", required=True,
                   help="image folder (one sub-folder per class), CSV manifest, 'fashion-mnist' "
                        "or 'digits'; with --task segmentation: a folder of images/ + masks/, "
                        "or 'cells'")
    p.add_argument("--task", choices=("classification", "segmentation"), default=None,
                   help="default: segmentation for unet, classification otherwise")
    p.add_argument("--epochs", type=COUNT, default=None,
                   help="training epochs, exactly unless --min-steps is given (default 10, "
                        "raised on a small folder to make --min-steps steps; with --resume: "
                        "the run's own)")
    p.add_argument("--min-steps", type=whole(0), default=None,
                   help="classification: training steps at least, epochs raised to reach them "
                        "(default 300 without --epochs, none with it: a folder of a few hundred "
                        "images makes a handful of steps per epoch; with --resume: the run's "
                        "own)")
    p.add_argument("--batch-size", type=COUNT, default=None,
                   help="default 128, at most a quarter of the training images (at least "
                        "8) so that an epoch makes several steps (segmentation: 8); with "
                        "--resume: the run's own")
    p.add_argument("--lr", type=LEARNING_RATE, default=None,
                   help="peak learning rate (default 0.1 for sgd, times sqrt(batch / 128) "
                        "when a small folder's default batch is below 128; 2e-3 for adamw)")
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default=None,
                   help="default sgd (segmentation: adamw, lr 3e-3, weight decay 1e-4)")
    # Options left out are None, not their defaults (TrainConfig's, config_from_args): a bare
    # --resume takes the run's own for them (resume_options.keep_run_options).
    p.add_argument("--momentum", type=real(0, 1, below=True), default=None,
                   help="SGD momentum (default 0.9; not for adamw)")
    # Each switch has both forms (default None: with --resume, the run's own): a killed run's
    # --no-nesterov carried over to a bare --resume, and no flag turned it back on.
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None,
                   help="Nesterov's momentum (the default), or plain momentum with "
                        "--no-nesterov (sgd only)")
    p.add_argument("--schedule", choices=("onecycle", "cosine", "constant"), default=None,
                   help="learning-rate schedule, stepped every batch (default onecycle)")
    p.add_argument("--warmup-epochs", type=real(0), default=None,
                   help="linear warm-up for the cosine and constant schedules (default 0; "
                        "onecycle has its own; grows with epochs raised by --min-steps)")
    p.add_argument("--label-smoothing", type=real(0, 1, below=True), default=None,
                   help=f"classification only (default {LABEL_SMOOTHING})")
    add_class_weight_argument(p)
    p.add_argument("--weight-decay", type=real(0), default=None,
                   help="default 5e-4 for sgd, 0.05 for adamw; never on norms and biases")
    p.add_argument("--grad-clip", type=real(0, note="0: off"), default=None,
                   help="max gradient norm (default: none, no clipping; 0: off, e.g. to "
                        "resume a run without its clipping)")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="auto (default): time both on this CPU and model, keep the faster")
    p.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                   help="memory layout (default auto: timed with the precision)")
    p.add_argument("--freeze-bn", action="store_const", const=True, default=None,
                   help="freeze BatchNorm layers: running statistics are used, not updated, "
                        "and their scale/shift do not train")
    p.add_argument("--patience", type=patience_epochs, default=None,
                   help="early stopping: epochs without a better validation loss "
                        "(segmentation: foreground Dice); the best weights are restored "
                        "(default and 0: off)")
    p.add_argument("--seed", type=SEED, default=None,
                   help="the split, the initialisation, the order and the augmentation "
                        "(default 0)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint, with the run's "
                        "own options where none are given")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run --out holds (its files go when the new run writes its "
                        "first checkpoint)")
    p.add_argument("--init-from", metavar="CHECKPOINT",
                   help="start from a trained shallower net of the same family (growth)")
    p.add_argument("--grow-rule", choices=("paper", "all"), default="paper",
                   help="VGG growth: the paper's first four convs + dense layers, or every "
                        "conv whose place exists in both (default paper)")
    p.add_argument("--out", metavar="DIR", help="output folder (default runs/MODEL)")
    p.add_argument("--img-size", type=IMG_SIZE, default=None,
                   help="input size (default: the images' largest side, raised to the model's "
                        "minimum and to 32, when it is below the model's default size (224 for "
                        "ImageNet nets); else that default)")
    p.add_argument("--channels", type=int, choices=(1, 3), default=None,
                   help="input channels: 1 (grey) or 3 (RGB) (default: the data's own: 1 when "
                        "every image is grey, as the built-ins are, else 3)")
    p.add_argument("--augment", choices=("none", "flip-crop", "crop", "photo"), default=None,
                   help="default: crop for digits, flip-crop otherwise (classification only)")
    p.add_argument("--erase", type=real(0, 1), default=None, metavar="P",
                   help="random erasing (Zhong et al. 2017) with probability P on top of "
                        "--augment (default 0: off; the paper uses 0.5)")
    p.add_argument("--progressive", type=size_epochs, default=None, metavar="SIZE:EPOCHS",
                   help="progressive resizing: train the first EPOCHS epochs at SIZE px (cheaper), "
                        "the rest at the full size, e.g. 20:8 for 28-px Fashion-MNIST (default: "
                        "off)")
    add_tta_argument(p, "also report the final validation accuracy with test-time augmentation")
    p.add_argument("--no-tta", dest="tta", action="store_const", const=False,
                   help="no test-time augmentation (the default; with --resume, a run's --tta "
                        "is kept unless this is given)")
    add_mixing_arguments(p, sam=None, off=None)
    p.add_argument("--val-fraction", type=FRACTION, default=None,
                   help="validation share drawn from the training images when DATA has no "
                        "val/ part (default 0.2); given, a classifier's test/ part (test rows) "
                        "stays held out for `cnnzoo evaluate --split test`, else test/ "
                        "validates")
    p.add_argument("--model-arg", type=model_arg, action="append", default=[],
                   metavar="KEY=VALUE",
                   help="extra model option, e.g. width_mult=0.25 (repeatable)")
    p.add_argument("--json", action="store_true",
                   help="machine-readable output: the run's best and final validation metrics, "
                        "its optimizer, peak lr and batch, as one JSON document on stdout at the "
                        "end (the per-class table goes to stderr)")
    add_threads_argument(p)
    add_progress_argument(p)
    p.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=None,
                   help="TensorBoard event files in OUT/tb (the default), or none with "
                        "--no-tensorboard (metrics.jsonl is written anyway)")
    from .segment import add_training_arguments

    add_training_arguments(p)


def add_tta_argument(p: argparse.ArgumentParser, what: str) -> None:
    # The choices are engine.loop.TTA_MODES, spelt out so that building the parser does not
    # import torch (a test checks they agree).
    modes = ("flip", "flip-shift")

    def mode(text: str) -> str:
        # `--tta` takes an optional value, so `evaluate --tta runs/a/best.pt` read the checkpoint
        # as the mode and said only "invalid choice".
        if text not in modes:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not flip or flip-shift (a bare --tta takes the word after it as "
                "its mode: put it after the positional arguments)")
        return text

    p.add_argument("--tta", nargs="?", const="flip", default=None, choices=modes, type=mode,
                   help=f"{what}: flip (the default: each image and its mirror image, "
                        "averaged), or flip-shift (also their one-pixel diagonal shifts: 10 "
                        "views); for models trained with flips and crops")


def add_class_weight_argument(p: argparse.ArgumentParser, where: str = "") -> None:
    """--class-weight, for `cnnzoo train` and `cnnzoo transfer` (engine.task.class_weights)."""
    p.add_argument("--class-weight", choices=("none", "balanced"), default=None,
                   help=f"balanced: weight each class's loss{where} by n / (classes x its "
                        "training images), scikit-learn's class_weight='balanced', so rare "
                        "classes count as much as common ones (default none; with --resume: "
                        "the run's own)")


def add_mixing_arguments(
    p: argparse.ArgumentParser, sam: float | None = 0.0, sam_words: str = "0: off",
    off: float | None = 0.0,
) -> None:
    """--mixup / --cutmix (engine/mixing.py) and --sam, for `cnnzoo train` and `cnnzoo transfer`
    (sam: --sam's default, said in sam_words; transfer's is None, a rule of the set's size;
    off: --mixup's and --cutmix's; train's are None, left out, see add_arguments)."""
    p.add_argument("--mixup", type=beta_alpha, default=off, metavar="ALPHA",
                   help="mixup (Zhang et al. 2018): blend each training batch with a shuffled "
                        "copy, weights from Beta(ALPHA, ALPHA) (default 0: off)")
    p.add_argument("--cutmix", type=beta_alpha, default=off, metavar="ALPHA",
                   help="CutMix (Yun et al. 2019): paste a box of another image instead "
                        "(default 0: off; with --mixup too, each batch uses one of the two)")
    p.add_argument("--sam", type=SAM_RADIUS, default=sam, metavar="RHO",
                   help="sharpness-aware minimisation (Foret et al. 2021): step with the "
                        "gradient at the worst point within RHO of the weights, e.g. 0.05; two "
                        f"passes per step (default {sam_words})")


def config_from_args(args: argparse.Namespace):
    """The run's `TrainConfig`: the options given, TrainConfig's defaults for the rest."""
    from ..engine.loop import TrainConfig

    adamw = args.optimizer == "adamw"
    given = {k: getattr(args, k, None) for k in (
        "momentum", "nesterov", "schedule", "warmup_epochs", "grad_clip", "freeze_bn",
        "patience", "seed", "tensorboard", "mixup", "cutmix", "sam")}
    if given["grad_clip"] == 0:  # --grad-clip 0: off, as TrainConfig spells it
        given["grad_clip"] = None
    return TrainConfig(
        epochs=args.epochs or 10, optimizer=args.optimizer or "sgd",
        lr=args.lr if args.lr is not None else (2e-3 if adamw else 0.1),
        weight_decay=args.weight_decay if args.weight_decay is not None else
        (0.05 if adamw else 5e-4),
        precision=args.precision, channels_last=args.channels_last, progress=args.progress,
        tta=getattr(args, "tta", None) or False,
        **{k: v for k, v in given.items() if v is not None},
    )


def refuse_unused_optimizer_options(args: argparse.Namespace) -> None:
    """Options the run's optimizer or schedule has no use for, refused as other unused options
    are: a run given them was the default run, without a word. --momentum and --no-nesterov
    shape SGD's step, and AdamW (a U-Net's default) has neither; --warmup-epochs is
    cosine's and constant's, and one-cycle has its own rise. A resumed run's own optimizer and
    schedule (from its last.pt), not the defaults, decide there: an AdamW run resumed with
    --momentum 0.5 went on as before, warned of a momentum 'now 0.5' it never used."""
    from ..errors import UsageError

    given = [flag for flag, set_ in (("--momentum", args.momentum is not None),
                                     ("--nesterov", args.nesterov is True),
                                     ("--no-nesterov", args.nesterov is False)) if set_]
    if not given and not args.warmup_epochs:
        return
    run = _resumed_config(args) if args.resume else {}
    default = "adamw" if args.task == "segmentation" else "sgd"
    optimizer = args.optimizer or run.get("optimizer") or default
    if optimizer == "adamw" and given:
        owner = "the run's optimizer" if run else f"{args.model}'s default"
        why = "" if args.optimizer else f" ({owner})"
        raise UsageError(f"{given[0]} is for --optimizer sgd; adamw{why} has no momentum "
                         "to set (its betas are 0.9, 0.999): leave it out, or add "
                         "--optimizer sgd")
    if args.warmup_epochs and (args.schedule or run.get("schedule") or "onecycle") == "onecycle":
        whose = "the run's" if run and not args.schedule else "the default"
        raise UsageError(f"--warmup-epochs is for --schedule cosine or constant; onecycle "
                         f"({whose}) warms up on its own, rising over the first quarter of the "
                         "steps (a U-Net's first 15 %): leave it out, or add --schedule cosine")


def _resumed_config(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields recorded in the last.pt that --resume continues ({} without one:
    a new run starts, with the defaults)."""
    from ..engine.run import out_dir_for, run_checkpoint

    path = out_dir_for(args.model, args.out) / "last.pt"
    ckpt = run_checkpoint(path) if path.is_file() else None
    return dict((ckpt or {}).get("config") or {})


def run(args: argparse.Namespace) -> int:
    from ..engine.distributed import cleanup, init_distributed, said_elsewhere, use_threads
    from ..engine.run import DataOptions, out_dir_for, train_classifier

    settle_positional(args, "model", "cnnzoo train MODEL --data DATA")
    refuse_resume_with_overwrite(args)
    if args.task is None:
        from ..models import get_config

        segmenter = get_config(args.model).task == "segmentation"
        args.task = "segmentation" if segmenter else "classification"
    refuse_unused_optimizer_options(args)
    dist = init_distributed()
    use_threads(args.threads)  # after: init_distributed shares the cores between a node's processes
    out = out_dir_for(args.model, args.out)
    # --val-fraction given: a test/ part without val/ stays held out (DataOptions); left out on
    # a bare --resume, the run's choice (None until `keep_run_options` reads it).
    args.hold_out_test = True if args.val_fraction is not None else None
    if args.resume:
        from .resume_options import keep_run_options

        keep_run_options(args, out)
    config = config_from_args(args)

    def say(msg: str) -> None:
        if dist.is_main:
            print(msg, file=sys.stderr)

    try:
        if args.task == "segmentation":
            from ..errors import DataError

            if args.progressive:
                raise DataError("--progressive is for classification; segmentation trains on "
                                 "crops (--crop) of its own size")
            if args.channels:
                raise DataError("--channels is for classification; segmentation keeps its "
                                "images' own channels (grey, or colour when any is)")
            # Classification options segmentation has no use for: a run that ignores them is
            # the default run, so a set one is refused rather than silently dropped.
            if args.augment is not None:
                raise DataError("--augment is for classification; segmentation always applies "
                                "the paper's crops, flips, turns and elastic deformation "
                                "(--elastic 0 turns the deformation off)")
            if args.erase:
                raise DataError("--erase is for classification; segmentation's augmentation "
                                "is set with --elastic")
            if args.label_smoothing not in (None, LABEL_SMOOTHING):
                raise DataError("--label-smoothing is for classification; segmentation's loss "
                                "is chosen with --loss")
            if args.class_weight is not None:
                raise DataError("--class-weight is for classification; segmentation balances "
                                "its classes' pixels with --loss weighted_ce")
            if args.min_steps is not None:
                raise DataError("--min-steps is for classification; segmentation trains for "
                                "exactly --epochs")
            # Segmentation is a configuration of the same loop; its data, losses and metrics
            # live in cnnzoo.segmentation (issue 7).
            from ..segmentation.training import train_segmentation

            result = train_segmentation(args, config, out_dir=out, dist=dist, say=say)
        else:
            from .segment import segmentation_options_set

            # The segmentation options, set for a classifier, were dropped without a word
            # (--cells 50, --crop 64, --encoder resnet18): the run was the default one.
            given = segmentation_options_set(args)
            if given:
                from ..errors import UsageError

                raise UsageError(f"{given[0]} is for --task segmentation (a U-Net); this run "
                                 f"trains {args.model} as a classifier: leave it out")
            data = DataOptions(args.data, img_size=args.img_size, channels=args.channels,
                               batch_size=args.batch_size, augment=args.augment,
                               erase=args.erase or 0.0, progressive=args.progressive,
                               hold_out_test=bool(args.hold_out_test),
                               **({} if args.val_fraction is None
                                  else {"val_fraction": args.val_fraction}))
            result = train_classifier(
                args.model, data, config, out_dir=out, resume=args.resume,
                init_from=args.init_from, grow_rule=args.grow_rule,
                label_smoothing=LABEL_SMOOTHING if args.label_smoothing is None
                else args.label_smoothing, class_weight=args.class_weight,
                model_kwargs=dict(args.model_arg),
                dist=dist, say=say, overwrite=args.overwrite,
                default_lr=args.lr is None and (args.optimizer or "sgd") == "sgd",
                # --epochs alone is exact; neither: the default, raised on a small folder.
                min_steps=args.min_steps if args.min_steps is not None or args.epochs is None
                else 0,
                default_epochs=args.epochs is None,  # with --resume: the run's own
                # the per-class table: a result, on stdout as evaluate's is (--json: the JSON
                # alone is)
                show=(lambda line: print(line, file=sys.stderr)) if args.json else print)
    except BaseException as exc:
        cleanup(ok=False)
        if said_elsewhere(exc, dist):  # one line per run, not one per process
            raise SystemExit(2) from None
        if dist.enabled and isinstance(exc, RuntimeError) and "closed by peer" in str(exc):
            # gloo's words when another rank has failed (it says why) or been stopped: one
            # line, not this rank's traceback through DDP's backward.
            from ..errors import TrainingError

            raise TrainingError(f"rank {dist.rank} stopped: another process of the run "
                                "failed or was stopped (see its message)") from None
        raise
    cleanup()
    if dist.is_main and args.json:
        # The numbers of the summary line below; `final` under `cnnzoo evaluate --json`'s names.
        from ..engine.run import run_checkpoint
        from ..text import json_text

        acc = result.accumulator
        final = dict(result.final)  # balanced_acc and macro_f1 too (`loop.final_metrics`)
        tta = result.final_tta or None
        if hasattr(acc, "plain_loss"):
            # A classifier's loss as `evaluate --json` gives it, the plain cross-entropy: the
            # log's val_loss holds the run's label smoothing (0.77 where evaluate said 0.72).
            final["loss"] = acc.plain_loss()
            if tta and getattr(result, "tta_accumulator", None) is not None:
                tta = {**tta, "loss": result.tta_accumulator.plain_loss()}
        # The recipe as the run recorded it: the batch and lr a small folder's defaults chose
        # (SGD's lr scaled) were on stderr only, not on any command line.
        ran = run_checkpoint(out / "last.pt") or {}
        cfg, meta = ran.get("config") or {}, ran.get("meta") or {}
        print(json_text({"model": args.model,
                         # as `models --json` names them: which net of the 1x1 lesson it was
                         "model_args": meta.get("model_kwargs"),
                         "out": str(out), "monitor": result.monitor,
                         "best": result.best_value, "best_epoch": result.best_epoch,
                         # trained in all (raised by --min-steps on a small folder, or cut short)
                         "epochs": len(result.history),
                         "optimizer": cfg.get("optimizer"), "lr": cfg.get("lr"),
                         "batch_size": meta.get("batch_size"),
                         "stopped_early": result.stopped_early,
                         # files left out as unreadable, under `data info --json`'s name
                         "skipped": result.skipped,
                         "final": final, "final_tta": tta}))
    elif dist.is_main:
        # top-5 of 5 classes or fewer is 1 by definition: noise in the line
        few = getattr(result.accumulator, "num_classes", 6) <= 5
        # with a classifier's balanced_acc and macro_f1: what accuracy hides on imbalanced data
        final = ", ".join(f"{k} {v:.4f}" for k, v in result.final.items()
                          if not (few and k == "top5"))  # fmt: skip
        print(f"{args.model}: best {result.monitor} {result.best_value:.4f} at epoch "
              f"{result.best_epoch}; final validation {final}")
        if result.final_tta:
            tta = ", ".join(f"{k} {v:.4f}" for k, v in result.final_tta.items()
                            if not (few and k == "top5"))  # fmt: skip
            print(f"final validation with {args.tta} TTA: {tta}")
        print(f"checkpoints, metrics and report in {out}/")
    return 0
