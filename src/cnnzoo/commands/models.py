"""`cnnzoo models`: the zoo as a table, with parameters and operations counted by the code."""

from __future__ import annotations

import argparse

from ..text import json_text, plural
from .argtypes import IMG_SIZE


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pattern", default="*",
                   help="shell-style filter, e.g. 'res*' or 'vgg1?' (default: all)")
    p.add_argument("--img-size", type=IMG_SIZE, default=None, metavar="N",
                   help="count parameters and multiply-adds for N x N inputs (default: each model's "
                        "own size), e.g. 28 for Fashion-MNIST; '-' where a net does not take it")
    p.add_argument("--channels", type=int, choices=(1, 3), default=None,
                   help="with --img-size: input channels (default: each model's own)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    from ..errors import UnknownModelError
    from ..models import get_config, list_models
    from ..models.flops import table_counts
    from ..models.registry import model_options

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
    if args.img_size is None:
        counts: dict[str, tuple[int, int | None]] = dict(table_counts(names))
    else:  # not cached: counting every model at another size takes about 10 s
        from ..models.flops import counts_at

        counts = {n: counts_at(n, args.channels or get_config(n).input_size[0], args.img_size)
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
    header = f"{'model':<22}{'params':>14}{'GMACs':>9}  {'input':<11}{'classes':>7}  year  paper"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['name']:<22}{r['params']:>14,}{_billions(r['gmacs']):>9}  {r['input']:<11}"
            f"{r['classes']:>7}  {r['year']}  {r['paper']}"
        )
    where = "at the default input size" if args.img_size is None else \
        f"at {args.img_size}x{args.img_size} ('-': a size the net does not take), with each " \
        "model's default head"
    print(
        f"\n{plural(len(rows), 'model')}. GMACs: billions of multiply-adds (2 FLOPs each) of "
        f"one image, {where}: what the papers and torchvision's tables list as GFLOPs."
    )
    return 0


def _billions(g: float | None) -> str:
    if g is None:
        return "-"
    # LeNet-sized nets would print 0.00 with two decimals.
    return f"{g:.2f}" if g >= 0.1 else f"{g:.4f}"
