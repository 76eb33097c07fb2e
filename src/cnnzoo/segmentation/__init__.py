"""U-Net segmentation: image/mask pairs -> a trained net -> masks of images of any size
(docs/segmentation.md). `cnnzoo train unet`, `cnnzoo segment` and `cnnzoo evaluate` call
what is here.

- `train(data, out_dir=..., loss=..., epochs=...)`: a run on 'cells', a folder of `images/` +
  `masks/` or a CSV manifest (`training`); `load_segmenter(checkpoint)` gives its net and meta.
- `predict_tiled(model, image, mean=..., std=..., output="mask")`: the paper's overlap-tile
  prediction of one image of any size (`tiling`).
- `evaluate_segmenter(checkpoint, data, split=...)`: the scores `cnnzoo evaluate` prints
  (`evaluation`).
- `load_segmentation(source)`, `train_transform(crop)`, `PadToNet`: the data and transforms, to
  assemble a run from the engine's parts (`data`); `SegmentationTask`: the loss and metrics the
  engine's `Trainer` takes (`task`).
- Also `losses` (the border weight map, Dice), `metrics` (Dice and IoU from sums over the whole
  set) and `visual` (contour overlays).

The names are imported on first use: `import cnnzoo.segmentation` does not import torch.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what a type checker sees for the names imported on first use (below)
    from .data import (
        PadToNet,
        SegmentationSet,
        SegmentationSplits,
        load_segmentation,
        train_transform,
    )
    from .evaluation import evaluate_segmenter
    from .task import SegmentationTask
    from .tiling import predict_tiled
    from .training import SegmentationRun, load_segmenter, train

# Each name and the submodule that holds it.
_HOMES = {
    "PadToNet": "data",
    "SegmentationSet": "data",
    "SegmentationSplits": "data",
    "load_segmentation": "data",
    "train_transform": "data",
    "evaluate_segmenter": "evaluation",
    "SegmentationTask": "task",
    "predict_tiled": "tiling",
    "SegmentationRun": "training",
    "load_segmenter": "training",
    "train": "training",
}
_SUBMODULES = ("data", "evaluation", "losses", "metrics", "task", "tiling", "training", "visual")


def __getattr__(name: str):
    import importlib

    if name in _HOMES:
        return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    if name in _SUBMODULES:  # `cnnzoo.segmentation.tiling.predict_tiled` without its import
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    # The lazy names too, so that a notebook's tab completion offers them before first use.
    return sorted({*globals(), *_HOMES, *_SUBMODULES})


__all__ = [
    "PadToNet",
    "SegmentationRun",
    "SegmentationSet",
    "SegmentationSplits",
    "SegmentationTask",
    "evaluate_segmenter",
    "load_segmentation",
    "load_segmenter",
    "predict_tiled",
    "train",
    "train_transform",
]
