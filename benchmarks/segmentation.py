"""U-Net on the synthetic cells: foreground IoU on held-out images, and what the paper's border
weight map buys in instance counts (Ronneberger et al. 2015, Sec. 3: w0 = 10, sigma = 5 px).

    flock /tmp/cnnzoo-bench.lock .venv/bin/python benchmarks/segmentation.py [--epochs N] ...

Trains the same 'same'-padding U-Net (BatchNorm, base width 8) once per loss on the same
training images and the same seed, then evaluates every run on held-out images from the 'test'
seed stream (never seen in training or validation), whole 256 x 256 images in one pass.
Prints a table: training minutes, foreground IoU / Dice, pixel accuracy, and the instance
count error (4-connected components of the predicted foreground vs the true cells; cells that
touch are separate components of the truth because of its one-pixel seams). The issue's targets:
IoU >= 0.90 within 10 minutes of training on 2 cores, and a lower count error with the border
weights than with plain cross-entropy. Each run's folder holds curves.png and validation.png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from _cli import names_of, run, usable_cores

from cnnzoo.commands.argtypes import COUNT, LEARNING_RATE, SEED
from cnnzoo.data.cells import make_cells
from cnnzoo.segmentation.losses import LOSSES
from cnnzoo.segmentation.metrics import SegmentationAccumulator
from cnnzoo.segmentation.training import train


@torch.no_grad()
def evaluate_held_out(model, mean, std, n: int, seed: int) -> dict[str, float]:
    """Metrics of `model` on `n` cell images of the 'test' stream, whole images, batches of 8."""
    data = make_cells(n, seed=seed, split="test")
    acc = SegmentationAccumulator(2, ["background", "cell"], count_instances=True)
    model.eval()
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    for start in range(0, n, 8):
        x = torch.from_numpy(data.images[start : start + 8, None]).float().div(255)
        y = torch.from_numpy(data.masks[start : start + 8]).long()
        logits = model((x - m) / s)
        acc.update(logits, y, torch.zeros(()))
    return acc.compute()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--losses", type=names_of(LOSSES, "loss"), default="ce,weighted_ce",
                    help=f"comma-separated losses to compare, of {', '.join(LOSSES)} "
                         "(default ce,weighted_ce)")
    ap.add_argument("--epochs", type=COUNT, default=25)
    ap.add_argument("--cells", type=COUNT, default=200, help="synthetic images (80%% train)")
    ap.add_argument("--test", type=COUNT, default=48, help="held-out images")
    ap.add_argument("--crop", type=COUNT, default=128)
    ap.add_argument("--batch-size", type=COUNT, default=8)
    ap.add_argument("--base-width", type=COUNT, default=8)
    ap.add_argument("--lr", type=LEARNING_RATE, default=3e-3)
    ap.add_argument("--seed", type=SEED, default=0)
    ap.add_argument("--threads", type=COUNT, default=usable_cores(),
                    help="torch threads (default: the cores this process may use; 1 on a "
                         "shared machine)")
    ap.add_argument("--out", default="runs/bench-segmentation",
                    help="one folder per loss in here (default runs/bench-segmentation)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; U-Net 'same' + BN, "
          f"base width {args.base_width}, {args.crop}px crops, batch {args.batch_size}, "
          f"{args.epochs} epochs, {args.cells} synthetic images, {args.test} held out")
    rows = []
    for loss in args.losses:
        out = Path(args.out) / loss.replace("+", "_")
        t0 = time.perf_counter()
        run = train("cells", out_dir=out, loss=loss, cells=args.cells, crop=args.crop,
                    batch_size=args.batch_size, base_width=args.base_width, epochs=args.epochs,
                    lr=args.lr, seed=args.seed, progress=False, tensorboard=False, say=print,
                    overwrite=True)
        minutes = (time.perf_counter() - t0) / 60
        train_min = sum(r["seconds"] for r in run.result.history) / 60
        held = evaluate_held_out(run.model, run.meta["mean"], run.meta["std"], args.test,
                                 args.seed)
        rows.append({"loss": loss, "train_min": train_min, "total_min": minutes,
                     "precision": run.result.precision.describe(),
                     **{k: held[k] for k in ("iou", "dice", "pixel_acc", "count_err",
                                             "count_rel")}})
        (out / "held_out.json").write_text(json.dumps(rows[-1], indent=1))

    print()
    print(f"{'loss':<12} {'train min':>9} {'IoU':>7} {'Dice':>7} {'pix acc':>8} "
          f"{'count err':>9} {'rel':>6}   precision")
    for r in rows:
        print(f"{r['loss']:<12} {r['train_min']:9.1f} {r['iou']:7.4f} {r['dice']:7.4f} "
              f"{r['pixel_acc']:8.4f} {r['count_err']:9.2f} {r['count_rel']:6.1%}   "
              f"{r['precision']}")
    print("\ncount err: mean |predicted - true| cells per held-out image; rel: relative to the "
          "true count. Target: IoU >= 0.90 within 10 min.")
    base = next((r for r in rows if r["loss"] == "ce"), None)
    for r in rows:
        if base is not None and r is not base:
            lower = base["count_err"] / max(r["count_err"], 1e-9)
            how = (f"{lower:.1f}x lower" if lower > 1
                   else f"{r['count_err'] / max(base['count_err'], 1e-9):.1f}x higher or equal")
            print(f"{r['loss']} vs ce: count error {r['count_err']:.2f} vs {base['count_err']:.2f} "
                  f"cells per image ({how})")


if __name__ == "__main__":
    run(main)
