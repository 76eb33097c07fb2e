"""A segmentation run: data + U-Net + loss -> the engine's `Trainer` -> checkpoint and report.

`train(...)` is what `cnnzoo train unet --task segmentation` calls; the command only parses.
`load_segmenter(checkpoint)` rebuilds the trained net for `cnnzoo segment`.

Defaults are the recipe measured on 2 CPU cores (docs/segmentation.md): 'same' padding, base
width 16, 128 x 128 random crops, batch 8, AdamW with a one-cycle schedule peaking at 3e-3.
Normalisation uses the training images' own mean/std (training from scratch), or the encoder's
ImageNet statistics when it starts from pretrained weights.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.loader import BatchLoader
from ..engine.checkpoint import caller_rng_kept
from ..engine.distributed import DistContext, unwrap_model
from ..engine.loop import FitResult, TrainConfig, Trainer, check_mixing, check_out_dir
from ..engine.precision import Precision
from ..errors import ArgumentKindError, CnnzooError, DataError, ModelOptionError, UsageError
from ..text import shown, to_stderr
from .data import (
    PadToNet,
    SegmentationSet,
    SegmentationSplits,
    load_segmentation,
    rows_ordered,
    train_transform,
)
from .task import SegmentationTask
from .tiling import receptive_margin

# What differs from the engine's classification defaults (SGD 0.1 suits BN classifiers on
# Fashion-MNIST; a U-Net trained on a few hundred crops converges faster and more reliably with
# AdamW, and wants no weight decay on its tiny decoder).
SEGMENTATION_DEFAULTS: dict[str, Any] = {
    "epochs": 20,
    "optimizer": "adamw",
    "lr": 3e-3,
    "weight_decay": 1e-4,
    "schedule": "onecycle",
    "pct_start": 0.15,
}


@dataclass
class SegmentationRun:
    """What `train` returns: the engine's `FitResult`, the trained model, the data and task."""

    result: FitResult
    # Out of the repr: a notebook cell ending in `run` printed the whole U-Net, 90 lines.
    model: nn.Module = field(repr=False)
    splits: SegmentationSplits
    task: SegmentationTask
    meta: dict[str, Any]


def segmentation_config(**overrides: Any) -> TrainConfig:
    """`TrainConfig` with the segmentation defaults above, then `overrides`."""
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise ArgumentKindError(f"unknown TrainConfig fields: {', '.join(sorted(unknown))}")
    return TrainConfig(**{**SEGMENTATION_DEFAULTS, **overrides})


def _legal_crop(model: nn.Module, size: int, limit: int) -> int:
    """A training crop (input side) the net accepts, at most `limit` (the images' side, at least
    the net's `min_size`): `size` snapped to a multiple of 16 in 'same' mode; in 'valid' mode
    `size` is the output side asked for, and the crop the smallest legal input (188 + 16k) whose
    output is at least that (128 -> 316 in, 132 out; the paper's 388 -> 572), as far as the
    images allow. (`size` as the input gave the default 128 a 188 input scoring 4 x 4 pixels.)"""
    if getattr(model, "padding", "same") == "valid":
        from ..models.unet import valid_input_size

        n = valid_input_size(size)
        while n > limit and n - 16 >= model.min_size:  # legal sizes are 16 apart
            n -= 16
        return n
    return max(16, min(size, limit) // 16 * 16)


def _context(model: nn.Module) -> int:
    """Pixels per side a 'valid' net trims (92 for 4 levels), 0 in 'same' mode."""
    if getattr(model, "padding", "same") != "valid":
        return 0
    return (model.min_size - model.output_size(model.min_size)) // 2


def _whole_input(model: nn.Module) -> Callable[[int], int]:
    """The smallest input side whose output covers `n` pixels: the next multiple of the net's
    alignment in 'same' mode (16; 32 with a classifier encoder), n + 184 or a little more in
    'valid' mode (the net trims 92 px per side)."""
    if getattr(model, "padding", "same") == "valid":
        from ..models.unet import valid_input_size

        return valid_input_size
    align = receptive_margin(model)[1]
    return lambda n: max(math.ceil(n / align) * align, align)


def _val_batch_size(batch_size: int, tile: int, pixels: int) -> int:
    """Validation images per batch: `batch_size`, at least 16, but holding no more pixels than
    16 training tiles (`tile` px a side) and at least one image of `pixels` (as fed to the net).
    Validation images of one size stay whole, so 16 of 1440 x 1080 took 4.85 GB at 6 images;
    the metrics are sums over pixels, so the batching does not change them."""
    return max(1, min(max(batch_size, 16), 16 * tile * tile // max(pixels, 1)))


def build_model(
    num_classes: int, in_chans: int, *, model: str = "unet", padding: str = "same",
    base_width: int | None = None, encoder_name: str | None = None, encoder_weights: Any = None,
    model_kwargs: dict[str, Any] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """The zoo U-Net and the kwargs that rebuild it (stored in the checkpoint; the encoder's
    pretrained weights are not among them: the checkpoint holds the trained weights)."""
    from ..models import create_model, get_config

    if get_config(model).task != "segmentation":
        from ..models.unet import ENCODERS

        how = (f"use --encoder {model} to make {model} its contracting path" if model in ENCODERS
               else f"its --encoder may be one of {', '.join(ENCODERS)}")  # fmt: skip
        raise DataError(f"{model} is a classifier: segmentation trains unet ({how}).")
    _check_encoder(encoder_name, encoder_weights, base_width)
    _check_model_kwargs(model, model_kwargs)
    kwargs: dict[str, Any] = {"padding": padding, **(model_kwargs or {})}
    if encoder_name:
        kwargs["encoder_name"] = encoder_name
        try:
            net = create_model(model, num_classes=num_classes, in_chans=in_chans,
                               encoder_weights=encoder_weights, **kwargs)
        except CnnzooError as exc:
            raise _encoder_error(exc, model) from None
    else:
        kwargs["base_width"] = 16 if base_width is None else base_width
        net = create_model(model, num_classes=num_classes, in_chans=in_chans, **kwargs)
    return net, kwargs


# Options with their own flag: a --model-arg of the same name lost to the flag's default
# (base_width) or silently beat the flag (padding).
_OWN_FLAGS = {"padding": "--padding", "base_width": "--base-width", "encoder_name": "--encoder",
              "encoder_weights": "--encoder-weights"}
# What the data decide, by cnnzoo's and segmentation_models_pytorch's names (smp.Unet(classes=3,
# in_channels=1)): as --model-arg they ended in a traceback ('create_model() got multiple
# values for keyword argument num_classes'), after the data had loaded.
_SET_BY_DATA = {"num_classes": "the classes: the masks' values, --classes or classes.txt",
                "classes": "the classes: the masks' values, --classes or classes.txt",
                "in_chans": "the channels: the images' own (grey files: 1)",
                "in_channels": "the channels: the images' own (grey files: 1)"}


def _check_model_kwargs(model: str, model_kwargs: dict[str, Any] | None) -> None:
    """Refuse in one line, before the data are loaded, a --model-arg the run sets otherwise
    (a flag of its own, or the data) or that the U-Net does not take."""
    from ..models import get_config
    from ..models.registry import check_options

    kwargs = model_kwargs or {}
    for option in kwargs:
        if option in _OWN_FLAGS:
            raise UsageError(f"{option} has an option of its own: use {_OWN_FLAGS[option]} "
                             f"(train({option}=...) in Python), not --model-arg")
        if option in _SET_BY_DATA:
            raise UsageError(f"{option}: set by the data ({_SET_BY_DATA[option]}), not by "
                             "--model-arg")
    if get_config(model).task == "segmentation":  # a classifier is refused with its own words
        check_options(model, kwargs)


def _check_settings(*, crop: Any, batch_size: Any, val_fraction: Any, cells: Any,
                    elastic: Any, jitter: Any, w0: Any, sigma: Any, count_instances: Any) -> None:
    """One `UsageError` line for a `train` setting the command line's parser refuses (or, for
    `jitter`, which it does not have, one that cannot be a jitter), before the data load: from
    Python crop=0 or -5 trained on a snapped tile, val_fraction=3 and a negative w0 or elastic
    were taken without a word, and sigma=0 made the border weights infinite."""
    # numpy's numbers too (crop=np.int64(64) from np.arange), as they were taken before.
    from ..models.base import is_integral, is_real

    for name, value in (("crop", crop), ("batch_size", batch_size)):
        if not is_integral(value):
            raise UsageError(f"{name} must be a whole number >= 1, not {value!r}")
    if cells is not None and not is_integral(cells):
        raise UsageError(f"cells must be a whole number >= 1 (None: 200), not {cells!r}")
    if not (is_real(val_fraction) and 0 < val_fraction < 1):
        raise UsageError(f"val_fraction must lie strictly between 0 and 1, not {val_fraction!r}")
    for name, value in (("elastic", elastic), ("w0", w0)):
        if not (is_real(value) and value >= 0):
            raise UsageError(f"{name} must be a number >= 0, not {value!r}")
    if not (is_real(sigma) and sigma > 0):
        raise UsageError(f"sigma must be a border width in pixels > 0, not {sigma!r}")
    if not (is_real(jitter) and 0 <= jitter < 1):
        raise UsageError(f"jitter must lie in [0, 1) (0: off), not {jitter!r}")
    if count_instances is not None and not isinstance(count_instances, bool):
        raise UsageError(f"count_instances must be True, False or None (when there are two "
                         f"classes), not {count_instances!r}")  # fmt: skip


def _check_encoder(encoder_name: str | None, encoder_weights: Any,
                   base_width: int | None = None) -> None:
    # An encoder brings its own widths: --base-width was dropped without a word, and a run
    # meant to be 8 wide trained resnet18's 64 to 512 channels.
    if encoder_name and base_width is not None:
        raise UsageError(f"--base-width sets the widths of the plain U-Net; --encoder "
                         f"{encoder_name} has its own: leave out --base-width (the decoder's "
                         "widths: --model-arg decoder_channels=...)")
    # Without an encoder the weights would be dropped (the plain U-Net has no pretrained form).
    if encoder_weights is not None and not encoder_name:
        raise UsageError("--encoder-weights needs --encoder NAME: the weights are a "
                         "classifier's, used as the U-Net's contracting path (e.g. --encoder "
                         "resnet18 --encoder-weights imagenet)")


def _weights_record(weights: Any) -> str | None:
    """--encoder-weights as a run records it: None, 'imagenet', or a file's absolute path (a
    state_dict given in Python: None, as nothing can name it again)."""
    if not isinstance(weights, str | os.PathLike):
        return None
    return str(Path(weights).resolve()) if Path(weights).is_file() else str(weights)


def _encoder_error(exc: CnnzooError, model: str) -> CnnzooError:
    """The encoder's own error, in the words of `cnnzoo train`: missing weights are passed with
    --encoder-weights FILE there, not --weights. (A `ModelOptionError` of `create_model` wraps a
    TypeError/ValueError with a 'bad model option in ...' prefix listing options the user never
    typed: its original is kept as __context__.)"""
    cause = exc.__context__ if isinstance(exc, ModelOptionError) else exc
    if cause is None or not str(cause):
        return exc
    text = re.sub(r"\(weights='([^']*)', CLI --weights FILE\)", r"(--encoder-weights \1)",
                  str(cause))
    if isinstance(cause, CnnzooError):
        return type(cause)(text)
    return ModelOptionError(f"{model}: {text}")


@caller_rng_kept()
def train(
    data: str | os.PathLike[str] | SegmentationSplits = "cells",
    *,
    out_dir: str | os.PathLike[str] | None = None,
    model: str = "unet",
    padding: str = "same",
    base_width: int | None = None,
    encoder_name: str | None = None,
    encoder_weights: Any = None,
    loss: str = "ce+dice",
    crop: int = 128,
    batch_size: int = 8,
    classes: Sequence[str] | None = None,
    val_fraction: float = 0.2,
    cells: int | None = None,
    elastic: float = 10.0,
    jitter: float = 0.2,
    w0: float = 10.0,
    sigma: float = 5.0,
    count_instances: bool | None = None,
    config: TrainConfig | None = None,
    resume: bool | str | os.PathLike[str] = False,
    model_kwargs: dict[str, Any] | None = None,
    dist: DistContext | None = None,
    say: Callable[[str], Any] | None = None,
    overwrite: bool = False,
    **config_overrides: Any,
) -> SegmentationRun:
    """Train a U-Net on `data`: 'cells' (synthetic microscopy, `cells` images, default 200;
    `cells` is refused for other data), a folder with `images/` + `masks/` (+ optional
    `instances/`, `val/`) or a CSV manifest.

    loss: 'ce', 'dice', 'ce+dice' or 'weighted_ce' (U-Net's border weight map, w0 / sigma).
    crop: training tile side (random crops; snapped to a size the net accepts).
    base_width: channels of the plain U-Net's first level (default 16); not with an encoder.
    encoder_name / encoder_weights: a zoo classifier as the contracting path (smp's names).
    config / config_overrides: the engine's `TrainConfig` (default `segmentation_config()`).
    count_instances: report the cell count error (default: when there are two classes).
    model_kwargs: further U-Net options (batchnorm, dropout, decoder_channels).
    dist: the process group under torchrun (each rank trains on its shard of the images).
    say: where the data, precision and per-epoch lines go (with `config.verbose`; None:
    stderr, as `Trainer`'s).
    overwrite: replace a run `out_dir` already holds (last.pt); without it (or `resume`) such a
    folder is refused with one line before the data are loaded.
    Writes last.pt / best.pt, metrics, learning curves and `validation.png` into `out_dir`.
    """
    from ..engine.run import channel_stats

    say = say or to_stderr  # print was the default: a notebook's stdout got every epoch line
    # (An --out inside the data folder is fine here: only images/, masks/, instances/ and val/
    # are read, so DIR/runs/ is never taken for data.)
    check_out_dir(out_dir, resume=bool(resume), overwrite=overwrite)
    _check_settings(crop=crop, batch_size=batch_size, val_fraction=val_fraction, cells=cells,
                    elastic=elastic, jitter=jitter, w0=w0, sigma=sigma,
                    count_instances=count_instances)  # fmt: skip
    # The net's options, before the data load (200 synthetic cells or a big folder: many
    # seconds): a mistyped --model-arg, --encoder or --padding valid with an encoder was refused
    # only after it. A net on the meta device is built without memory in milliseconds and says
    # what the real one would (build_model checks the encoder and the --model-arg first; 3
    # channels: grey weights' note is the real build's to say).
    with torch.device("meta"):
        build_model(2, 3, model=model, padding=padding, base_width=base_width,
                    encoder_name=encoder_name, encoder_weights=encoder_weights,
                    model_kwargs=model_kwargs)
    cfg = config if config is not None else segmentation_config(**config_overrides)
    check_mixing(cfg, "segmentation")
    resumed = _resumed_meta(data, out_dir, resume)
    row_order = resumed is not None and rows_ordered(resumed, data)
    splits = data if isinstance(data, SegmentationSplits) else load_segmentation(
        data, classes=classes, val_fraction=val_fraction, tile=max(2 * crop, 256),
        seed=cfg.seed, cells=cells, row_order=row_order,
        # The masks' 255 as the run read it: a set of 0/1 and 0/255 masks trained before 255
        # was its foreground must not change its masks at the resume (evaluate reads the same).
        binary_255=None if resumed is None else resumed.get("binary_255"))
    k, c = splits.num_classes, splits.in_chans
    torch.manual_seed(cfg.seed)
    net, model_kwargs = build_model(
        k, c, model=model, padding=padding, base_width=base_width,
        encoder_name=encoder_name, encoder_weights=encoder_weights, model_kwargs=model_kwargs)
    dist = dist or DistContext()
    # Images smaller than the smallest tile the net takes are mirror-padded (the paper's rule).
    # A 'valid' net's output is its input less `trim` px per side: the images get that much
    # mirrored context, as the overlap-tile input has, so a crop's output can lie on any pixel
    # of the image (not only on its centre) and the output is as large as the image allows.
    trim = _context(net)
    train_set = splits.train.padded(net.min_size, margin=trim)
    h, w = train_set.images.shape[-2:]
    tile = _legal_crop(net, crop, min(h, w))
    out_tile = net.output_size(tile)
    tiles = f"{tile}x{tile}" + (f" in, {out_tile}x{out_tile} out" if out_tile != tile else "")
    if encoder_weights is not None:  # the preprocessing the encoder's weights expect
        mean = list(net.encoder_cfg.mean)
        std = list(net.encoder_cfg.std)
    else:
        mean, std = channel_stats(torch.from_numpy(splits.train.images))
    if len(mean) != c:
        mean, std = [float(np.mean(mean))] * c, [float(np.mean(std))] * c

    task = SegmentationTask(
        k, loss=loss, class_names=splits.classes,
        count_instances=(k == 2) if count_instances is None else count_instances)
    weighted = task.needs_weight_map
    cw = splits.class_weights() if weighted else None
    say(f"data: {splits.source}: {splits.describe()}, {k} classes ({', '.join(map(shown, splits.classes))}); "
        f"loss {loss}, training tiles {tiles}")
    if splits.classes_named and (note := absent_classes_note(splits)):
        say(note)
    train_targets = train_set.targets(weighted, cw, w0=w0, sigma=sigma)
    val_targets = splits.val.targets(weighted, cw, w0=w0, sigma=sigma)
    n_train = len(train_set) // dist.world
    train_loader = BatchLoader(
        train_set.image_tensor(), train_targets, batch_size=batch_size, shuffle=True,
        drop_last=n_train > batch_size, transform=train_transform(tile, elastic=elastic,
        jitter=jitter), mean=mean, std=std, seed=cfg.seed, shard=dist.shard)
    fit = _whole_input(net)
    vh, vw = splits.val.images.shape[-2:]
    val_loader = BatchLoader(
        splits.val.image_tensor(), val_targets,
        batch_size=_val_batch_size(batch_size, tile, fit(vh) * fit(vw)), transform=PadToNet(fit),
        mean=mean, std=std, shard=dist.shard)
    where = Path(splits.source)
    meta = {
        "task": "segmentation", "model": model, "model_kwargs": model_kwargs,
        "num_classes": k, "in_chans": c, "img_size": tile, "tile": tile, "crop": crop,
        "mean": mean,
        "std": std, "class_names": list(splits.classes),
        # Absolute, as classification runs store it: `cnnzoo evaluate` finds it from anywhere.
        # ('cells' is the synthetic set even where a folder of that name exists.)
        "dataset": splits.source if splits.source == "cells" or not where.exists()
        else str(where.resolve()),
        # Images, and the tiles images of mixed sizes were cut into (an epoch's crops): runs
        # before 2026-11-28 recorded the tiles as "images" (`engine.loop.meta_changes`).
        "loss": loss,
        "images": {"train": splits.train.image_count, "val": splits.val.image_count},
        "tiles": {"train": len(splits.train), "val": len(splits.val)},
        # What `cnnzoo evaluate` needs to score the run's own validation images again (the seed
        # is the config's) and to read held-out masks and count cells as the run did.
        "val_fraction": val_fraction, "binary_255": splits.binary_255,
        "pair_order": "rows" if row_order else "path",  # (`data.rows_ordered`)
        "count_instances": task.count_instances,
        # The rest of the recipe, for `cnnzoo compare` to tell runs apart.
        "batch_size": batch_size, "elastic": elastic, "jitter": jitter,
        # What a bare --resume takes again (`commands.resume_options`): the data and weights
        # it began from ('imagenet' as said; a file by its absolute path, for a resume from
        # another folder).
        "cells": cells, "classes": None if classes is None else list(splits.classes),
        "encoder_weights": _weights_record(encoder_weights),
        **({"w0": w0, "sigma": sigma} if task.needs_weight_map else {}),
    }
    if splits.val_files is not None:
        meta["val_files"] = splits.val_files
    trainer = Trainer(net, task, train_loader, val_loader, cfg, out_dir=out_dir, meta=meta,
                      dist=dist, say=say)
    result = trainer.fit(resume=resume, overwrite=overwrite)
    result.skipped = len(splits.skipped)
    net = unwrap_model(trainer.model)
    if out_dir is not None and cfg.report and dist.is_main:
        # The grid's own loader: the tiles it draws (not rank 0's share of a DDP run's).
        pick = grid_indices(splits.val)
        grid_loader = BatchLoader(
            splits.val.image_tensor()[pick], val_targets[pick], batch_size=val_loader.batch_size,
            transform=val_loader.transform, mean=mean, std=std)
        path = write_validation_grid(net, splits, grid_loader, Path(out_dir) / "validation.png",
                                     pick=pick, precision=result.precision)
        say(f"wrote {path}")
    return SegmentationRun(result, net, splits, task, meta)


def absent_classes_note(splits: SegmentationSplits) -> str | None:
    """A note naming the classes that no training or validation mask holds: their validation
    Dice and IoU are 1 while the net predicts none of them, as segmentation_models_pytorch
    scores an empty class, and they count in the foreground means (a run of 'bg,cell,nucleus'
    on masks without nucleus logged val_dice_nucleus 1.0 without a word)."""
    from .metrics import absent_classes

    absent = absent_classes([*splits.train.masks, *splits.val.masks], splits.num_classes)
    if not absent:
        return None
    names = ", ".join(shown(splits.classes[c]) for c in absent)
    it = "it" if len(absent) == 1 else "them"
    means = f", and the foreground means (dice, iou) count {it}" if max(absent) > 0 else ""
    return (f"note: no mask holds {'class' if len(absent) == 1 else 'classes'} {names}: "
            f"{'its' if len(absent) == 1 else 'their'} validation Dice and IoU are 1 while the "
            f"net predicts none of {it}, 0 once it predicts any{means}")


def _resumed_meta(data: Any, out_dir: str | os.PathLike[str] | None,
                  resume: bool | str | os.PathLike[str]) -> dict[str, Any] | None:
    """The meta of the run `resume` continues on the pairs `data` (mapped, not read), for how it
    read them: a manifest's pairs in the rows' order (`data.rows_ordered`), read in path order,
    would validate on pairs it trained on; its reading of 255. None for a new run or cells."""
    from ..engine.run import run_meta

    if not resume or isinstance(data, SegmentationSplits) or str(data) == "cells":
        return None
    if resume is True:
        if out_dir is None:
            return None  # (the Trainer says what is wrong)
        path = Path(out_dir) / "last.pt"
    else:
        path = Path(resume)
    return run_meta(path) if path.is_file() else None


@torch.no_grad()
def predict_batches(model: nn.Module, loader: BatchLoader, limit: int | None = None,
                    precision: Precision | None = None):
    """(images uint8 (N, H, W, C) as fed, true masks, predicted masks) of the first `limit`
    samples of a (non-shuffled) loader; for the report grid. precision: the run's (default fp32
    NCHW), which its validation scored the masks in: the grid was drawn in fp32, and its masks
    and IoUs were not quite the scored ones (and took twice as long on a CPU with bf16)."""
    precision = precision or Precision()
    was = model.training
    model.eval()
    imgs, truths, preds = [], [], []
    mean = loader.mean if loader.mean is not None else 0.0
    std = loader.std if loader.std is not None else 1.0
    model.to(memory_format=precision.memory_format)
    try:
        for x, y in loader:
            with precision.autocast():
                logits = model(x.float().contiguous(memory_format=precision.memory_format))
            raw = (x * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)
            t = y[:, 0].round().to(torch.uint8) if y.dim() == 4 else y.to(torch.uint8)
            imgs.extend(raw.permute(0, 2, 3, 1).numpy())
            truths.extend(t.numpy())
            preds.extend(logits.argmax(1).to(torch.uint8).numpy())
            if limit is not None and len(imgs) >= limit:
                break
    finally:
        model.train(was)
        model.to(memory_format=torch.contiguous_format)  # as fit() hands it back
    return imgs[:limit], truths[:limit], preds[:limit]


def _centre(a: np.ndarray, h: int, w: int) -> np.ndarray:
    top, left = (a.shape[0] - h) // 2, (a.shape[1] - w) // 2
    return a[top : top + h, left : left + w]


def grid_indices(val: SegmentationSet, n: int = 8) -> list[int]:
    """Which validation samples the report draws: the first `n`, but of images cut into tiles,
    one tile of each image in turn (the first tiles were all one image's: 8 corners of one
    scan, the other validation images never shown)."""
    if val.source_sizes is None:
        return list(range(min(n, len(val))))
    by_image: dict[str, list[int]] = {}
    for i, name in enumerate(val.names):  # tiles are named 'stem@top,left' (`stack_pairs`)
        by_image.setdefault(name.rsplit("@", 1)[0], []).append(i)
    queues = list(by_image.values())
    pick: list[int] = []
    for rank in range(max(map(len, queues), default=0)):
        pick += [q[rank] for q in queues if rank < len(q)]
    return sorted(pick[:n])


def write_validation_grid(
    model: nn.Module, splits: SegmentationSplits, val_loader: BatchLoader, path: Path,
    n: int = 8, pick: Sequence[int] | None = None, precision: Precision | None = None,
) -> Path:
    """The report's picture: `n` validation images with true and predicted contours.
    `pick`: the validation samples `val_loader` holds (`grid_indices`), else its first `n`.
    precision: the run's (`predict_batches`)."""
    from .metrics import confusion_matrix as cm
    from .metrics import dice_iou
    from .visual import save_validation_grid

    imgs, truths, preds = predict_batches(model, val_loader, n, precision)
    pick = list(range(len(imgs))) if pick is None else list(pick)[: len(imgs)]
    # The loader pads the images for the net (`PadToNet`); each image is the centre of all three.
    h, w = splits.val.masks.shape[1:]
    imgs, truths, preds = ([_centre(a, h, w) for a in part] for part in (imgs, truths, preds))
    if splits.val.regions is not None:
        # Tiles of validation images smaller than a tile are mostly mirrored padding: draw only
        # the image (a 65 x 116 image showed as ~8 mirrored copies with contours on them).
        boxes = [splits.val.regions[i] for i in pick]
        imgs, truths, preds = (
            [a[y0:y1, x0:x1] for a, (y0, y1, x0, x1) in zip(part, boxes, strict=True)]
            for part in (imgs, truths, preds))
    titles = []
    for i, (t, p) in enumerate(zip(truths, preds, strict=True)):
        _, iou = dice_iou(cm(torch.from_numpy(p), torch.from_numpy(t), splits.num_classes))
        titles.append(f"{splits.val.names[pick[i]]}  IoU {float(iou[1:].mean()):.3f}")
    return save_validation_grid(imgs, truths, preds, path, titles=titles,
                                class_names=splits.classes)


def load_segmenter(
    checkpoint: str | os.PathLike[str], ckpt: dict[str, Any] | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """(model in eval mode, meta) from a checkpoint written by a segmentation run (`ckpt`: the
    file already loaded)."""
    from ..engine.checkpoint import load_checkpoint
    from ..errors import WeightsError
    from ..models import create_model
    from ..weights.adapt import fitted_model, warn_non_finite

    ckpt = ckpt if ckpt is not None else load_checkpoint(checkpoint)
    meta = ckpt.get("meta") or {}
    if meta.get("task") != "segmentation" and ckpt.get("task") != "segmentation":
        raise WeightsError(
            f"{checkpoint} is not a segmentation checkpoint: train one with "
            "`cnnzoo train unet --task segmentation`."
        )
    kwargs = dict(meta.get("model_kwargs") or {})
    model = fitted_model(lambda: create_model(meta.get("model", "unet"),
                                              num_classes=meta["num_classes"],
                                              in_chans=meta["in_chans"], **kwargs),
                         ckpt["model"], checkpoint)  # fmt: skip
    warn_non_finite(ckpt["model"], checkpoint)
    return model.eval(), meta


def train_segmentation(
    args: Any, config: TrainConfig, *, out_dir: str | os.PathLike[str] | None,
    dist: DistContext | None = None, say: Callable[[str], Any] | None = None,
) -> FitResult:
    """`cnnzoo train unet --task segmentation ...`: the parsed command line -> `train`.

    `config` is the command's `TrainConfig`; where the command line left optimizer, learning
    rate or weight decay unset, the segmentation defaults above replace the classification ones.
    """
    from dataclasses import replace

    if getattr(args, "init_from", None):
        raise CnnzooError("--init-from grows classifiers; a U-Net starts from scratch or from "
                          "a pretrained encoder (--encoder NAME --encoder-weights imagenet|FILE)")
    changes: dict[str, Any] = {"pct_start": SEGMENTATION_DEFAULTS["pct_start"]}
    if getattr(args, "optimizer", None) is None:
        changes["optimizer"] = SEGMENTATION_DEFAULTS["optimizer"]
    if changes.get("optimizer", config.optimizer) == SEGMENTATION_DEFAULTS["optimizer"]:
        if getattr(args, "lr", None) is None:
            changes["lr"] = SEGMENTATION_DEFAULTS["lr"]
        if getattr(args, "weight_decay", None) is None:
            changes["weight_decay"] = SEGMENTATION_DEFAULTS["weight_decay"]
    cfg = replace(config, **changes)
    # Options left out (None; a bare --resume has the run's own, `keep_run_options`): train's
    # defaults.
    given = {k: getattr(args, k, None) for k in (
        "padding", "loss", "classes", "val_fraction", "cells", "elastic", "w0", "sigma")}
    run = train(
        args.data, out_dir=out_dir, model=args.model, base_width=args.base_width,
        encoder_name=args.encoder, encoder_weights=args.encoder_weights,
        crop=int(args.crop or args.img_size or 128), batch_size=int(args.batch_size or 8),
        config=cfg, resume=args.resume, model_kwargs=dict(args.model_arg), dist=dist, say=say,
        overwrite=getattr(args, "overwrite", False),
        **{k: v for k, v in given.items() if v is not None})
    return run.result
