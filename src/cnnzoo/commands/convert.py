"""`cnnzoo convert IN OUT --model NAME`: any supported checkpoint -> .safetensors, cnnzoo keys."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", metavar="IN", help="checkpoint: .pth/.pt, .safetensors, Keras .h5")
    p.add_argument("output", metavar="OUT", help="output file (.safetensors)")
    p.add_argument("--model", required=True, help="zoo model the checkpoint is for, e.g. vgg16")


def run(args: argparse.Namespace) -> int:
    import logging

    from ..errors import WeightsError
    from ..weights import convert_file

    if not args.output.endswith(".safetensors"):
        raise WeightsError(f"{args.output}: the output must end in .safetensors")
    log = logging.getLogger("cnnzoo.weights")
    level = log.level
    log.setLevel(logging.ERROR)  # the notes are printed below, once
    try:
        info = convert_file(args.input, args.output, args.model)
    finally:
        log.setLevel(level)
    print(f"{args.input} ({info.layout} layout) -> {args.output} ({args.model}, cnnzoo keys)")
    for note in info.notes:
        if not info.head_loaded and "classifier re-initialised" in note:
            note = "the checkpoint has no classifier: the output holds the backbone only"
        print(f"  note: {note}")
    return 0
