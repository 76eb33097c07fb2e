"""`cnnzoo transfer`: a pretrained backbone + a new head on your image folder -> a bundle.

    cnnzoo transfer DATA --model efficientnet_lite0 --weights imagenet --out runs/parts
    cnnzoo transfer DATA --mode features --head mlp          # seconds, once features are cached
    cnnzoo transfer DATA --model vgg16 --weights vgg16-397923af.pth --mode finetune
    cnnzoo predict photo.jpg --bundle runs/parts/bundle
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .argtypes import (
    COUNT,
    FRACTION,
    IMG_SIZE,
    LEARNING_RATE,
    SEED,
    add_positional_or_option,
    add_progress_argument,
    add_threads_argument,
    patience_epochs,
    real,
    refuse_resume_with_overwrite,
    settle_positional,
    whole,
)
from .train import add_class_weight_argument, add_mixing_arguments

# `transfer`'s own default for --weights.
WEIGHTS = "imagenet"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_positional_or_option(p, "data", help="image folder (one sub-folder per class, optionally "
                             "train/ val/ test/) or CSV manifest (path,label[,split])")
    p.add_argument("--model", default=None,
                   help="zoo model name (default: the one a `cnnzoo train` checkpoint or "
                        "`cnnzoo convert` file given as --weights records, else "
                        "efficientnet_lite0)")
    p.add_argument("--weights", default=None,
                   help="'imagenet' (default) or a checkpoint file (.pth/.pt/.safetensors/.h5) "
                        "in torchvision, timm, Keras or cnnzoo layout")  # fmt: skip
    p.add_argument("--mode", choices=("features", "finetune", "both"), default=None,
                   help="features: frozen backbone + new head (fast); finetune: head, then the "
                        "whole net; both (default): features, then finetune (from a new head, which "
                        "measured better than starting from the features head)")  # fmt: skip
    p.add_argument("--head", choices=("linear", "mlp"), default=None,
                   help="linear: logistic regression with L2 tuned by cross-validation (default)")
    p.add_argument("--stages", type=stages_arg, default=None, metavar="4,5|auto|none",
                   help="the features head reads these feature stages, each globally pooled "
                        "(1 = the first; vgg*, googlenet, resnet*, densenet* and "
                        "efficientnet_lite* have 5, alexnet and the CIFAR nets resnet20-110 and "
                        "densenet_bc_100_k12 4, lenet5 and residual_net none); none: the "
                        "model's last features; auto (default): the model's choice, 4,5 for "
                        "efficientnet_lite* (measured better), none for the others. "
                        "Fine-tuning always trains the model with its own head")  # fmt: skip
    p.add_argument("--l2", type=real(0, above=True), default=None, help="fixed L2 strength (default: tuned)")
    p.add_argument("--views", type=int, default=None, choices=(1, 2, 3, 4),
                   help="views per image for features and prediction: 1 image, 2 + mirror "
                        "(default; digits: 1), 3 + centre zoom, 4 + its mirror")  # fmt: skip
    p.add_argument("--img-size", type=IMG_SIZE, default=None,
                   help="input size (default: the weights', 224 for ImageNet)")
    p.add_argument("--fit", choices=("crop", "resize"), default=None,
                   help="crop: the weights' resize + centre crop; resize: squash the whole image "
                        "(small, tightly framed images); default: as the weights were trained, "
                        "crop for ImageNet, resize for a cnnzoo train checkpoint")  # fmt: skip
    p.add_argument("--epochs", type=COUNT, default=None,
                   help="fine-tuning epochs (default 12, more when needed to reach --min-steps)")
    p.add_argument("--min-steps", type=whole(0), default=None,
                   help="fine-tuning steps at least, whatever --epochs says (default 90)")
    p.add_argument("--head-epochs", type=whole(0), default=None,
                   help="epochs of the new head alone before fine-tuning the whole net "
                        "(modes finetune and both; default 3, 0 skips it)")
    p.add_argument("--lr", type=LEARNING_RATE, default=None, help="head learning rate (default 1e-3)")
    p.add_argument("--lr-decay", type=real(0, 1, above=True), default=None,
                   help="learning-rate factor per backbone block, head to stem (default 0.7)")
    p.add_argument("--update-bn", action="store_true", default=None,
                   help="update BatchNorm statistics while fine-tuning (default: frozen)")
    p.add_argument("--patience", type=patience_epochs, default=None,
                   help="early stopping on validation loss after N epochs without improvement, "
                        "restoring the best epoch (default off: the final weights are kept; "
                        "with a few validation images per class their loss is too noisy)")
    p.add_argument("--keep-best", action=argparse.BooleanOptionalAction, default=None,
                   help="mode both: keep the features head when its validation loss beats the "
                        "fine-tuned net's (default: keep the fine-tuned net; a few validation "
                        "images per class choose badly; --no-keep-best: turn a resumed "
                        "run's off)")
    p.add_argument("--augment", choices=("none", "flip-crop", "crop", "photo"),
                   default=None, help="fine-tuning augmentation (default flip-crop; digits: "
                                      "crop, as a mirrored digit is no digit)")
    p.add_argument("--label-smoothing", type=real(0, 1, below=True), default=None,
                   help="fine-tuning's label smoothing (default 0.1; 0: the plain cross-entropy, "
                        "probabilities not softened, for a fixed threshold on them)")
    # transfer.finetune.default_sam's rule, in words (its module imports torch: not at parse time)
    add_mixing_arguments(p, sam=None, off=None, sam_words="0.05 in fine-tuning below 100 "
                         "training images per class, else off; 0: off")
    add_class_weight_argument(p, " in the features head and in fine-tuning")
    p.add_argument("--batch-size", type=COUNT, default=None,
                   help="images per batch (default 32; fine-tuning takes at most a quarter of "
                        "the training images, at least 8)")
    p.add_argument("--val-fraction", type=FRACTION, default=None,
                   help="validation share drawn from the training images when DATA has no "
                        "val/ part (default 0.2); given, a test/ part (test rows) stays held out "
                        "for `cnnzoo evaluate --bundle ... --split test`, else it validates")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default=None,
                   help="auto (default): bf16 on CPUs with native bf16, else fp32")
    p.add_argument("--cache", metavar="DIR", default=None,
                   help="feature cache folder (default $CNNZOO_CACHE/features)")
    p.add_argument("--no-cache", dest="use_cache", action="store_false", default=None,
                   help="compute every feature afresh and store none")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted fine-tuning in --out, as it was configured: "
                        "each option left out (--model and --weights too) is the run's own")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run --out holds (its files go when this run starts "
                        "writing); without it (or --resume) such a folder is refused")
    p.add_argument("--seed", type=SEED, default=None,
                   help="the split, the heads' initialisation and the batches (default 0)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="output folder (default runs/transfer-MODEL)")
    p.add_argument("--json", action="store_true",
                   help="machine-readable output: OUT/metrics.json's document on stdout at the "
                        "end, with model, out and final as train --json has them (the "
                        "per-class table goes to stderr)")
    add_threads_argument(p)
    add_progress_argument(p)


def stages_arg(text: str) -> tuple[int, ...] | str:
    from ..models.taps import parse_stages

    if text in ("auto", "none"):
        return "auto" if text == "auto" else ()
    try:
        return parse_stages(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def config_from_args(args: argparse.Namespace) -> Any:
    """The run's `TransferConfig`: the options given, its and FinetuneConfig's defaults for
    those left out (None)."""
    from ..transfer import FinetuneConfig, TransferConfig

    def given(names: Sequence[str]) -> dict[str, Any]:
        return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}

    ft = given([n for n in FINETUNE_OPTIONS if n != "update_bn"])
    if args.update_bn is not None:
        ft["freeze_bn"] = not args.update_bn
    if "patience" in ft:
        ft["patience"] = ft["patience"] or None  # 0: off
    # --batch-size, --precision, --seed and --no-progress are the run's (TransferConfig's):
    # `transfer` hands them to fine-tuning.
    cache = {"cache_dir": args.cache, "use_cache": args.use_cache}
    # --val-fraction given keeps a test/ part held out (`run` settles it; a bare --resume takes
    # the run's choice).
    hold = getattr(args, "hold_out_test", None)
    return TransferConfig(**given(RUN_OPTIONS), **{k: v for k, v in cache.items() if v is not None},
                          hold_out_test=args.val_fraction is not None if hold is None else hold,
                          progress=args.progress, finetune=FinetuneConfig(**ft))


# Options only one step reads (fine-tuning; the features step). Given in a mode without that
# step they are ignored, and a note says so.
FINETUNE_OPTIONS = ("epochs", "min_steps", "head_epochs", "lr", "lr_decay", "update_bn",
                    "patience", "augment", "label_smoothing", "mixup", "cutmix",
                    "sam")  # fmt: skip
FEATURES_OPTIONS = ("l2", "cache", "use_cache")
# The other options of the run's settings (TransferConfig's fields of their names).
RUN_OPTIONS = ("mode", "head", "l2", "views", "img_size", "stages", "fit", "batch_size",
               "val_fraction", "precision", "keep_best", "class_weight", "seed")


def option_defaults() -> dict[str, Any]:
    """The value of each option of the run's settings when left out: TransferConfig's and
    FinetuneConfig's defaults (their parser defaults are None, so that a bare --resume can
    tell an option left out from one given, and take the run's own)."""
    from ..transfer import FinetuneConfig, TransferConfig

    run, ft = TransferConfig(), FinetuneConfig()
    values = {n: getattr(ft, n) for n in FINETUNE_OPTIONS if n != "update_bn"}
    values.update({n: getattr(run, n) for n in RUN_OPTIONS}, update_bn=not ft.freeze_bn,
                  cache=run.cache_dir, use_cache=run.use_cache)
    return values


def _option(dest: str) -> str:
    return "--no-cache" if dest == "use_cache" else "--" + dest.replace("_", "-")


def given_options(args: argparse.Namespace) -> set[str]:
    """The options of the run's settings set on the command line to something other than
    their default (a default typed out changes nothing)."""
    return {k for k, v in option_defaults().items() if getattr(args, k, None) not in (None, v)}


def check_options(args: argparse.Namespace, given: set[str] | None = None) -> list[str]:
    """Options that contradict each other or the mode: one `UsageError` line, before anything
    is loaded (the library's `check_config`, and the weights here). Returns the notes for
    options the mode merely does not use, of those `given` (default: `given_options`)."""
    from ..errors import UsageError
    from ..transfer.run import check_config

    if args.weights is not None and str(args.weights).lower() in (
            "none", "random", "scratch") and not Path(args.weights).exists():
        model = model_of(args)
        raise UsageError("transfer starts from pretrained weights (--weights imagenet or a "
                         f"checkpoint file); to train {model} from scratch: cnnzoo train "
                         f"{model} --data {args.data}")  # fmt: skip
    check_config(config_from_args(args), resume=args.resume)
    given = given_options(args) if given is None else given
    notes = []
    mode = args.mode or option_defaults()["mode"]
    unused = {"features": FINETUNE_OPTIONS, "finetune": FEATURES_OPTIONS}.get(mode, ())
    ignored = [_option(k) for k in unused if k in given]
    if ignored:
        what = "fine-tuning" if mode == "features" else "the features step"
        verb = "applies" if len(ignored) == 1 else "apply"
        notes.append(f"note: {', '.join(ignored)} only {verb} to {what}, which --mode "
                     f"{mode} does not run; ignored")  # fmt: skip
    return notes


def model_of(args: argparse.Namespace) -> str:
    """--model, else the model the --weights file records (a `cnnzoo train` checkpoint, a
    `cnnzoo convert` output), else efficientnet_lite0: what predict builds."""
    from ..engine.run import training_checkpoint
    from ..weights.files import stored_metadata

    if args.model:
        return args.model
    weights = WEIGHTS if args.weights is None else args.weights
    trained = training_checkpoint(weights)
    # A Trainer's own checkpoint (engine as a library, no meta= given) names no model: the
    # weights loader reads it as a plain state_dict, and so does this (it was a KeyError).
    if trained is not None and isinstance(trained["meta"].get("model"), str):
        return trained["meta"]["model"]
    return stored_metadata(weights).get("model") or "efficientnet_lite0"


def out_folder(args: argparse.Namespace) -> Path:
    """Where the run writes: --out, or runs/transfer-MODEL (`model_of`: also for the hint after
    an interruption, which may come before `run` has settled --model)."""
    return Path(args.out) if args.out else Path("runs") / f"transfer-{model_of(args)}"


def refuse_resume_elsewhere(out: Path, model: str) -> None:
    """A bare --resume (no --out, no --model) continues `out`, `model`'s default folder: one
    that holds nothing to resume, while another runs/transfer-MODEL/ does, is refused naming
    both. It started a new efficientnet_lite0 run with a note, where the user had fine-tuned
    `--model efficientnet_lite1` into runs/transfer-efficientnet_lite1 and meant that one."""
    from ..errors import UsageError
    from ..text import some
    from ..transfer.run import finetune_started

    if finetune_started(out):
        return
    others = [str(d) for d in sorted(out.parent.glob("transfer-*"))
              if d != out and finetune_started(d)]
    if others:
        holds = "holds one" if len(others) == 1 else "hold one each"
        raise UsageError(f"--resume without --out or --model continues {out}, the folder "
                         f"of {model} (the model by default), which holds no fine-tuning to "
                         f"resume; "
                         f"{some(others, 3)} {holds}: add --out {others[0]} (or, to start "
                         f"a new run in {out}, leave out --resume)")


def run(args: argparse.Namespace) -> int:
    from ..engine.distributed import use_threads
    from ..paths import check_folder
    from ..transfer import transfer

    settle_positional(args, "data", "cnnzoo transfer DATA")
    refuse_resume_with_overwrite(args)
    given = given_options(args)  # the notes below are for options typed, not the run's own
    out = out_folder(args)
    # --val-fraction given: a test/ part without val/ stays held out; left out on a bare
    # --resume, the run's choice (None until `keep_transfer_options` reads it).
    args.hold_out_test = True if args.val_fraction is not None else None
    if args.resume and args.out is None and args.model is None:
        refuse_resume_elsewhere(out, model_of(args))
    if args.resume:  # each option left out is the interrupted run's own
        from .resume_options import keep_transfer_options

        keep_transfer_options(args, out)
    args.hold_out_test = bool(args.hold_out_test)
    args.weights = WEIGHTS if args.weights is None else args.weights
    args.model = model_of(args)
    notes = check_options(args, given)
    check_folder(out, "--out")
    config = config_from_args(args)
    if config.cache_dir and config.use_cache and config.mode != "finetune":
        check_folder(args.cache, "--cache")
    for note in notes:
        print(f"cnnzoo transfer: {note}", file=sys.stderr)
    use_threads(args.threads)
    # The per-class table is a result, on stdout; with --json stdout holds the JSON alone.
    show = (lambda line: print(line, file=sys.stderr)) if args.json else print
    result = transfer(args.data, model=args.model, weights=args.weights, out=out,
                      config=config, resume=args.resume,
                      overwrite=args.overwrite, show=show)  # fmt: skip
    m = result.metrics
    if args.json:  # what metrics.json holds (transfer.report.write_report), as one document
        from ..text import json_text

        # The facts train --json gives too, under its keys: the run's model and folder, and the
        # kept net's validation metrics under `final`, named as `evaluate --json` names them
        # (top5 where the run recorded it: a stand-in's metrics may not).
        final = {key: m[f"val_{key}"] for key in ("loss", "acc", "top5", "balanced_acc",
                                                   "macro_f1") if f"val_{key}" in m}  # fmt: skip
        print(json_text({"model": args.model, "out": str(out), **m, "final": final,
                         "timings_s": result.timings}))
        return 0
    from ..transfer.run import validation_summary

    print(f"{args.model}: {validation_summary(m)}")
    # Only fine-tuning writes checkpoints (OUT/finetune/), for --resume.
    print(f"bundle and report in {out}/" if config.mode == "features"
          else f"bundle, report and fine-tuning checkpoints in {out}/")  # fmt: skip
    return 0


# ---------------------------------------------------------------------------------------------
# `cnnzoo predict IMAGE... --bundle DIR` (the option lives in commands/predict.py)


def class_order(names: Sequence[str], most: int = 20) -> str:
    """What the numbers of `probability_line` are: its class names in order (the first `most`
    of a long list). Without it the line's "[0.02 0.91 ...]" could be read only against
    bundle.json, and --top below the class count names only some of them."""
    from ..text import some

    more = f" ({len(names)} classes: bundle.json's class_names)" if len(names) > most else ""
    return f"Probability: [...] gives the classes in this order: {some(names, most)}{more}"


def probability_line(probs: Sequence[float]) -> str:
    """The lecture's format: "[0.   0.99 0.01 0.   0.  ]" -- numpy's print of the rounded
    probabilities, in class order, on one line."""
    import numpy as np

    # One line whatever the class count: numpy wraps at 75 characters (15 classes), and the
    # newline, escaped as every printed line is, showed as a literal '\n' in the middle.
    return np.array2string(np.round(np.asarray(probs, dtype=np.float64), 2), precision=2,
                           suppress_small=True, max_line_width=sys.maxsize)  # fmt: skip


def predict_with_bundle(bundle_dir: str | os.PathLike[str], paths: Sequence[Path], *,
                        top: int = 5, as_json: bool = False, batch_size: int = 16,
                        precision: str = "auto", progress: bool = True,
                        problems: Sequence[dict[str, str]] = ()) -> int:  # fmt: skip
    """Print, per image, "Prediction: <class>  Probability: [...]" and the top-k classes (or
    JSON), a batch at a time (`predict.predict_files`), after the `problems` records (folders
    without images: `predict.expand_paths`). An unreadable image prints one error line and the
    others are still predicted; returns 1 if any failed (or there are problems), else 0."""
    from ..transfer import load_bundle
    from .predict import format_predictions, predict_files, print_results

    bundle = load_bundle(bundle_dir)
    names = bundle.class_names
    own = None if precision == "auto" else precision  # auto: the run's own, as recorded
    if not as_json:  # JSON names each probability; the line's bare numbers need the order
        print(f"cnnzoo predict: note: {class_order(names)}", file=sys.stderr)

    def records() -> Iterator[dict[str, Any]]:
        for r, probs in predict_files(
                paths, lambda path: bundle.load_images([path])[0],
                lambda batch: bundle.predict_loaded(batch, precision=own).probabilities,
                batch_size=batch_size, progress=progress):  # fmt: skip
            if probs is not None:
                # Stable: among equal probabilities the lower class first, as `prediction`
                # (argmax).
                order = probs.argsort(descending=True, stable=True)[: max(1, min(top, len(names)))]
                order = order.tolist()
                r.update(prediction=names[int(probs.argmax())],
                         probabilities=dict(zip(names, probs.tolist(), strict=True)),
                         predictions=[{"rank": k, "index": j, "class": names[j],
                                       "probability": float(probs[j])}
                                      for k, j in enumerate(order, 1)])  # fmt: skip
            yield r

    def lines(r: dict[str, Any]) -> list[str]:
        return [f"Prediction: {r['prediction']}  Probability: "
                f"{probability_line(list(r['probabilities'].values()))}",
                *format_predictions(r["predictions"])]  # fmt: skip

    return 1 if print_results(itertools.chain(problems, records()), as_json=as_json,
                              lines=lines) else 0  # fmt: skip
