"""`cnnzoo compare RUN...`: one table of `cnnzoo train` runs (what each net cost and scored)
and what differed between them besides the model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..text import json_text, shown


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="run folders of `cnnzoo train` (--out; their last.pt is read) or "
                        "checkpoint files, e.g. runs/*")  # fmt: skip
    p.add_argument("--plot", metavar="PNG",
                   help="also draw the runs' learning curves over one another")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def run(args: argparse.Namespace) -> int:
    from ..engine.compare import (
        aux_loss_note,
        differences,
        smoothing_note,
        summarize_runs,
        table_names,
    )

    if args.plot:
        from .evaluate import check_picture_path

        check_picture_path(args.plot, "--plot")
    skipped: list[str] = []

    def skip(line: str) -> None:
        print(shown(line), file=sys.stderr)
        skipped.append(line)

    runs = summarize_runs(args.runs, skip=skip)
    diffs = differences(runs)
    if args.plot:
        from ..engine.report import plot_runs

        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        plot_runs(runs, Path(args.plot), caption=aux_loss_note(runs))
    if args.json:
        # The paths left out too: `compare runs/* --json` read fewer runs than it was given
        # without a word a script could see (the lines went to stderr only).
        print(json_text({"runs": [r.to_dict() for r in runs], "differences": diffs,
                         "skipped_runs": skipped}, indent=1))
        return 0
    m = runs[0].metric
    head = ["run", "model", "params", "MMACs", "input", "epochs", "train s", "img/s",
            "train loss", f"train {m}", f"val {m}", f"best val {m}"]  # fmt: skip
    rows = [[shown(r.label), shown(name), f"{r.params:,}", _num(r.macs and r.macs / 1e6, ".2f"), r.input,
             str(r.epochs) if r.epochs >= r.planned else f"{r.epochs}/{r.planned}",
             f"{r.train_seconds:.1f}", _num(r.images_per_s, ".0f"),
             _num(r.train_loss, ".4f"), _num(r.train_metric, ".4f"),
             _num(r.final, ".4f") + ("" if r.final_epoch == r.epochs else f" ({r.final_epoch})"),
             "-" if r.best is None else f"{r.best:.4f} ({r.best_epoch})"]
            for r, name in zip(runs, table_names(runs), strict=True)]  # fmt: skip
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    for row in [head, *rows]:  # text left, numbers right
        print("  ".join(c.ljust(w) if i < 2 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip())
    print("MMACs: millions of multiply-adds of one image at the run's input, as `cnnzoo models` "
          "counts them; train s and img/s: as measured during each run, on its machine and load")
    if any(r.epochs < r.planned and not r.weights_only for r in runs):
        print("N/M epochs: N of the M the run was to train (interrupted, or stopped early)")
    if any(r.epochs < r.planned and r.weights_only for r in runs):
        print("N/M epochs of a best.pt: the weights and scores of epoch N (the lowest "
              "validation loss so far; a U-Net's best Dice), of the M the run was to train")
    if aux := aux_loss_note(runs):
        print(aux)
    if smoothed := smoothing_note(runs):
        # A student read LeNet-5's 0.5658 as far from trained: the smoothed targets' own entropy.
        print(smoothed)
    if any(r.final_epoch != r.epochs for r in runs):
        # (Early stopping restores them; so does the demo's scratch run, which has no --patience.)
        print(f"val {m} (E): of epoch E's weights, the best epoch's, which the run restored at "
              "the end")
    # Runs of one net (the same options) compare the settings below, or repeat one another.
    one_net = len({r.name for r in runs}) == 1
    if diffs:
        print(f"these runs of {shown(runs[0].name)} differ in:" if one_net else
              "besides the model, these runs differ in (so the table compares more than the "
              "nets):")  # fmt: skip
        for line in diffs:
            print(f"  {shown(line)}")
    elif len(runs) > 1 and one_net:  # (not "the nets are what differs": they are one net)
        print(f"same net ({shown(runs[0].name)}), data, validation images, input and training "
              "recipe: the runs repeat one another")
    elif len(runs) > 1:  # (one run is compared with nothing)
        print("same data, validation images, input and training recipe: the nets are what "
              "differs")
    if args.plot:  # a note on the file written, on stderr as train's "learning curves:" line
        print(f"learning curves: {args.plot}", file=sys.stderr)
    return 0
