"""A classification run from names: data source + model name + `TrainConfig` -> trained model.

What `cnnzoo train` and `cnnzoo evaluate` call; the commands only parse and print. The data come
from `cnnzoo.data.load_dataset` as in-memory uint8 tensors; resizing and augmentation run on
batches (`cnnzoo.data.augment`); normalisation uses the training images' own per-channel mean
and standard deviation (right for training from scratch; transfer learning uses the weights'
preprocessing instead and builds its own loaders).
"""

from __future__ import annotations

import logging
import math
import os
import shlex
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.augment import FLIPPING
from ..data.builtin import builtin_name, mirror_changes_class, own_channels
from ..data.folder import ImagesSeen, seen_images
from ..data.loader import (
    BatchLoader,
    epoch_steps,
    epochs_for_steps,
    in_raised_epochs,
    small_set_batch,
)
from ..errors import (
    DamagedCheckpointError,
    DataError,
    NewerFormatError,
    TrainingError,
    UsageError,
    WeightsError,
    no_validation_rows,
)
from ..paths import check_outside, run_data, same_source, transfer_bundle
from ..text import plural, some, to_stderr
from .checkpoint import caller_rng_kept, load_checkpoint
from .distributed import DistContext
from .grow import check_source_family, grow_from
from .loop import (
    FitResult,
    TrainConfig,
    Trainer,
    check_out_dir,
    optimizer_state_conflict,
    resume_conflict,
)
from .precision import Precision
from .task import (
    ClassificationAccumulator,
    ClassificationTask,
    check_class_weight,
    check_label_smoothing,
    class_weights,
    class_weights_line,
)

BUILTIN_NATIVE_SIZE = {"fashion-mnist": 28, "digits": 8}
# The smallest size a built-in trains at by default. scikit-learn's 8x8 digits are UCI's 32x32
# bitmaps block-averaged by 4; at 8 px a net with three 2x pools ends on 1x1 maps
# (vgg13_bn stages=3 width 0.25, 6 epochs: 73.5 % at 8 px, 98.6 % at 32 px).
BUILTIN_MIN_TRAIN_SIZE = {"digits": 32}
# The least size a folder of smaller images trains at by default (`image_size_choice`): below it
# pad-and-crop and the nets' pools leave too little. Digits exported as 8-px files, 3 epochs:
# resnet20 0.275 at 8 px against 0.55 at 32 px, vgg11_bn stages=3 0.30 against 0.825.
LEAST_OWN_SIZE = 32


@dataclass
class DataOptions:
    source: str
    img_size: int | None = None  # default: see `default_image_size`
    batch_size: int | None = None  # default: `default_batch_size`
    augment: str | None = None  # default: 'crop' for digits, 'flip-crop' otherwise
    val_fraction: float = 0.2
    # A test/ part (test rows) without a val/ one stays held out, and validation is drawn from
    # the training images (`--val-fraction` given); else test/ validates, as runs always did.
    hold_out_test: bool = False
    channels: int | None = None  # default: the data's own (grey built-ins) / the model's
    erase: float = 0.0  # random-erasing probability added to the training augmentation
    # (size, epochs): the first `epochs` epochs train at the smaller `size` (progressive
    # resizing, `augment.ProgressiveResize`); None: every epoch at the full size.
    progressive: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        # Checked when a notebook builds it, as TrainConfig is: batch_size=0 was a
        # ZeroDivisionError, val_fraction=2 or channels=2 a plain ValueError, each after the
        # data had loaded. The command line's parser refuses these before they get here.
        problem = _data_options_problem(self)
        if problem:
            raise UsageError(f"DataOptions: {problem}")
        # numpy's numbers as Python's: they go into the run's JSON records.
        for name in ("img_size", "batch_size"):
            if getattr(self, name) is not None:
                setattr(self, name, int(getattr(self, name)))
        self.val_fraction, self.erase = float(self.val_fraction), float(self.erase)
        if self.progressive is not None:
            self.progressive = (int(self.progressive[0]), int(self.progressive[1]))


def _data_options_problem(opts: DataOptions) -> str | None:
    """What is wrong with `opts`'s values, in a phrase, or None (`cnnzoo train --help`'s
    ranges)."""
    from ..data.augment import AUGMENTATIONS
    from ..limits import MAX_INPUT_SIZE
    from ..models.base import is_integral, is_real

    for name in ("img_size", "batch_size"):
        value = getattr(opts, name)
        if value is not None and not is_integral(value):
            return f"{name} must be a whole number >= 1 (None: the default), not {value!r}"
    if opts.img_size is not None and opts.img_size > MAX_INPUT_SIZE:
        return f"img_size must be at most {MAX_INPUT_SIZE}, not {opts.img_size!r}"
    if opts.augment is not None and opts.augment not in AUGMENTATIONS:
        return (f"augment must be one of {', '.join(AUGMENTATIONS)} (None: the data's default), "
                f"not {opts.augment!r}")
    if not (is_real(opts.val_fraction) and 0 < opts.val_fraction < 1):
        return f"val_fraction must lie strictly between 0 and 1, not {opts.val_fraction!r}"
    if opts.channels not in (None, 1, 3) or isinstance(opts.channels, bool):
        return f"channels must be 1, 3 or None (the data's own), not {opts.channels!r}"
    if not (is_real(opts.erase) and 0 <= opts.erase <= 1):
        return f"erase is a probability in [0, 1], not {opts.erase!r}"
    if opts.progressive is not None and not (
            isinstance(opts.progressive, tuple | list) and len(opts.progressive) == 2
            and all(is_integral(v) for v in opts.progressive)):  # fmt: skip
        return f"progressive must be (size, epochs), two whole numbers >= 1, not {opts.progressive!r}"
    if not isinstance(opts.hold_out_test, bool):
        return f"hold_out_test must be True or False, not {opts.hold_out_test!r}"
    return None


def default_image_size(source: str, model_cfg: Any, min_size: int | None = None) -> int:
    """The size a model trains at on `source` when none is given; see `image_size_choice`."""
    return image_size_choice(source, model_cfg, min_size)[0]


def image_size_choice(
    source: str, model_cfg: Any, min_size: int | None = None, seen: ImagesSeen | None = None
) -> tuple[int, str]:
    """(size, why) for training a model on `source` when no size is given; `why` is '' or the
    words the run prints after the size.

    The data's own size, when it is below the model's default input size (224 for ImageNet
    nets): upsampling 28-px images to 224 adds no detail and costs 64x the compute. Raised to
    the model's minimum as built (`min_size`, default `model_cfg.min_size`: 8 for `vgg13_bn`
    with `stages=3`) and, for a folder, to `LEAST_OWN_SIZE` (or the model's default, if that is
    smaller). Built-in sets have their native size (digits: 32, see BUILTIN_MIN_TRAIN_SIZE);
    a folder's or manifest's is the largest side of its training and validation images
    (`seen`, from `folder.seen_images` when not given). A net built for one size (residual_net)
    gets the same choice, capped at its default, and says how to build it for the images'."""
    from ..models import fixed_input_size

    least = model_cfg.min_size if min_size is None else min_size
    default = model_cfg.input_size[1]
    name = builtin_name(source)
    if name:
        native = BUILTIN_NATIVE_SIZE.get(name)
        if native is None:
            return default, ""
        return max(native, BUILTIN_MIN_TRAIN_SIZE.get(name, 0), least), ""
    seen = seen or seen_images(source)
    if seen is None:
        return default, ""
    own = seen.largest
    size = default if own >= default else max(own, least, min(LEAST_OWN_SIZE, default))
    if fixed_input_size(model_cfg.name):
        if size == own:
            return size, f"the images' own size; {model_cfg.name} is built for it"
        return size, (f"{model_cfg.name} is built for {size} px, the images are "
                      f"{'' if seen.same else 'up to '}{own} px: --model-arg img_size={own} "
                      "builds it for theirs")  # fmt: skip
    if own >= default:
        return size, ""
    squashed = "" if seen.square else "; non-square images are squashed to a square"
    if size == own:
        return size, f"the images' {'own size' if seen.same else 'largest side'}{squashed}"
    floor = (f"{model_cfg.name}'s minimum" if size == least
             else "the least cnnzoo trains small images at")  # fmt: skip
    return size, (f"the images are {'' if seen.same else 'up to '}{own} px, raised to {size}, "
                  f"{floor}{squashed}")


# A channel whose pixels spread by less than one grey level (all-black images, a blue channel
# that is 0 in every training image) is not scaled: divided by its std, 1e-6, one grey level of
# noise in a new image was thousands of standard deviations and decided the prediction alone.
FLAT_CHANNEL_STD = 1 / 255


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images in [0, 1] units, in chunks (no float copy of
    the whole set); std 1 for a channel that is flat (`FLAT_CHANNEL_STD`)."""
    from ..data.dataset import CHUNK_BYTES

    c = images.shape[1]
    s = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    chunk = max(1, CHUNK_BYTES // (8 * images[0].numel())) if len(images) else 1
    for part in images.split(chunk):
        x = part.double().div_(255)
        s += x.sum((0, 2, 3))
        s2 += (x * x).sum((0, 2, 3))
    n = images.shape[0] * images.shape[2] * images.shape[3]
    mean = s / n
    std = (s2 / n - mean**2).clamp(min=0).sqrt()
    std = torch.where(std < FLAT_CHANNEL_STD, torch.ones_like(std), std)
    return mean.tolist(), std.tolist()


# Resizing a built-in set once costs N x C x size^2 bytes. Up to this budget it is done up-front
# (Fashion-MNIST 28 -> 32 px: 72 MB with its test set), which takes the resize out of every
# training step (it was 12 % of a LeNet-5 step); above it (224 px: 3.5 GB) it runs per batch.
RESIZE_IN_MEMORY_BYTES = 512 * 2**20


def resize_in_memory(splits: Any, size: int) -> Any:
    """`splits` with every part resized to `size` x `size` when that fits the budget above."""
    parts = [p for p in (splits.train, splits.val, splits.test) if p is not None]
    total = sum(len(p) * p.channels * size * size for p in parts)
    if total > RESIZE_IN_MEMORY_BYTES or all(p.image_size == (size, size) for p in parts):
        return splits
    test = splits.test.resized(size) if splits.test is not None else None
    return replace(splits, train=splits.train.resized(size), val=splits.val.resized(size),
                   test=test)


def load_splits(
    opts: DataOptions, model_name: str, *, seed: int = 0,
    model_kwargs: dict[str, Any] | None = None, progress: bool = True,
) -> tuple[Any, int, int, str]:
    """(Splits, image size, channels, why that size) for training `model_name` (built with
    `model_kwargs`) on `opts.source`; progress: the bar while a folder's images are decoded.
    Without `opts.channels`, grey data train a 1-channel net and colour data a 3-channel one
    (built-ins are grey), whatever the model's default: LeNet-5 would drop a colour folder's
    colour, and a grey folder would feed a ResNet three copies of each image."""
    from ..data import builtin
    from ..data.images import ImageSpec
    from ..models import get_config, min_input_size

    cfg = get_config(model_name)
    is_builtin = builtin_name(opts.source) is not None
    seen = None if is_builtin else seen_images(opts.source)
    # A net built for one size (residual_net's img_size option) trains at that size.
    size, why = opts.img_size or (model_kwargs or {}).get("img_size"), ""
    if not size:
        size, why = image_size_choice(opts.source, cfg,
                                      min_input_size(model_name, **(model_kwargs or {})), seen)
    channels = opts.channels or own_channels(opts.source, seen) or cfg.input_size[0]
    # Folders hold images of any size, so they are brought to `size` while decoding; built-ins
    # are resized once in memory when that is small, else per batch (see `resize_in_memory`).
    spec = ImageSpec(size=None if is_builtin else size, channels=channels)
    splits = builtin.load_dataset(opts.source, spec, val_fraction=opts.val_fraction, seed=seed,
                                  progress=progress, hold_out_test=opts.hold_out_test)
    if is_builtin:
        splits = resize_in_memory(splits, size)
    if splits.num_classes < 2:
        raise DataError(f"{opts.source} has a single class: training needs at least two")
    if splits.val is None or len(splits.val) == 0:
        # Else every epoch reports val_loss 0 and 'best' and early stopping mean nothing.
        # Only a class of one image sends none to validation, whatever --val-fraction says.
        raise DataError(f"{opts.source} leaves no image for validation (one image per class): "
                        "add images (at least 2 per class) or a val/ folder")  # fmt: skip
    return splits, size, channels, why


def augment_kind(opts: DataOptions) -> str:
    """The training augmentation: the one asked for, else pad-crop, plus flips unless the data
    are digits (a mirrored digit is another symbol or none)."""
    return opts.augment or default_augment(opts.source)


def default_augment(source: object) -> str:
    """The augmentation `source` trains with unless told: pad-crop and flips, without the
    flips on data whose mirror images change their class (digits)."""
    return "crop" if mirror_changes_class(source) else "flip-crop"


def flip_note(augment: str, source: object) -> str | None:
    """The note on a mirroring augmentation asked for on digits, as `tta_note` says the other
    way round (--augment flip-crop there trained on mirrored digits without a word); None
    otherwise."""
    if augment not in FLIPPING or not mirror_changes_class(source):
        return None
    return (f"note: --augment {augment} mirrors images, and a mirrored digit is another symbol "
            "or none: its accuracy may be lower, not higher (the default for digits is crop)")


DEFAULT_BATCH = 128
# The least optimizer steps of a run whose epochs are not given, its epochs raised to reach them
# (`epochs_for_steps`). 120 training shoes in batches of 30 make 4 steps per epoch; test accuracy
# on 600 test shoes, seeds 0-4, at 40 / 100 / 200 / 300 / 400 / 600 steps: LeNet-5 0.765 / 0.811
# / 0.876 / 0.907 / 0.911 / 0.904, residual_net 0.784 / 0.898 / 0.923 / 0.924 / 0.930 / 0.927.
DEFAULT_MIN_STEPS = 300


def default_batch_size(n_train: int) -> int:
    """The batch a run takes when none is given: DEFAULT_BATCH, but at most a quarter of its
    `n_train` training images (`small_set_batch`). A folder of a few hundred images made one
    or two steps per epoch in batches of 128, and ten epochs trained next to nothing."""
    return small_set_batch(DEFAULT_BATCH, n_train)


def make_loaders(
    splits: Any, size: int, opts: DataOptions, *, seed: int, mean: list[float],
    std: list[float], dist: DistContext | None = None,
) -> tuple[BatchLoader, BatchLoader]:
    from ..data.augment import ProgressiveResize, default_augmentation

    shard = (dist or DistContext()).shard
    if opts.batch_size is None:
        opts = replace(opts, batch_size=default_batch_size(len(splits.train) // shard[1]))
    kind = augment_kind(opts)
    transform = default_augmentation(kind, size, erase=opts.erase)
    if opts.progressive is not None:
        small, epochs = opts.progressive
        if not 1 <= small < size:
            raise DataError(f"progressive resizing needs a size below the training size {size}, "
                            f"not {small}: e.g. --progressive {max(1, size * 3 // 4)}:{epochs}")
        transform = ProgressiveResize(transform, small, epochs)
    train = BatchLoader(
        splits.train.images, splits.train.labels, batch_size=opts.batch_size, shuffle=True,
        drop_last=len(splits.train) // shard[1] > opts.batch_size, transform=transform,
        mean=mean, std=std, seed=seed, shard=shard)
    val = BatchLoader(
        splits.val.images, splits.val.labels, batch_size=max(opts.batch_size, 256),
        transform=default_augmentation("none", size), mean=mean, std=std, shard=shard)
    return train, val


def model_meta(model_name: str, model: nn.Module, *, num_classes: int, in_chans: int,
               img_size: int, mean: list[float], std: list[float], class_names: list[str],
               dataset: str, model_kwargs: dict[str, Any], val_fraction: float = 0.2,
               seed: int = 0) -> dict[str, Any]:
    """What a checkpoint needs to rebuild and feed the model, and to find its validation split
    again (primitives only). Folders are stored as absolute paths."""
    where = Path(dataset)
    if where.exists():  # a folder or CSV (also one named like a built-in): stored absolute
        dataset = str(where.resolve())
    meta = {"model": model_name, "num_classes": num_classes, "in_chans": in_chans,
            "img_size": img_size, "mean": mean, "std": std, "class_names": class_names,
            "dataset": str(dataset), "model_kwargs": model_kwargs,
            "val_fraction": val_fraction, "seed": seed}
    config = getattr(model, "config", None)
    if getattr(getattr(model, "default_cfg", None), "family", None) == "vgg" and config:
        meta["vgg_config"] = list(config)
    return meta


@caller_rng_kept()
def train_classifier(
    model_name: str,
    data: DataOptions,
    config: TrainConfig,
    *,
    out_dir: str | os.PathLike[str] | None,
    resume: bool = False,
    init_from: str | os.PathLike[str] | None = None,
    grow_rule: str = "paper",
    label_smoothing: float = 0.1,
    class_weight: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    dist: DistContext | None = None,
    say: Callable[[str], Any] | None = None,
    overwrite: bool = False,
    show: Callable[[str], Any] | None = None,
    default_lr: bool = False,
    min_steps: int | None = 0,
    default_epochs: bool = False,
) -> FitResult:
    """Train `model_name` from scratch (or grown from `init_from`) on `data.source`.

    default_lr: `config.lr` is SGD's default, not chosen: with a default batch below 128 (a
    small folder, `default_batch_size`) it is scaled by the square root of batch / 128.
    AdamW's default is not (callers pass False): on 120 shoes in batches of 30 the scaled rate
    lost on LeNet-5 (0.891 against 0.910) and tied on residual_net (docs/training.md).

    min_steps: `config.epochs` is raised so that the run makes at least this many optimizer
    steps (a folder of a few hundred images makes a handful per epoch); 0 (the default):
    exactly `config.epochs`; None, for a run given neither: DEFAULT_MIN_STEPS, and a resumed
    run goes on for its own epochs and steps.

    default_epochs: `config.epochs` is the default, not chosen (as None `min_steps` says): a
    resumed run goes on for its own epochs, raised if `min_steps` asks for more.

    class_weight: 'balanced' weights each class's loss by n / (K n_k) over the training images
    (scikit-learn's class_weight='balanced'; `task.class_weights`), for imbalanced data;
    'none' does not; None: 'none', or what the run being resumed used.

    overwrite: replace a run that `out_dir` already holds (last.pt); without it (and without
    `resume`) such a folder is refused with one line before any data is loaded, so a repeated
    command never silently replaces the results of an earlier run.

    say: where progress and notes go (None: stderr, as `Trainer`'s and `transfer`'s); show:
    where the per-class table at the end goes (default: as `say`).
    """
    say = say or to_stderr  # print was the default: a notebook's stdout got every epoch line
    from ..limits import MAX_INPUT_SIZE
    from ..models import create_model, fixed_input_size, get_config, min_input_size
    from ..models.base import is_whole
    from ..models.registry import canonical_options, check_options

    if get_config(model_name).task == "segmentation":
        # Trained as a classifier, the U-Net would learn images/ against masks/ as two classes.
        raise UsageError(f"{model_name} is a segmentation model: train it with --task "
                         "segmentation (data: 'cells', or a folder with images/ and masks/)")
    check_out_dir(out_dir, resume=resume, overwrite=overwrite)
    if out_dir is not None:
        check_outside(out_dir, data.source)
    if class_weight is not None:
        check_class_weight(class_weight)
    check_label_smoothing(label_smoothing)  # before the data load, not at the first step
    model_kwargs = dict(model_kwargs or {})
    taken = sorted({"num_classes", "in_chans"} & set(model_kwargs))
    if taken:
        raise UsageError(f"{', '.join(taken)}: set by the data (its classes; its channels or "
                         "--channels), not by --model-arg")  # fmt: skip
    # Input sizes before the data are loaded, in the options' own words. residual_net is built
    # for the size it trains at (its img_size option); any other net has a least size.
    fixed = fixed_input_size(model_name)
    given = model_kwargs.get("img_size", data.img_size)
    if fixed and data.img_size is not None and given != data.img_size:
        raise UsageError(f"--img-size {data.img_size} (img_size=) and --model-arg "
                         f"img_size={given} (model_kwargs=): "
                         f"{model_name} is built for the size it trains at; give one")
    if fixed and "img_size" in model_kwargs and not (is_whole(given, 2)
                                                      and given <= MAX_INPUT_SIZE):
        raise UsageError(f"--model-arg img_size={given}: the size {model_name} trains at, a "
                         f"whole number from 2 to {MAX_INPUT_SIZE}")  # fmt: skip
    # The options' names and values create_model can judge without building, before the data
    # load (slow for a big folder); what needs the net (width_mult per stage, ...) fails later.
    check_options(model_name, model_kwargs)
    model_kwargs = canonical_options(model_name, model_kwargs)  # recorded as the net takes them
    if fixed and data.progressive is not None:
        raise UsageError(f"--progressive: {model_name} is built for one input size, so it "
                         "cannot start at a smaller one")  # fmt: skip
    smallest = min_input_size(model_name, **model_kwargs)
    if not fixed and data.img_size is not None and data.img_size < smallest:
        raise UsageError(f"--img-size {data.img_size} (img_size=): {model_name} takes inputs "
                         f"of at least {smallest} px")
    if data.progressive is not None:
        small, epochs = data.progressive
        if small < smallest:
            raise UsageError(f"--progressive {small}:{epochs}: {model_name} takes inputs of at "
                             f"least {smallest} px")  # fmt: skip
    # A resumed run keeps the size and channels it started with, a grown net those of the net
    # it grows from: the data's own would move when images are added to the folder.
    # --resume into a folder without last.pt starts afresh (the Trainer says so): then a given
    # --init-from still grows the net, which it silently skipped.
    resuming = resume and out_dir is not None and (Path(out_dir) / "last.pt").is_file()
    if resuming and init_from is not None:  # it grew when it began: dropped without a word
        say(f"note: --init-from {init_from} is not used: the run resumes from its own "
            f"{Path(out_dir) / 'last.pt'}")
    # The net to grow from, read before the data load (slow for a big folder): a typo or a
    # run's folder fails at once.
    src = load_checkpoint(init_from) if init_from is not None and not resuming else None
    if src is not None:  # another family's net (lenet5 into vgg11) was refused after the load
        check_source_family(get_config(model_name).family, (src.get("meta") or {}).get("model"))
    ran_lr = None  # the resumed run's learning rate, kept when none is given (below)
    # The epochs --patience and --progressive count (`in_raised_epochs`): those asked for.
    asked = config.epochs
    if resuming:
        record = run_checkpoint(Path(out_dir) / "last.pt") or {}
        ran, ran_lr = record.get("meta"), (record.get("config") or {}).get("lr")
        # What the Trainer refuses of the run once the data are loaded, said before the load
        # (slow for a big folder) where the options alone decide it: another model given with
        # its --out, --channels or --optimizer other than the run's. (Model options, classes
        # and a net's own input size wait for the data: residual_net records its size then.)
        new = {"model": model_name, **({} if data.channels is None
                                       else {"in_chans": data.channels})}  # fmt: skip
        conflict = resume_conflict(ran or {}, new, record.get("task"), "classification")
        if conflict:  # (the Trainer's words)
            raise TrainingError(f"the checkpoint in {out_dir} {conflict}, or start a new run "
                                "with another --out")
        conflict = optimizer_state_conflict(record.get("config") or {}, config, "optimizer")
        if conflict:
            raise TrainingError(f"the checkpoint in {out_dir} {conflict}")
        ran_epochs = (record.get("config") or {}).get("epochs")
        if (min_steps is None or default_epochs) and ran_epochs:  # the epochs it was running
            config = replace(config, epochs=int(ran_epochs))
            # A run raised from 10 epochs to 75 ran --patience 3 as 23: the same --patience
            # given again counts the 10 again (it was taken as 3 of the 75, with a warning).
            asked = int((ran or {}).get("asked_epochs") or ran_epochs)
        ran_dir = Path(out_dir)
    else:  # the growth source, already read (before, it was read a second time here)
        ran = src.get("meta") if src is not None else None
        ran_dir = Path(init_from).parent if init_from is not None else Path()
    # Against the epochs asked for, which --progressive counts: a bare --resume's are the run's
    # own (a run of 40 resumed with its --progressive 16:20 was refused as covering all 10).
    if data.progressive is not None and data.progressive[1] >= asked:
        small, epochs = data.progressive
        raise UsageError(f"--progressive {small}:{epochs} covers all {asked} epochs, so the net "
                         "would never train at its full size: give --progressive fewer than "
                         f"{asked} epochs, or --epochs more (10 when not given)")
    if class_weight is None:  # a resumed run goes on weighting its loss as it began
        class_weight = str((ran or {}).get("class_weight", "none")) if resuming else "none"
    before = _trained_input(ran, data.source, ran_dir)
    if before is not None:
        ran_size, ran_channels = before
        if data.img_size is None and "img_size" not in model_kwargs and ran_size >= smallest:
            data = replace(data, img_size=ran_size)
        if data.channels is None:
            data = replace(data, channels=ran_channels)
    splits, size, channels, why = load_splits(data, model_name, seed=config.seed,
                                              model_kwargs=model_kwargs,
                                              progress=config.progress)  # fmt: skip
    say(f"data: {splits!r}, training at {size}x{size}"
        + (f" ({why}; --img-size N, img_size=N, for another)" if why else ""))
    if fixed:
        model_kwargs.setdefault("img_size", size)
    if data.batch_size is None:  # a resumed run goes on in the batches it began with
        given = (ran or {}).get("batch_size") if resuming else None
        world = (dist or DistContext()).world
        per_rank = len(splits.train) // world
        data = replace(data, batch_size=int(given) if given else default_batch_size(per_rank))
        steps = {b: epoch_steps(per_rank, b) for b in (data.batch_size, DEFAULT_BATCH)}
        # Under torchrun the batch is each process's: 'for 80 training images' under a data
        # line of train=160 read as half the images lost.
        images = (f"{per_rank} training images" if world == 1 else
                  f"each process's {per_rank} training images ({world} processes)")
        lr = ""
        if default_lr and given and ran_lr is not None:
            # Its own, scaled or not: a run begun with --batch-size 32 (lr 0.1 as given) was
            # resumed at 0.1 x sqrt(32/128), the rate of a default batch it never had.
            config = replace(config, lr=float(ran_lr))
        elif default_lr and data.batch_size < DEFAULT_BATCH:
            # The square-root rule (Krizhevsky 2014; Hoffer et al. 2017): SGD's 0.1 suits
            # batches of 128. 120 training shoes in batches of 30, test accuracy on 600, seeds
            # 0-4: LeNet-5 0.608 / 0.770 / 0.678 at lr 0.1 / 0.05 (this rule: 0.048) / 0.023 (the
            # linear rule), residual_net 0.743 / 0.785 / 0.815; the one rule that beat 0.1 by
            # 0.04 or more on both.
            base = config.lr
            config = replace(config, lr=base * math.sqrt(data.batch_size / DEFAULT_BATCH))
            lr = f" and lr {config.lr:.2g} ({base:g} x sqrt({data.batch_size}/{DEFAULT_BATCH}))"
        if not given and steps[data.batch_size] > steps[DEFAULT_BATCH]:
            say(f"note: batches of {data.batch_size}{lr} for {images}: "
                f"{steps[data.batch_size]} steps per epoch, where batches of {DEFAULT_BATCH} "
                f"made {steps[DEFAULT_BATCH]}; --batch-size N, --lr X (batch_size=, lr=) "
                "for others")
    # --epochs with --min-steps is not exact: the way to exactly N leaves out --min-steps.
    exact = "--epochs N" if min_steps is None else "--epochs N without --min-steps"
    if min_steps is None:  # a resumed run keeps its own (0 for runs from before the option)
        min_steps = int((ran or {}).get("min_steps", 0)) if resuming else DEFAULT_MIN_STEPS
    per_epoch = epoch_steps(len(splits.train) // (dist or DistContext()).world, data.batch_size)
    epochs = epochs_for_steps(config.epochs, min_steps, per_epoch)
    # As asked for, in the meta: a bare --resume takes them again (`resume_options`).
    meta_asked = {"asked_patience": config.patience, "asked_warmup_epochs": config.warmup_epochs,
                  "asked_progressive": list(data.progressive) if data.progressive else None}
    grown = []  # what the note says grew with the epochs: --patience 2 read as 15 stopped runs
    if epochs > asked:  # "not improved for 15 epochs" where 2 were given, without a word
        # Patience, --progressive and the warm-up count the epochs asked for, as transfer's
        # fine-tuning counts its patience; the small size would otherwise be a sliver of the
        # run, and a warm-up of 1 epoch of 10 one of 75.
        if data.progressive is not None:
            small, span = data.progressive
            data = replace(data, progressive=(small, in_raised_epochs(span, epochs, asked)))
            grown.append(f"--progressive {small}:{span} as {small}:{data.progressive[1]}")
        patience = config.patience and in_raised_epochs(config.patience, epochs, asked)
        if patience:
            grown.append(f"--patience {config.patience} as {patience}")
        warmup = in_raised_epochs(float(config.warmup_epochs), epochs, asked)
        if warmup:
            grown.append(f"--warmup-epochs {config.warmup_epochs:g} as {warmup:g}")
        config = replace(config, patience=patience, warmup_epochs=warmup)
    if epochs > config.epochs:
        also = f" ({', '.join(grown)})" if grown else ""
        say(f"note: {epochs} epochs of {plural(per_epoch, 'step')} instead of "
            f"{config.epochs}, to make at least {min_steps} steps{also}; {exact} for exactly N")
    config = replace(config, epochs=epochs)
    mean, std = channel_stats(splits.train.images)
    train, val = make_loaders(splits, size, data, seed=config.seed, mean=mean, std=std, dist=dist)
    torch.manual_seed(config.seed)
    model = create_model(model_name, num_classes=splits.num_classes, in_chans=channels,
                         **model_kwargs)
    say_head_note(model_name, model, model_kwargs, say, size=size)
    if src is not None:
        report = grow_from(model, src["model"], source_meta=src.get("meta"), rule=grow_rule,
                           target_kwargs=model_kwargs, target_classes=list(splits.class_names))
        say(f"initialised from {init_from}:")
        for line in report.lines():
            say("  " + line)
    meta = model_meta(model_name, model, num_classes=splits.num_classes, in_chans=channels,
                      img_size=size, mean=mean, std=std, class_names=splits.class_names,
                      dataset=data.source, model_kwargs=model_kwargs,
                      val_fraction=data.val_fraction, seed=config.seed)
    # How many images each part had: a resumed run warns when the folder (or --cells) changed.
    meta["images"] = {"train": len(splits.train), "val": len(splits.val)}
    if data.hold_out_test and splits.test is not None:  # `compare` names the part kept apart
        meta["images"]["test"] = len(splits.test)
    # Whether the seed and --val-fraction chose the validation images (`compare` names runs
    # whose seeds differ as validated on other images only then).
    meta["val_drawn"] = splits.val_drawn
    # `evaluate` (its split and --split test) and a bare --resume load the data as this run did.
    meta["hold_out_test"] = data.hold_out_test
    if splits.val_drawn and builtin_name(data.source) is None:  # `evaluate` checks that the
        meta["val_files"] = splits.val.files_digest(data.source)  # folder splits the same
    meta["augment"] = augment_kind(data)  # `evaluate --tta` says when the net never saw flips
    meta["batch_size"], meta["label_smoothing"] = data.batch_size, label_smoothing
    meta["min_steps"], meta["asked_epochs"] = min_steps, asked
    meta.update(meta_asked)
    # The rest of the recipe the config does not hold, for `cnnzoo compare` to tell runs apart.
    meta["erase"] = data.erase
    meta["progressive"] = list(data.progressive) if data.progressive else None
    if init_from is not None:
        meta["init_from"] = str(Path(init_from).resolve())
    if config.tta and meta["augment"] not in FLIPPING:
        say(tta_note(meta["augment"]))
    if note := flip_note(meta["augment"], data.source):
        say(note)
    meta["class_weight"] = class_weight
    weights = class_weights(class_weight, splits.train.labels, splits.num_classes)
    if weights is not None:
        say(class_weights_line(class_weight, weights, splits.class_names))
    task = ClassificationTask(splits.num_classes, label_smoothing=label_smoothing,
                              class_names=splits.class_names, class_weights=weights)
    trainer = Trainer(model, task, train, val, config, out_dir=out_dir, meta=meta, dist=dist,
                      say=say, show=show)
    result = trainer.fit(resume=resume, overwrite=overwrite)
    result.skipped = splits.skipped_count
    return result


def say_head_note(model_name: str, model: nn.Module, model_kwargs: dict[str, Any],
                  say: Any, *, size: int | None = None) -> None:
    """A VGG cut to fewer stages for small images keeps the 4096-wide ImageNet head behind a
    7x7 pool, which then only repeats a 3x3 map: say so, with the options that fit (a QA run
    found vgg11_bn stages=3 width_mult=0.25 to be 29.7 M parameters, 60,864 of them convs).
    A VGG whose last map at the training `size` is smaller than its `pool_size` (the full
    vgg11_bn at 32 px: 1x1 spread over 7x7) hears which pool_size fits: at the default recipe
    that net's loss went to NaN in epoch 2, and trained with pool_size=1."""
    from ..models import get_config
    from ..models.base import count_parameters

    if get_config(model_name).family != "vgg":
        return
    stages = model_kwargs.get("stages") or 5
    if stages >= 5 or "fc_dim" in model_kwargs:
        pool = model.avgpool.output_size[0]
        grid = None if size is None else size >> stages
        if grid and grid < pool:
            say(f"note: at {size} px {model_name}'s last feature map is {grid}x{grid}, which "
                f"pool_size={pool} spreads over {pool}x{pool} for the first dense layer (its "
                f"weights then step as if {round(pool**2 / grid**2)} times as wide); "
                f"--model-arg pool_size={grid} fits it")  # fmt: skip
        return
    total = count_parameters(model)
    head = count_parameters(model.classifier)
    say(f"note: {model_name} with stages={model_kwargs['stages']} keeps the ImageNet head: "
        f"{head:,} of its {total:,} parameters; --model-arg fc_dim=256 --model-arg pool_size=3 "
        "fit small images (docs/training.md)")


def run_checkpoint(path: Path) -> dict[str, Any] | None:
    """A run's checkpoint, mapped, not read (the Trainer reads the file afterwards); None when
    it cannot be read (the Trainer then says what is wrong). One of a newer cnnzoo is its
    `NewerFormatError` here, before the data load (minutes for a big folder) that the
    Trainer's own refusal comes after."""
    try:
        return load_checkpoint(path, mmap=True)
    except NewerFormatError:
        raise
    except WeightsError:
        return None


def run_meta(path: Path) -> dict[str, Any] | None:
    """The meta of a run's checkpoint (`run_checkpoint`), or None."""
    return (run_checkpoint(path) or {}).get("meta")


def _trained_input(meta: dict[str, Any] | None, source: str,
                   run_dir: Path) -> tuple[int, int] | None:  # fmt: skip
    """(img_size, in_chans) a `cnnzoo train` checkpoint's `meta` (in `run_dir`) says it was
    trained with on `source`; None without one, when it was trained on other data, or when it
    does not say."""
    meta = meta or {}
    size, chans = meta.get("img_size"), meta.get("in_chans")
    if not same_source(trained_data(meta, run_dir, source), source):
        return None
    return (size, chans) if isinstance(size, int) and chans in (1, 3) else None


def trained_data(meta: dict[str, Any], run_dir: Path, given: object = None) -> str:
    """The data the run whose checkpoint `meta` lies in `run_dir` trained on, where it is now
    (`paths.run_data`); `given` (--data) when it is that data."""
    return run_data(meta.get("dataset"), meta.get("dataset_from_run"), run_dir, given)


def model_from_checkpoint(
    path: str | os.PathLike[str], ckpt: dict[str, Any] | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the classifier a `cnnzoo train` checkpoint holds (`ckpt`: the file already
    loaded); returns (model in eval mode, meta)."""
    from ..models import create_model
    from ..weights.adapt import fitted_model, warn_non_finite

    ckpt = ckpt if ckpt is not None else load_checkpoint(path)
    meta = ckpt.get("meta") or {}
    if "model" not in meta or not isinstance(meta.get("model"), str):
        raise WeightsError(f"{path} does not say which model it holds: give a checkpoint "
                           "written by `cnnzoo train` (last.pt or best.pt)")
    if meta.get("transfer"):
        bundle = shlex.quote(str(transfer_bundle(path)))  # as the shell takes it
        raise WeightsError(f"{path} is a checkpoint of transfer fine-tuning: use the bundle the "
                           f"run wrote (cnnzoo predict IMAGE --bundle {bundle}, cnnzoo evaluate "
                           f"--bundle {bundle} --data DIR)")  # fmt: skip
    if meta.get("task") == "segmentation":
        raise WeightsError(f"{path} is a segmentation checkpoint ({meta['model']}): segment "
                           "images with cnnzoo segment IMAGE --checkpoint FILE; score it on "
                           "image/mask pairs with cnnzoo evaluate FILE --data DIR")  # fmt: skip
    model = fitted_model(lambda: create_model(meta["model"], num_classes=meta["num_classes"],
                                              in_chans=meta["in_chans"],
                                              **meta.get("model_kwargs") or {}),
                         ckpt["model"], path)  # fmt: skip
    warn_non_finite(ckpt["model"], path)
    return model.eval(), meta


def training_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The loaded file when `path` is a checkpoint written by `cnnzoo train` (its format tag
    and the run's meta), else None (a plain state_dict, another format). Told by its contents,
    whatever its name: a renamed run.bin was taken for a bare state_dict."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            if fh.read(4) != b"PK\x03\x04":  # torch.save's zip archive; safetensors, HDF5 ...
                return None
    except OSError:  # a folder, a missing file: the weights loader says which
        return None
    try:
        # Mapped, not read: a torchvision .pth of 500 MB took 0.32 s to be read here only to be
        # told apart, before the weights loader read it again.
        ckpt = load_checkpoint(p, mmap=True)
    except (NewerFormatError, DamagedCheckpointError):
        raise  # ours (newer, or damaged): read as plain weights it lost its model and classes
    except WeightsError:
        return None  # not one of ours (or a legacy-format file): the weights loader reads it
    meta = ckpt.get("meta")
    if str(ckpt.get("format", "")).startswith("cnnzoo-checkpoint") and isinstance(meta, dict):
        return ckpt
    return None


def evaluation_split(src: str, split: str | None, trained_on: str = "") -> str:
    """The split of `src` that `evaluation_images` scores: `split`, or by default 'val' on the
    data the run trained on and on a built-in, 'all' on another folder or CSV."""
    if split is None:
        split = "val" if builtin_name(src) is not None or same_source(src, trained_on) else "all"
    if split not in ("val", "test", "all"):
        raise DataError(f"split must be val, test or all, not {split!r}")
    return split


def scored_images(src: str, split: str | None, trained_on: str = "") -> str:
    """Which images `evaluation_images` scores, in words: 'digits, the run's validation
    split'. (`cnnzoo evaluate` said only '100 images', and on a training folder a reader could
    not tell its validation split from all of it.)"""
    split = evaluation_split(src, split, trained_on)
    own = same_source(src, trained_on)
    if split == "test" and builtin_name(src) is not None:  # a built-in's test set is its val
        split = "val"
    which = {"val": "the run's validation split" if own else "its validation split",
             "test": "its test part",
             "all": "all its images, the training ones too" if own else "all its images"}[split]
    return f"{src}, {which}"


def _val_in_row_order(src: str, splits: Any, val_fraction: float, seed: int,
                      val_files: str) -> Any:
    """The validation split a run trained before a CSV manifest's rows were read in path order
    drew, in the rows' order: when it is the run's own (`val_files`), else None."""
    from ..data.dataset import ImageDataset
    from ..data.folder import legacy_row_order

    if Path(src).suffix.lower() != ".csv" or not splits.train.paths or not splits.val.paths:
        return None
    pool = ImageDataset(torch.cat([splits.train.images, splits.val.images]),
                        torch.cat([splits.train.labels, splits.val.labels]), splits.class_names,
                        [*splits.train.paths, *splits.val.paths])  # fmt: skip
    val = legacy_row_order(Path(src), pool).split(val_fraction, seed)[1]
    return val if val.files_digest(src) == val_files else None


def evaluation_images(
    src: str, spec: Any, split: str | None, class_names: list[str], *, trained_on: str = "",
    val_fraction: float = 0.2, seed: int = 0, size: int | None = None,
    val_files: str | None = None, progress: bool = True,
    count_skipped: Callable[[int], None] | None = None, hold_out_test: bool = False,
) -> Any:
    """The labelled images to score a model on, labels in `class_names` order (an ImageDataset).

    split: 'val' (the validation split of `trained_on`'s run: same fraction and seed, so no
    training image is counted), 'test' (the source's test part, e.g. DIR/test/; Fashion-MNIST's
    test set is its validation split), or 'all' (every image). Default: 'val' on the training
    data, 'all' on another folder or CSV (a held-out set), 'val' on a built-in. Built-in sets
    load at their native size and are resized to `size` when given. `spec` decodes files.
    val_files: the run's `ImageDataset.files_digest` of its validation split: a folder that no
    longer splits into those files (images added, removed or renamed since) is refused for
    'val', whose images would now include some the run trained on. progress: the bar while a
    folder's images are decoded. count_skipped: given, told how many files (and CSV rows) the
    load left out as unreadable, as `Splits.skipped_count` (`cnnzoo data info --json`) counts.
    hold_out_test: as the run loaded its data (`load_dataset`): its test part did not validate.
    """
    from ..data import builtin
    from ..data.dataset import ImageDataset
    from ..data.folder import composed
    from ..data.images import ImageSpec

    is_builtin = builtin_name(src) is not None
    split = evaluation_split(src, split, trained_on)
    if not is_builtin and not Path(src).exists() and same_source(src, trained_on):
        raise DataError(f"{src}, the data the model was trained on, is not there any more: "
                        "pass the images to score with --data")  # fmt: skip
    if is_builtin:
        spec = ImageSpec(size=None, channels=spec.channels)
    splits = builtin.load_dataset(src, spec, val_fraction=val_fraction, seed=seed, min_classes=1,
                                  progress=progress, hold_out_test=hold_out_test,
                                  note_test=False)
    if count_skipped is not None:
        count_skipped(splits.skipped_count)
    if is_builtin and size is not None:  # the same pixels the run validated on
        splits = resize_in_memory(splits, size)
    if split == "all":
        parts = [p for p in (splits.train, splits.val, splits.test) if p is not None]
        ds = ImageDataset(torch.cat([p.images for p in parts]),
                          torch.cat([p.labels for p in parts]), splits.class_names)
    elif split == "test":
        if splits.test is None and not is_builtin:
            raise DataError(f"{src} has no test part apart from its validation part (DIR/test/ "
                            "beside DIR/val/, or rows marked test; a test/ alone validated the "
                            "run unless it was trained with --val-fraction, which keeps test/ "
                            "held out): use --split val or --split all")  # fmt: skip
        ds = splits.test if splits.test is not None else splits.val
    else:
        ds = splits.val
        if not len(ds):  # a sheet of test rows alone (`load_csv`): nothing validates
            raise no_validation_rows(src)
        if (val_files and splits.val_drawn and not is_builtin and same_source(src, trained_on)
                and ds.files_digest(src) != val_files
                and (ds := _val_in_row_order(src, splits, val_fraction, seed, val_files)) is None):
            rows = (", or its rows reordered, for a run from before rows were read in path order" if
                    src.lower().endswith(".csv") else "")  # fmt: skip
            raise DataError(f"{src} has changed since the run was trained (images added, "
                            f"removed, renamed or now readable{rows}), so its validation split "
                            "would hold images the run trained on: pass --data with held-out "
                            "images")
    if len(ds) == 0:  # an empty test part, or nothing at all (an empty val part is said above)
        raise DataError(f"{src} has no {split} images: use --split test or --split all")
    # Data's class names are NFC (`folder.composed`); a model trained before that may hold a
    # Mac folder's decomposed 'ü'.
    trained = [composed(c) for c in class_names]
    if ds.class_names != class_names:
        if set(ds.class_names) - set(trained):
            raise DataError(f"{src} has classes the model was not trained on: "
                            f"{sorted(set(ds.class_names) - set(trained))}; score it on "
                            f"images of its classes ({some(class_names, len(class_names))})")  # fmt: skip
        remap = torch.tensor([trained.index(c) for c in ds.class_names])
        ds.labels = remap[ds.labels]
        ds.class_names = list(class_names)
    return ds


def evaluate_checkpoint(
    path: str | os.PathLike[str], source: str | None = None, *, batch_size: int = 256,
    split: str | None = None, tta: bool | str = False, progress: bool = True,
    count_skipped: Callable[[int], None] | None = None,
) -> tuple[dict[str, float], ClassificationAccumulator, list[str]]:
    """Accuracy, top-5 and the confusion matrix of a checkpoint on `source` (default: the data
    set it was trained on); `split` and `count_skipped` as in `evaluation_images`. tta:
    test-time augmentation, see `engine.loop.tta_views`. progress: the bar while a folder's
    images are decoded.
    """
    from ..data.augment import default_augmentation
    from ..data.images import ImageSpec

    ckpt = load_checkpoint(path)
    model, meta = model_from_checkpoint(path, ckpt)
    trained_on = trained_data(meta, Path(path).parent, source)
    src = str(source or trained_on)
    if not src:
        raise DataError("say which data to evaluate on: --data DIR|fashion-mnist|digits")
    size = meta["img_size"]
    names = meta.get("class_names") or [str(i) for i in range(meta["num_classes"])]
    ds = evaluation_images(src, ImageSpec(size=size, channels=meta["in_chans"]), split, names,
                           trained_on=trained_on, val_fraction=meta.get("val_fraction", 0.2),
                           seed=meta.get("seed", 0), size=size,
                           val_files=meta.get("val_files"), progress=progress,
                           count_skipped=count_skipped,
                           hold_out_test=bool(meta.get("hold_out_test")))  # fmt: skip
    loader = BatchLoader(ds.images, ds.labels, batch_size=batch_size,
                         transform=default_augmentation("none", size),
                         mean=meta["mean"], std=meta["std"])
    task = ClassificationTask(meta["num_classes"], class_names=names)
    trainer = Trainer(model, task, loader, config=TrainConfig(progress=False, verbose=False))
    if "precision" in ckpt:  # the run's own (bf16 or fp32): its validation numbers, repeated
        trainer.precision = Precision.of_checkpoint(ckpt)
        model.to(memory_format=trainer.precision.memory_format)
    if tta and meta.get("augment", "flip-crop") not in FLIPPING:
        logging.getLogger("cnnzoo.engine").warning(tta_note(meta["augment"]))
    acc = trainer.evaluate(loader, tta=tta)
    return acc.summary(), acc, names


def tta_note(augment: str) -> str:
    return (f"note: --tta averages over mirrored images, but the net trained without flips "
            f"(augmentation {augment}): its TTA accuracy may be lower, not higher")


def out_dir_for(model_name: str, out: str | None) -> Path:
    return Path(out) if out else Path("runs") / model_name
