"""`cnnzoo models`: the zoo as a table, with parameters and operations counted by the code."""

from __future__ import annotations

import argparse

from ..text import json_text, plural, some
from .argtypes import IMG_SIZE, model_arg


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pattern", default="*",
                   help="shell-style filter, e.g. 'res*' or 'vgg1?' (default: all)")
    p.add_argument("--img-size", type=IMG_SIZE, default=None, metavar="N",
                   help="count parameters and multiply-adds for N x N inputs (default: each model's "
                        "own size), e.g. 28 for Fashion-MNIST; '-' where a net does not take it")
    p.add_argument("--channels", type=int, choices=(1, 3), default=None,
                   help="with --img-size: input channels (default: each model's own)")
    p.add_argument("--model-arg", type=model_arg, action="append", default=[],
                   metavar="KEY=VALUE",
                   help="count the models built with this option, as `train --model-arg` builds "
                        "them, e.g. --pattern googlenet --model-arg reductions=false "
                        "(repeatable)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    from ..errors import UnknownModelError
    from ..models import get_config, list_models
    from ..models.flops import table_counts
    from ..models.registry import canonical_options, model_options

    if args.channels is not None and args.img_size is None:
        from ..errors import UsageError

        raise UsageError("--channels goes with --img-size (the input to count at)")
    rows = []
    names = list_models(args.pattern)
    if not names:  # with --json too: a mistyped pattern is not a successful empty list
        glob = "" if set("*?[") & set(args.pattern) else f" (a pattern: '*{args.pattern}*' " \
            "matches names that contain it)"
        raise UnknownModelError(f"no model matches {args.pattern!r}{glob}; `cnnzoo models` lists "
                                "them all")  # fmt: skip
    options = dict(args.model_arg)
    _check_options(names, options)
    if args.img_size is None and not options:
        counts: dict[str, tuple[int, int | None]] = dict(table_counts(names))
    else:  # not cached: counting every model at another size takes about 10 s
        from ..models.flops import counts_at

        counts = {n: counts_at(n, args.channels or get_config(n).input_size[0],
                               args.img_size or get_config(n).input_size[1], **options)
                  for n in names}  # fmt: skip
    for name in names:
        cfg = get_config(name)
        specs = model_options(name)
        size = cfg.input_size if args.img_size is None else (
            args.channels or cfg.input_size[0], args.img_size, args.img_size)
        macs = counts[name][1]
        rows.append(
            {
                "name": name,
                "params": counts[name][0],
                "gmacs": None if macs is None else macs / 1e9,
                # The same number under the name torchvision's tables give it (they count a
                # multiply-add as one operation); kept for scripts that read it.
                "gflops": None if macs is None else macs / 1e9,
                "input": "x".join(str(v) for v in size),
                "classes": cfg.num_classes,
                "year": cfg.year,
                "task": cfg.task,
                # What --model-arg built it with, as the net takes it (paper_5x5=1: True).
                "model_args": canonical_options(name, options),
                "options": list(cfg.options),  # --model-arg / create_model keywords
                # Each option's default, and the values it takes where that set is fixed.
                "option_defaults": {k: spec.default for k, spec in specs.items()},
                "option_choices": {k: list(spec.choices) for k, spec in specs.items()
                                   if spec.choices is not None},
                "paper": cfg.paper,
            }
        )
    if args.json:
        print(json_text(rows, indent=2))
        return 0
    label = {r["name"]: " ".join([r["name"], *(f"{k}={v}" for k, v in r["model_args"].items())])
             for r in rows}  # fmt: skip
    width = max(22, *(len(v) + 2 for v in label.values()))
    header = f"{'model':<{width}}{'params':>14}{'GMACs':>9}  {'input':<11}{'classes':>7}  year  paper"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{label[r['name']]:<{width}}{r['params']:>14,}{_billions(r['gmacs']):>9}  "
            f"{r['input']:<11}{r['classes']:>7}  {r['year']}  {r['paper']}"
        )
    where = "at the default input size" if args.img_size is None else \
        f"at {args.img_size}x{args.img_size} ('-': a size the net does not take), with each " \
        "model's default head"
    print(
        f"\n{plural(len(rows), 'model')}. GMACs: billions of multiply-adds (2 FLOPs each) of "
        f"one image, {where}: what the papers and torchvision's tables list as GFLOPs."
    )
    return 0


def _check_options(names: list[str], options: dict[str, object]) -> None:
    """Every model the pattern matches must take every --model-arg: counting the others without
    it would print numbers for nets other than the ones asked for."""
    import difflib

    from ..errors import UsageError
    from ..models import get_config
    from ..models.registry import no_option_message

    # Not options of a net but its input and head: 'resnet18 has no option 'in_chans': it has
    # none besides num_classes and in_chans' contradicted itself (and unet's list left it out).
    if "in_chans" in options:
        raise UsageError("--model-arg in_chans: the input's channels are --channels, with "
                         "--img-size (cnnzoo models --img-size 28 --channels 1)")
    if "num_classes" in options:
        raise UsageError("--model-arg num_classes: models counts each net with its own head "
                         "(the classes column); `cnnzoo compare` counts a run's net with its "
                         "head")
    for key in options:
        without = [n for n in names if key not in get_config(n).options]
        if without and len(names) == 1:  # as train says it: 'did you mean reductions?', ...
            raise UsageError(f"--model-arg {key}: {no_option_message(names[0], key)}")
        if without:
            takers = [n for n in names if n not in without]
            known = sorted({o for n in names for o in get_config(n).options})
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = (f"--pattern '{takers[0]}' counts {takers[0]} with it" if takers
                    else (f"did you mean {close[0]}? " if close else "")
                    + "`cnnzoo models --json` lists each model's options")  # fmt: skip
            if len(takers) > 1:  # 'resnet*': the five CIFAR nets have it, not resnet20 alone
                hint = f"{some(takers)} have it ({hint})"
            raise UsageError(f"--model-arg {key}: {', '.join(without[:3])}"
                             f"{' ...' if len(without) > 3 else ''} "
                             f"{'has' if len(without) == 1 else 'have'} no option {key!r}; {hint}")


def _billions(g: float | None) -> str:
    if g is None:
        return "-"
    # LeNet-sized nets would print 0.00 with two decimals.
    return f"{g:.2f}" if g >= 0.1 else f"{g:.4f}"
