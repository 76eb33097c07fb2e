"""`cnnzoo models`: the zoo as a table, with parameters and operations counted by the code."""

from __future__ import annotations

import argparse
import json

from ..text import plural


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pattern", default="*", help="shell-style filter, e.g. 'res*' or 'vgg1?'")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    from ..errors import UnknownModelError
    from ..models import get_config, list_models
    from ..models.flops import table_counts
    from ..models.registry import model_options

    rows = []
    names = list_models(args.pattern)
    counts = table_counts(names)
    for name in names:
        cfg = get_config(name)
        specs = model_options(name)
        rows.append(
            {
                "name": name,
                "params": counts[name][0],
                "gflops": counts[name][1] / 1e9,
                "input": "x".join(str(v) for v in cfg.input_size),
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
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        glob = "" if set("*?[") & set(args.pattern) else f" (a pattern: '*{args.pattern}*' " \
            "matches names that contain it)"
        raise UnknownModelError(f"no model matches {args.pattern!r}{glob}; `cnnzoo models` lists "
                                "them all")  # fmt: skip
    header = f"{'model':<22}{'params':>14}{'GFLOPs':>9}  {'input':<11}{'classes':>7}  year  paper"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['name']:<22}{r['params']:>14,}{_gflops(r['gflops']):>9}  {r['input']:<11}"
            f"{r['classes']:>7}  {r['year']}  {r['paper']}"
        )
    print(
        f"\n{plural(len(rows), 'model')}. GFLOPs: one multiply-add counted "
        "as one operation, at the default input size (the convention of the papers and of "
        "torchvision's tables)."
    )
    return 0


def _gflops(g: float) -> str:
    # LeNet-sized nets would print 0.00 with two decimals.
    return f"{g:.2f}" if g >= 0.1 else f"{g:.4f}"
