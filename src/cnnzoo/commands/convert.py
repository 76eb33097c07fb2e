"""`cnnzoo convert IN OUT [--model NAME]`: any supported checkpoint -> .safetensors, cnnzoo keys
(a `cnnzoo train` checkpoint names its own model)."""

from __future__ import annotations

import argparse
import sys

from .argtypes import model_arg


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", metavar="IN", help="checkpoint: .pth/.pt, .safetensors, Keras .h5")
    p.add_argument("output", metavar="OUT", help="output file (.safetensors)")
    p.add_argument("--model", help="zoo model the checkpoint is for, e.g. vgg16 (a checkpoint "
                                   "of `cnnzoo train` names its own)")
    p.add_argument("--model-arg", type=model_arg, action="append", default=[],
                   metavar="KEY=VALUE",
                   help="model option the checkpoint was built with, e.g. width_mult=0.25 "
                        "(repeatable; recorded in OUT for predict)")  # fmt: skip
    p.add_argument("--classes", metavar="NAMES|FILE",
                   help="the class names of the checkpoint's outputs, in order: a,b,c or a text "
                        "file of one per line (recorded in OUT for predict)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    from ..errors import UsageError, WeightsError
    from ..weights import convert_file
    from ..weights.classes import given_class_names
    from ..weights.files import read_checkpoint

    if not args.output.endswith(".safetensors"):
        raise WeightsError(f"{args.output}: the output must end in .safetensors")
    taken = sorted({"num_classes", "in_chans"} & {k for k, _ in args.model_arg})
    if taken:  # the file's head and first conv say them; a given one dropped the trained head
        raise UsageError(f"{', '.join(taken)}: set by the checkpoint itself, not by --model-arg")
    if _convert_training_checkpoint(args):
        return 0
    if args.model is None:
        if not Path(args.input).is_file():  # missing, or a folder: that, not a missing --model
            read_checkpoint(args.input)  # raises its one line
        raise UsageError(f"{args.input} does not say which zoo model it holds: pass --model NAME "
                         "(`cnnzoo models` lists them)")  # fmt: skip
    log = logging.getLogger("cnnzoo.weights")
    level = log.level
    log.setLevel(logging.ERROR)  # the notes are printed below, once
    names = given_class_names(args.classes) if args.classes else None
    try:
        info = convert_file(args.input, args.output, args.model, class_names=names,
                            **dict(args.model_arg))
    finally:
        log.setLevel(level)
    # On stderr, as every command's notes, and before the result line (stdout), as predict's
    # and evaluate's: after it, GoogLeNet's transform_input note read as about another file.
    for note in info.notes:
        print(f"cnnzoo convert: note: {note}", file=sys.stderr, flush=True)
    print(f"{args.input} ({info.layout} layout) -> {args.output} ({args.model}, cnnzoo keys)")
    return 0


def _convert_training_checkpoint(args: argparse.Namespace) -> bool:
    """A `cnnzoo train` checkpoint: its weights, with what predicting needs besides them (model
    options, class names, input size and the training images' mean/std) in the metadata, so
    that `cnnzoo predict --weights OUT` predicts as `--weights best.pt` does. False for any
    other file (converted by layout as usual)."""
    from pathlib import Path

    from ..engine.run import model_from_checkpoint, training_checkpoint
    from ..errors import UsageError
    from ..weights.files import save_safetensors, training_metadata

    ckpt = training_checkpoint(args.input)
    if ckpt is None:
        return False
    if args.model_arg or args.classes:  # ignored: the checkpoint records them
        raise UsageError(f"{args.input} is a cnnzoo train checkpoint, which records its model "
                         "options and class names: leave out --model-arg and --classes")
    model, meta = model_from_checkpoint(args.input, ckpt)
    if args.model is not None and meta["model"] != args.model:
        raise UsageError(f"{args.input} holds {meta['model']}, not {args.model}: pass --model "
                         f"{meta['model']}")  # fmt: skip
    save_safetensors(model.state_dict(), args.output,
                     {**training_metadata(ckpt), "source_file": Path(args.input).name})
    print(f"{args.input} (a cnnzoo train checkpoint) -> {args.output} ({meta['model']}, with its "
          "classes and input)")
    return True
