"""`transfer(data, model=..., weights=...)`: a pretrained network + your images -> a bundle.

The steps, each timed and announced through `say`:

1. load the weights (`cnnzoo.weights`: 'imagenet' or any checkpoint file) and take their
   preprocessing; decode the images the way those weights expect (`cnnzoo.data`: folder or CSV
   manifest, unreadable files skipped with a one-line warning, grey images as RGB);
2. *features* (modes 'features' and 'both'): the frozen backbone's pre-logits vectors (or its
   pooled feature stages, `TransferConfig.stages`) of every image and view, through the on-disk
   cache, and a new head fitted on them (`heads`);
3. *fine-tune* (modes 'finetune' and 'both'): the engine's two phases (`finetune`), both of
   them also in 'both': a new head is trained on the frozen backbone, then the whole net. The
   features head is not the starting point: fine-tuning from it scored lower (measured: see
   `transfer` below). The fine-tuned net is kept (`keep_best`: the one of the two with the
   lower validation loss);
4. the bundle (`bundle/`) and the report (confusion, curves, per-class table, top losses).

Nothing is written before the data have loaded and been checked, so bad input leaves no
half-written output folder behind. The settings are checked first (`check_config`, which the
command line relies on too), and so is the output folder (`check_out`: not inside the data, and
not holding an earlier run unless that run is to be replaced or resumed).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import inspect
import math
import os
import shlex
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data.augment import AUGMENTATIONS
from ..data.dataset import Splits
from ..engine.checkpoint import caller_rng_kept
from ..engine.task import (
    ClassificationAccumulator,
    check_class_weight,
    class_weights,
    class_weights_line,
)
from ..errors import ArgumentKindError, DataError, UsageError
from ..limits import MAX_SEED
from ..models.base import is_whole
from ..models.taps import StageTaps, check_stages
from ..paths import check_folder, check_outside, folders_released, hold_folder, remove_entries
from ..text import plural, some, to_stderr
from ..weights import Preprocessing
from ..weights.files import weights_fingerprint
from .bundle import FITS, HEAD_KINDS, Bundle, input_spec, predict_tensor
from .features import (
    MAX_VIEWS,
    cached_features,
    feature_cache_dir,
    inference_dtype,
)
from .finetune import FinetuneConfig, finetune
from .heads import HeadFit, MLPHead, fit_logistic, fit_mlp, head_probabilities, install_head
from .report import REPORT_FILES, accumulate, per_class_table, write_report

MODES = ("features", "finetune", "both")
# Everything a run writes into its output folder; a new run there replaces all of it.
RUN_FILES = ("bundle", "finetune", *REPORT_FILES)
# Settings of the whole run that fine-tuning reads from its own FinetuneConfig: `transfer`
# fills them in from TransferConfig, so the library and the command line agree.
SHARED_FIELDS = ("batch_size", "precision", "seed", "progress", "class_weight")


@dataclass
class TransferConfig:
    """mode: 'features', 'finetune' or 'both'. head: 'linear' (logistic regression, L2 tuned by
    cross-validation unless `l2` is given) or 'mlp'. views: 1-4 fixed views per image for the
    features and for prediction (2 = the image and its mirror); None (default): 2, or 1 on
    digits, whose mirror images are no digits (as `finetune.augment` None is flip-crop, or crop
    on digits). img_size: input size (default:
    the weights' crop size, 224 for ImageNet weights). fit: 'crop' (the weights' resize-and-
    centre-crop) or 'resize' (the whole image squashed to the input size; better for small,
    tightly framed images); None (default): as the weights were trained, 'crop' for ImageNet
    weights, 'resize' for a `cnnzoo train` checkpoint; built-in sets are always squashed, and
    their bundles say 'resize'.
    class_weight: 'balanced' weighs each class's loss by n / (K n_k) over the training images
    (scikit-learn's class_weight='balanced'), in the features head and in fine-tuning; 'none'
    does not; None: 'none', or, resuming, what the interrupted fine-tuning used.
    batch_size, precision, seed, progress and class_weight hold for the whole run, fine-tuning
    included (`SHARED_FIELDS`: `finetune`'s fields of those names are set from them)."""

    mode: str = "both"
    head: str = "linear"
    l2: float | None = None
    views: int | None = None
    img_size: int | None = None
    # Feature stages the features head reads, pooled and concatenated (models.taps.StageTaps),
    # e.g. (4, 5); 'auto': the model's default (`ModelConfig.transfer_stages`: (4, 5) for
    # efficientnet_lite0/1/2, none for the others); None or (): the model's own pre-logits vector.
    # Fine-tuning always trains the model with its own head: with Lite0's stages 4 + 5 it
    # scored the same or a little lower (3 draws, hard set 10 / 50 per class 0.653 / 0.760
    # against 0.649 / 0.766; easy set 10 per class 0.957 against 0.964; docs/transfer.md).
    stages: tuple[int, ...] | str | None = "auto"
    fit: str | None = None
    batch_size: int = 32
    val_fraction: float = 0.2
    # A test/ part (test rows) without a val/ one stays held out, and validation is drawn from
    # the training images (`--val-fraction` given); else test/ validates (`load_dataset`).
    hold_out_test: bool = False
    precision: str = "auto"
    cache_dir: str | None = None
    use_cache: bool = True
    # Mode 'both': keep the features head instead of the fine-tuned net when its validation loss
    # is lower. Off by default: in the benchmark (10 validation images per class) that choice
    # picked the features head in 3 of 6 cases and was wrong each time (costing 0.063, 0.005
    # and 0.018 test accuracy): the fine-tuned net scored higher in all 6.
    keep_best: bool = False
    class_weight: str | None = None
    seed: int = 0
    progress: bool = True
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)


@dataclass
class TransferResult:
    """What `transfer` returns. bundle: the trained classifier (`Bundle.predict`,
    `.evaluate`, `.save`); out_dir: where the bundle and report were written (None: nowhere);
    metrics: per stage ('features', 'finetune': validation accuracy, loss, balanced accuracy,
    macro F1) and the kept one's at the top level ('kept', 'val_acc', ...); timings: seconds per
    step; features_computed: feature vectors computed (the others came from the cache);
    history: fine-tuning's epoch records ('phase' 'head' or 'full'); val_probabilities: the kept
    model's validation probabilities (N, K); accumulator: their engine accumulator, as
    `FitResult`'s and `Bundle.evaluate`'s (`.confusion`, rows the true class; `.per_class()`:
    the precision and recall the per-class table prints; `.balanced()`)."""

    bundle: Bundle
    out_dir: Path | None
    metrics: dict[str, Any]  # per stage: {'features': {...}, 'finetune': {...}, 'kept': ...}
    timings: dict[str, float]
    features_computed: int = 0
    history: list[dict[str, Any]] = field(default_factory=list, repr=False)
    val_probabilities: Tensor | None = field(default=None, repr=False)
    # With out=None nothing printed the per-class table or wrote the confusion matrix: here
    # they are, for every run.
    accumulator: ClassificationAccumulator | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        # The command's summary line, not the dataclass's: that printed the metrics dict whole,
        # the L2 search's nine rows of full-precision floats included (1,500 characters).
        out = f", out_dir={str(self.out_dir)!r}" if self.out_dir is not None else ""
        return (f"TransferResult({validation_summary(self.metrics)}; "
                f"{sum(self.timings.values()):.1f} s; bundle={self.bundle!r}{out})")


def validation_summary(metrics: dict[str, Any]) -> str:
    """'validation accuracy features 0.950 (balanced 0.950), finetune 0.960 (balanced 0.958);
    kept finetune': what `cnnzoo transfer` ends with and a `TransferResult` prints as."""
    stages = ", ".join(f"{s} {metrics[s]['val_acc']:.3f} (balanced "
                       f"{metrics[s]['val_balanced_acc']:.3f})"
                       for s in ("features", "finetune") if s in metrics)  # fmt: skip
    return f"validation accuracy {stages}; kept {metrics.get('kept')}"


def load_backbone(name: str, weights: Any, *, img_size: int | None = None,
                  model_kwargs: dict[str, Any] | None = None) -> tuple[nn.Module, Preprocessing, str]:  # fmt: skip
    """The zoo model with `weights` loaded (None: random init), the preprocessing those weights
    expect (resized to `img_size` if given) and a fingerprint of the weights for the cache."""
    from ..models import create_model
    from ..weights import create_pretrained

    if weights is None:
        model = create_model(name, **(model_kwargs or {}))
        pre = Preprocessing.for_model(model)
        wid = "random"
    else:
        # Built like its checkpoint, as predict and convert build it: a GoogLeNet file without
        # auxiliary heads, the options a `cnnzoo convert` output or a `cnnzoo train` checkpoint
        # records (a narrow VGG).
        model = create_pretrained(name, weights, **(model_kwargs or {}))
        info = model.weights_info
        pre = info.preprocessing
        wid = weights_fingerprint(info.source)  # the file a named tag resolved to, or the path
    if img_size is not None and img_size != pre.crop_size:
        resize = round(img_size * pre.resize_size / pre.crop_size)
        pre = dataclasses.replace(pre, crop_size=img_size, resize_size=resize)
    return model, pre, wid


def _own_head_note(net: nn.Module, model: str, k: int) -> str | None:
    """What to say when the weights bring a trained head of their own other than ImageNet's
    (a fine-tuned 5-class file): transfer replaces it, which its owner may not expect."""
    info = getattr(net, "weights_info", None)
    n = getattr(net, "num_classes", 0)
    if info is None or not info.head_loaded or n in (0, 1000):
        return None
    names = f" ({some(info.class_names, 6)})" if info.class_names else ""
    return (f"note: {info.source} has a trained {n}-class head{names}; transfer keeps its "
            f"backbone and learns a new {k}-class head (to predict with its own: cnnzoo "
            f"predict IMAGE --model {model} --weights {shlex.quote(str(info.source))})")


def resolve_stages(model: str, stages: tuple[int, ...] | str | None,
                   mode: str = "features") -> tuple[int, ...]:  # fmt: skip
    """The feature stages the features head on `model` reads: 'auto' is the model's default,
    () its pre-logits vector. Mode 'finetune' has no features head. (`check_config` has
    refused any other string, and stages given for mode 'finetune'.)"""
    if stages == "auto":
        from ..models import get_config

        return tuple(get_config(model).transfer_stages) if mode != "finetune" else ()
    return tuple(stages or ())


def _load_data(data: Any, pre: Preprocessing, cfg: TransferConfig) -> tuple[Splits, str]:
    """The splits, with the model's channels, and the fit their images got: `cfg.fit` for image
    files (decoded at the input size by `input_spec`) and for in-memory images already at that
    size; 'resize' for the others, which `model_input` squashes per batch."""
    from ..data.builtin import builtin_name, load_dataset
    from ..data.images import ImageSpec

    if isinstance(data, Splits):
        splits = data
        builtin = False
    else:
        builtin = builtin_name(data) is not None  # any spelling: 'fmnist', 'Digits'
        # Built-in sets stay at their native size in memory (Fashion-MNIST at 224 px would take
        # 9 GB) and are resized per batch; image files are decoded at the input size directly.
        spec = ImageSpec(channels=pre.channels) if builtin else input_spec(pre, cfg.fit)
        splits = load_dataset(data, spec, val_fraction=cfg.val_fraction, seed=cfg.seed,
                              progress=cfg.progress, hold_out_test=cfg.hold_out_test)  # fmt: skip
    if splits.num_classes < 2:
        raise DataError("transfer learning needs two or more classes")
    if len(splits.val) == 0:
        raise DataError("no validation images: add a val/ folder or more images per class")
    want = pre.channels
    parts = [p.with_channels(want) if p.channels != want else p for p in (splits.train, splits.val)]
    test = splits.test.with_channels(want) if splits.test is not None else None
    # A built-in's images are squashed even at their native size (28 px): recorded as 'crop',
    # its exported files lost their borders at prediction (digits: accuracy 0.90 against 1.00).
    at_size = splits.train.image_size == (pre.crop_size, pre.crop_size)
    fit = cfg.fit if at_size and not builtin else "resize"
    return dataclasses.replace(splits, train=parts[0], val=parts[1], test=test), fit


def _config(config: TransferConfig | None, options: dict[str, Any]) -> TransferConfig:
    """`config` with `TransferConfig` fields given as keywords (`transfer(data, mode=...)`)."""
    if config is not None and not isinstance(config, TransferConfig):
        raise UsageError(f"config must be a TransferConfig, not a {type(config).__name__}: "
                         "config=TransferConfig(**settings) (from cnnzoo.transfer), or the "
                         "settings as keywords")  # fmt: skip
    cfg = config or TransferConfig()
    if not options:
        return _plain_numbers(cfg)
    fields = {f.name for f in dataclasses.fields(TransferConfig)}
    ft_fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    for name in options:
        if name in ft_fields and name not in fields:
            raise ArgumentKindError(f"transfer(): {name!r} is a fine-tuning setting: pass "
                                    f"finetune=FinetuneConfig({name}=...)")  # fmt: skip
        if name not in fields:
            # A misspelt `model` or `weights` is no field: the list below would not show it.
            own = [p for p in inspect.signature(transfer).parameters if p not in ("data", "say",
                                                                                   "show", "options")]
            close = difflib.get_close_matches(name, [*own, *fields, *ft_fields], n=2)
            hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
            raise ArgumentKindError(f"transfer() got an unexpected keyword argument {name!r}{hint}: its "
                                    f"settings are TransferConfig's fields "
                                    f"({', '.join(sorted(fields))})")  # fmt: skip
    return _plain_numbers(dataclasses.replace(cfg, **options))


def _plain_numbers(cfg: TransferConfig) -> TransferConfig:
    """`cfg` with numpy scalars as Python numbers: seed=np.int64(3) (a seed from np.arange, a
    batch size from a grid) was refused as 'must be a whole number >= 0, not np.int64(3)', and
    an np.float32 val_fraction as not between 0 and 1, where each is the number it shows."""
    import numpy as np

    def plain(obj: Any) -> Any:
        numbers = {f.name: value.item() for f in dataclasses.fields(obj)
                   if isinstance(value := getattr(obj, f.name), np.generic)}  # fmt: skip
        return dataclasses.replace(obj, **numbers) if numbers else obj

    cfg = plain(cfg)
    if isinstance(cfg.finetune, FinetuneConfig):  # anything else: check_config's line
        cfg = dataclasses.replace(cfg, finetune=plain(cfg.finetune))
    return cfg


def check_config(cfg: TransferConfig, *, resume: bool = False) -> None:
    """Settings that cannot work or that contradict each other (or the mode): one `UsageError`
    line naming the setting and its command-line option, before anything is loaded. `transfer`
    calls it, and so does `cnnzoo transfer`, before it looks at any file."""

    def count(name: str, option: str, value: Any, extra: str = "") -> None:
        if not is_whole(value):
            raise UsageError(f"{name} ({option}) must be a whole number >= 1{extra}, not {value!r}")

    if cfg.mode not in MODES:
        raise UsageError(f"mode (--mode) must be one of {', '.join(MODES)}, not {cfg.mode!r}")
    if cfg.head not in HEAD_KINDS:
        raise UsageError(f"head (--head) must be one of {', '.join(HEAD_KINDS)}, not {cfg.head!r}")
    if cfg.fit is not None and cfg.fit not in FITS:
        raise UsageError(f"fit (--fit) must be one of {', '.join(FITS)}, not {cfg.fit!r}")
    if isinstance(cfg.stages, str) and cfg.stages != "auto":
        raise UsageError("stages (--stages) must be 'auto', None or stage numbers such as "
                         f"(4, 5), not {cfg.stages!r}")  # fmt: skip
    if cfg.mode == "finetune" and cfg.stages and cfg.stages != "auto":
        raise UsageError("stages (--stages) choose what the features head reads; mode "
                         "'finetune' has none (use mode 'features' or 'both')")  # fmt: skip
    if cfg.views is not None and not (is_whole(cfg.views) and cfg.views <= MAX_VIEWS):
        raise UsageError(f"views (--views) must be a whole number from 1 to {MAX_VIEWS} (None: "
                         f"the data's default), not {cfg.views!r}")  # fmt: skip
    if cfg.img_size is not None:
        count("img_size", "--img-size", cfg.img_size, " (None: the weights' size)")
    count("batch_size", "--batch-size", cfg.batch_size)
    if not (is_whole(cfg.seed, 0) and cfg.seed <= MAX_SEED):  # numpy's: none below 0
        raise UsageError(f"seed (--seed) must be a whole number from 0 to {MAX_SEED}, not "
                         f"{cfg.seed!r}")  # fmt: skip
    if not (isinstance(cfg.val_fraction, int | float) and 0 < cfg.val_fraction < 1):
        raise UsageError(f"val_fraction (--val-fraction) must lie strictly between 0 and 1, not "
                         f"{cfg.val_fraction!r}")  # fmt: skip
    if cfg.l2 is not None:
        if cfg.head == "mlp":
            raise UsageError("l2 (--l2) is the linear head's L2 strength; head 'mlp' has none "
                             "(drop l2, or use head 'linear')")  # fmt: skip
        if not (isinstance(cfg.l2, int | float) and math.isfinite(cfg.l2) and cfg.l2 > 0):
            raise UsageError(f"l2 (--l2) must be a number > 0 (None: chosen by "
                             f"cross-validation), not {cfg.l2!r}")  # fmt: skip
    check_class_weight(cfg.class_weight)
    if cfg.keep_best and cfg.mode != "both":
        raise UsageError("keep_best (--keep-best) chooses between the features head and the "
                         "fine-tuned net in mode 'both'; for the best fine-tuning epoch set "
                         "patience (--patience N)")  # fmt: skip
    if resume and cfg.mode == "features":
        raise UsageError("resume (--resume) continues an interrupted fine-tuning; mode "
                         "'features' has none (its features come from the cache: just run it "
                         "again)")  # fmt: skip
    if cfg.cache_dir is not None and not cfg.use_cache:
        raise UsageError("cache_dir (--cache DIR) and use_cache=False (--no-cache) contradict "
                         "each other: drop one")  # fmt: skip
    ft = cfg.finetune  # the command line's types refuse these; the library says the same
    if not isinstance(ft, FinetuneConfig):
        raise UsageError(f"finetune must be a FinetuneConfig, not a {type(ft).__name__}: "
                         "finetune=FinetuneConfig(**settings) (from cnnzoo.transfer)")  # fmt: skip
    for name, option, low in (("epochs", "--epochs", 1), ("head_epochs", "--head-epochs", 0),
                              ("min_steps", "--min-steps", 0), ("groups", None, 1)):  # fmt: skip
        if not is_whole(getattr(ft, name), low):
            where = f" ({option})" if option else ""
            raise UsageError(f"FinetuneConfig.{name}{where} must be a whole number >= {low}, "
                             f"not {getattr(ft, name)!r}")  # fmt: skip
    if not (isinstance(ft.lr, int | float) and math.isfinite(ft.lr) and ft.lr > 0):
        raise UsageError(f"FinetuneConfig.lr (--lr) must be a number > 0, not {ft.lr!r}")
    if not (isinstance(ft.lr_decay, int | float) and 0 < ft.lr_decay <= 1):
        raise UsageError(f"FinetuneConfig.lr_decay (--lr-decay) must lie in (0, 1], not "
                         f"{ft.lr_decay!r}")  # fmt: skip
    if ft.sam is not None and not (isinstance(ft.sam, int | float) and math.isfinite(ft.sam)
                                   and ft.sam >= 0):  # fmt: skip
        raise UsageError(f"FinetuneConfig.sam (--sam) must be a number >= 0 (0: off), or None "
                         f"for the default (on for small sets), not {ft.sam!r}")  # fmt: skip
    # Checked here, not where fine-tuning meets them: a bad patience was scaled to the epochs
    # added for min_steps and refused after phase 1 had trained, with another number (-23
    # for -1); a bad mixup only after the images had been decoded.
    if ft.patience is not None and not is_whole(ft.patience, 0):
        raise UsageError(f"FinetuneConfig.patience (--patience) must be a whole number of epochs "
                         f">= 1 (0 or None: off), not {ft.patience!r}")  # fmt: skip
    for name in ("mixup", "cutmix"):
        alpha = getattr(ft, name)
        if not (isinstance(alpha, int | float) and math.isfinite(alpha) and alpha >= 0):
            raise UsageError(f"FinetuneConfig.{name} (--{name}) must be a Beta alpha >= 0 (0: "
                             f"off), not {alpha!r}")  # fmt: skip
    if not (isinstance(ft.label_smoothing, int | float) and 0 <= ft.label_smoothing < 1):
        raise UsageError(f"FinetuneConfig.label_smoothing must lie in [0, 1), not "
                         f"{ft.label_smoothing!r}")  # fmt: skip
    if ft.augment is not None and ft.augment not in AUGMENTATIONS:
        raise UsageError(f"FinetuneConfig.augment (--augment) must be one of "
                         f"{', '.join(AUGMENTATIONS)} (None: the data's default), not "
                         f"{ft.augment!r}")  # fmt: skip
    default = FinetuneConfig()
    for name in SHARED_FIELDS:  # a FinetuneConfig value that would be replaced is a mistake
        mine, run_wide = getattr(cfg.finetune, name), getattr(cfg, name)
        if mine != getattr(default, name) and mine != run_wide:
            raise UsageError(f"FinetuneConfig({name}={mine!r}) disagrees with the run's "
                             f"{name}={run_wide!r}: {name} holds for the whole run, set it on "
                             "transfer (TransferConfig) only")  # fmt: skip


def mirror_defaults(cfg: TransferConfig, data: Any, say: Any) -> TransferConfig:
    """`cfg` with its views and fine-tuning augmentation set for `data` where not given: the
    image and its mirror, and flips, except on data whose mirror images change their class
    (digits: one view, crop), where given mirrors get a note instead. (Digits took the mirror
    by default: at 96 px, frozen Lite0 features scored 0.989 / 0.978 on seeds 0 / 1 with it,
    0.992 / 0.986 without, in half the time.)"""
    from ..data.builtin import mirror_changes_class
    from ..engine.run import default_augment, flip_note

    unmirrored = mirror_changes_class(data)
    if cfg.views is None:
        cfg = dataclasses.replace(cfg, views=1 if unmirrored else 2)
    elif unmirrored and cfg.views > 1:  # (the features and every prediction use them)
        say(f"note: --views {cfg.views} averages over mirrored images, and a mirrored digit is "
            "another symbol or none: its accuracy may be lower, not higher (the default for "
            "digits is 1)")
    ft = cfg.finetune
    if ft.augment is None:
        ft = dataclasses.replace(ft, augment=default_augment(data))
    elif cfg.mode != "features" and (note := flip_note(ft.augment, data)):
        say(note)
    return dataclasses.replace(cfg, finetune=ft)


def check_out(out: str | os.PathLike[str], data: Any, *, resume: bool, overwrite: bool) -> None:
    """A folder this run may write into, or one `UsageError` line before anything is loaded: not
    a file, not inside the data folder (a second run would read the report's images as a
    class), and holding no earlier run unless `overwrite` replaces it or `resume` continues
    its fine-tuning (as `cnnzoo train` treats its --out)."""
    check_folder(out, "output folder")
    check_outside(out, data)
    held = [name for name in RUN_FILES if (Path(out) / name).exists()]
    if held and not (overwrite or resume):
        # --resume only where there is a fine-tuning to continue: after a features run it is
        # refused in turn ("mode 'features' has none").
        resumable = ", --resume to continue its fine-tuning" if "finetune" in held else ""
        raise UsageError(f"{out} holds a transfer run ({held[0]}): pass --overwrite "
                         f"(overwrite=True) to replace it{resumable}, or another --out")


def _stage_metrics(probs: Tensor, labels: Tensor) -> dict[str, float]:
    """Validation accuracy, top-5 accuracy, loss (unweighted), balanced accuracy and macro F1
    of `probs`."""
    m = accumulate(probs, labels, probs.shape[1]).summary()
    return {"val_acc": m["acc"], "val_top5": m["top5"], "val_loss": m["loss"],
            "val_balanced_acc": m["balanced_acc"], "val_macro_f1": m["macro_f1"],
            "val_images": len(labels)}  # fmt: skip


def _finetune_checkpoints(out: str | os.PathLike[str] | None) -> list[Path]:
    """The checkpoints of the interrupted fine-tuning in `out`, its last phase's first."""
    if out is None:
        return []
    paths = (Path(out) / "finetune" / phase / "last.pt" for phase in ("full", "head"))
    return [path for path in paths if path.is_file()]


def _finetune_metas(out: str | os.PathLike[str] | None) -> Iterator[dict[str, Any]]:
    """The meta of each checkpoint of the interrupted fine-tuning in `out`, its last phase's
    first."""
    from ..engine.run import run_meta

    for path in _finetune_checkpoints(out):
        if meta := run_meta(path):
            yield meta


def finetune_started(out: str | os.PathLike[str] | None) -> bool:
    """Whether `out` holds a checkpoint of a fine-tuning (its head's phase or the whole net's)
    for a resume to continue."""
    return bool(_finetune_checkpoints(out))


def resumed_class_weight(out: str | os.PathLike[str] | None) -> str:
    """The class weighting of the interrupted fine-tuning in `out` (its checkpoints' meta);
    'none' when they do not say."""
    for meta in _finetune_metas(out):
        if "class_weight" in meta:
            return str(meta["class_weight"])
    return "none"


# TransferConfig's and FinetuneConfig's fields a run's record leaves out: where it writes and
# what it shows, not what it computes.
UNRECORDED = ("finetune", "progress", "verbose", "cache_dir", "use_cache")  # (cache: its own)
# Recorded settings the engine's own resume warning names already (`loop.RESUME_WARN_CONFIG`
# and `RESUME_WARN_META`: its epochs, as raised by min_steps, and its precision included).
ENGINE_WARNS = ("epochs", "min_steps", "head_epochs", "lr", "weight_decay", "freeze_bn",
                "patience", "augment", "label_smoothing", "class_weight", "mixup", "cutmix",
                "sam", "seed", "precision", "channels_last", "img_size", "val_fraction",
                "hold_out_test")  # fmt: skip


def run_record(cfg: TransferConfig, model: str, weights: Any,
               fingerprint: str) -> dict[str, Any]:  # fmt: skip
    """What a bare `cnnzoo transfer ... --resume` reads back from the fine-tuning checkpoints
    (`commands.resume_options.keep_transfer_options`): the model, the weights (a tag as given,
    a file by its absolute path) with their fingerprint, the feature cache, and the settings
    as this run settled them (views, fit, augmentation and class weighting for its data and weights), in one flat
    mapping under the command's option names (`--update-bn` as `freeze_bn`)."""
    def plain(obj: Any) -> dict[str, Any]:
        return {f.name: list(v) if isinstance(v := getattr(obj, f.name), tuple) else v
                for f in dataclasses.fields(obj) if f.name not in UNRECORDED}  # fmt: skip

    source = None if weights is None else str(weights)
    if isinstance(weights, str | os.PathLike) and Path(weights).is_file():
        source = str(Path(weights).resolve())  # a queue may restart it from another folder
    # Fine-tuning's shared settings (SHARED_FIELDS) are the run's.
    own = {**plain(cfg), **{k: v for k, v in plain(cfg.finetune).items()
                            if k not in SHARED_FIELDS}}  # fmt: skip
    # The feature cache changes no result, so no warning names it, but a bare resume keeps it:
    # a run given --no-cache for a read-only HOME was refused when restarted without it.
    return {"model": model, "weights": {"source": source, "fingerprint": fingerprint},
            "config": own, "cache": {"dir": cfg.cache_dir, "use": cfg.use_cache}}


def resumed_record(out: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    """`run_record` of the interrupted fine-tuning in `out`; None for one of a cnnzoo from
    before the record (a bare --resume then takes the defaults, as it did)."""
    return next((meta["transfer_run"] for meta in _finetune_metas(out)
                 if isinstance(meta.get("transfer_run"), dict)), None)  # fmt: skip


def record_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The settings of `new` (`run_record`) that differ from the resumed run's `old`, as the
    engine's resume warning words them, but those it names itself (`ENGINE_WARNS`)."""
    changes = []
    was, now = old.get("weights") or {}, new["weights"]
    if was.get("fingerprint") not in (None, now["fingerprint"]):
        same = was.get("source") == now["source"]
        changes.append(f"weights ({now['source']} changed since the run began)" if same else
                       f"weights (was {was.get('source')}, now {now['source']})")
    was, now = old.get("config") or {}, new["config"]
    changes += [f"{k} (was {was[k]}, now {now[k]})" for k in now
                if k in was and k not in ENGINE_WARNS and was[k] != now[k]]
    return changes


def _split_record(data: Any, splits: Splits, cfg: TransferConfig) -> dict[str, Any] | None:
    """How the run split the files `data` names, for finding the same split again: the data's
    path, the fraction, seed and held-out choice, and the drawn validation files' digest (which
    `Bundle.evaluate` checks, and the Trainer's resume warns on); None for data in memory."""
    if not isinstance(data, str | os.PathLike):
        return None
    from ..data.builtin import builtin_name

    source = Path(data).resolve() if Path(data).exists() else data
    record = {"source": str(source), "val_fraction": cfg.val_fraction, "seed": cfg.seed,
              "hold_out_test": cfg.hold_out_test}  # fmt: skip
    if splits.val_drawn and builtin_name(data) is None:  # the folder must split the same
        record["val_files"] = splits.val.files_digest(data)
    return record


def refuse_another_model(out: str | os.PathLike[str] | None, model: str) -> None:
    """A resume of a fine-tuning of another net: a bare `--resume` of a run from before its
    record (`run_record`) builds the default model, and was refused only after its whole
    features phase, with advice to resume it as a `cnnzoo train` run."""
    was = next(_finetune_metas(out), {}).get("model")
    if isinstance(was, str) and was != model:
        raise UsageError(f"{out} holds a fine-tuning of {was}, not {model}: resume it with the "
                         f"--model {was} and --weights it began with, or start over with "
                         "--overwrite")


@caller_rng_kept()
@folders_released()
def transfer(
    data: Any,
    *,
    model: str = "efficientnet_lite0",
    weights: Any = "imagenet",
    out: str | os.PathLike[str] | None = None,
    config: TransferConfig | None = None,
    resume: bool = False,
    overwrite: bool = True,
    model_kwargs: dict[str, Any] | None = None,
    say: Callable[[str], Any] | None = None,
    show: Callable[[str], Any] | None = None,
    **options: Any,
) -> TransferResult:
    """Transfer learning on `data` (image folder, CSV manifest, built-in name or `Splits`) with
    the zoo model `model` and `weights` ('imagenet', a checkpoint path, or None for random);
    writes the bundle and report into `out` (None: nothing written). The settings are
    `config` (a `TransferConfig`), or its fields as keywords (`mode="features"`), which
    override `config`'s. resume: continue the interrupted fine-tuning in `out`. overwrite: an
    `out` that holds an earlier run is emptied of it when this run starts writing (False
    refuses such a folder, as `cnnzoo transfer` does without --overwrite). model_kwargs: the
    model's options (`create_model`'s keywords, --model-arg: e.g. {'dropout': 0.3}). say:
    where progress and notes go (None: stderr, as `Trainer`'s); show: where the per-class
    table at the end goes (default: as `say`). See the module docstring."""
    say = say or to_stderr  # None was called, a TypeError after the weights and images loaded
    cfg = _config(config, options)
    check_config(cfg, resume=resume)
    if not isinstance(data, str | os.PathLike | Splits):  # os.fspath's TypeError named no data
        raise UsageError(f"data must be an image folder or CSV manifest (a path), a built-in "
                         f"set's name or a cnnzoo.data Splits (got {type(data).__name__})")
    from ..engine.distributed import library_threads
    from ..models import get_config

    library_threads()  # a Python caller's, within a container's CPU quota

    if get_config(model).task == "segmentation":  # it has no classifier to replace
        raise UsageError(f"{model} segments images: transfer learning fits a classifier; train "
                         f"it on image/mask pairs with `cnnzoo train {model} --task "
                         "segmentation` (--encoder takes a pretrained backbone)")  # fmt: skip
    if out is not None:
        check_out(out, data, resume=resume, overwrite=overwrite)
        if resume:
            refuse_another_model(out, model)
    # A run killed before fine-tuning's first checkpoint left nothing to resume, not even its
    # options: said now, not after the features phase (which may take minutes with others').
    if resume and out is None:  # (the Trainer said so only after the features phase)
        raise UsageError("resume continues the interrupted fine-tuning in out: give out, the "
                         "run's folder")  # fmt: skip
    resume_ft = resume and finetune_started(out)
    if resume and not resume_ft:
        say(f"note: nothing to resume in {out}: a fine-tuning writes its first checkpoint when "
            f"the head's first epoch ends, and its options with it; starting a new run of "
            f"{model} with the options given here")  # fmt: skip
    if cfg.use_cache and cfg.mode != "finetune":
        # The default one is in a HOME that a container may mount read-only: say where else.
        check_folder(cfg.cache_dir or feature_cache_dir(), "feature cache",
                     "choose another folder" if cfg.cache_dir else
                     "set $CNNZOO_CACHE to a writable folder, or choose one for this run "
                     "(--cache DIR) or none (--no-cache)")
    if cfg.img_size is not None:  # in the option's words, before the weights load
        from ..models import min_input_size

        smallest = min_input_size(model, **(model_kwargs or {}))
        if cfg.img_size < smallest:
            raise UsageError(f"img_size (--img-size) {cfg.img_size}: {model} takes inputs of at "
                             f"least {smallest} px")  # fmt: skip
    cfg = mirror_defaults(cfg, data, say)
    if cfg.class_weight is None:  # a resumed fine-tuning goes on weighting as it began
        cfg = dataclasses.replace(cfg, class_weight=resumed_class_weight(out) if resume
                                  else "none")
    timings: dict[str, float] = {}
    t = time.perf_counter()
    # Seeded before anything random: the new heads (and a random backbone) are initialised from
    # the global generator, and a second call in one process used to fine-tune from another head.
    torch.manual_seed(cfg.seed)
    net, pre, wid = load_backbone(model, weights, img_size=cfg.img_size, model_kwargs=model_kwargs)
    # A `cnnzoo train` checkpoint saw whole images squashed; cropping would cut the sides of
    # non-square images that its net never had cut.
    fit_given = cfg.fit is not None
    cfg = dataclasses.replace(cfg, fit=cfg.fit or pre.fit)
    built_with = dict(getattr(getattr(net, "weights_info", None), "model_kwargs", None) or {})
    stages = resolve_stages(model, cfg.stages, cfg.mode)
    if stages:  # checked (and put in order) before the images are decoded
        try:
            stages = check_stages(net, stages)
        except ValueError as exc:
            raise DataError(f"stages: {exc}") from None
    splits, fit_used = _load_data(data, pre, cfg)
    timings["load"] = time.perf_counter() - t
    k = splits.num_classes
    squashed = ""
    if fit_used != cfg.fit:
        squashed = " (images resized whole: fit resize)"
    elif fit_used == "resize" and not fit_given:
        squashed = " (images resized whole, as these weights were trained: fit resize)"
    # Held out: a test part beside a drawn split, which `evaluate --split test` scores.
    held = (f" ({len(splits.test)} test images held out)"
            if cfg.hold_out_test and splits.test is not None else "")
    say(f"data: {len(splits.train)} training and {len(splits.val)} validation images{held}, "
        f"{k} classes "
        f"({some(splits.class_names, 12)}); {model} at {pre.crop_size} px{squashed}, "
        f"{inference_dtype(cfg.precision)} [{timings['load']:.1f}s]")  # fmt: skip
    weights_k = class_weights(cfg.class_weight, splits.train.labels, k)
    if weights_k is not None:
        say(class_weights_line(cfg.class_weight, weights_k, splits.class_names))
    if weights is None:  # allowed (a baseline, tests), but not what anyone means by transfer
        say(f"note: no weights given, so {model} is randomly initialised: its frozen features "
            "transfer nothing learnt; give weights='imagenet' or a checkpoint file")
    elif (line := _own_head_note(net, model, k)) is not None:
        say(line)
    net.reset_classifier(k)
    # Fine-tuning starts from this new, untrained head even in mode 'both', where the features
    # head replaces it first; phase 1 trains it on the frozen backbone (with augmentation and
    # label smoothing). Hard Fashion-MNIST set, mean test accuracy of 3 draws at 10 / 50 images
    # per class: 0.649 / 0.766, against 0.645 / 0.752 when fine-tuning started from the
    # logistic-regression features head; easy set, one draw, 10 / 50 / 200 per class: 0.957 /
    # 0.961 / 0.984 against 0.944 / 0.953 / 0.979.
    new_head = net.get_classifier()
    if stages:
        # The features net: a head on the pooled stages. Its backbone is `net`'s (whose own head,
        # `new_head`, waits for fine-tuning): one copy of the weights in memory.
        net = StageTaps(net, stages, k)
    torch.manual_seed(cfg.seed)  # the same dropout and batch streams with or without stages
    out_dir = Path(out) if out is not None else None
    labels = splits.val.labels
    metrics: dict[str, Any] = {}
    fit: HeadFit | None = None
    computed = 0
    features_net: nn.Module | None = None

    if cfg.mode in ("features", "both"):
        t = time.perf_counter()
        common = dict(model_name=model, weights_id=wid if weights is not None else f"random-{cfg.seed}",
                      stages=stages,
                      views=cfg.views, batch_size=cfg.batch_size, precision=cfg.precision,
                      cache_dir=cfg.cache_dir, use_cache=cfg.use_cache, progress=cfg.progress)  # fmt: skip
        ftr, n1 = cached_features(net, splits.train.images, pre, desc="features train", **common)
        fva, n2 = cached_features(net, splits.val.images, pre, desc="features val", **common)
        computed = n1 + n2
        timings["features"] = time.perf_counter() - t
        n_img = len(splits.train) + len(splits.val)
        taps = f" (stages {'+'.join(map(str, stages))}, {net.num_features} features)" if (
            stages) else ""
        say(f"features: frozen {model}{taps} over {n_img} images x {plural(cfg.views, 'view')}, "
            f"{computed} computed, {n_img - computed} from the cache "
            f"[{timings['features']:.1f}s]")  # fmt: skip
        t = time.perf_counter()
        if cfg.head == "linear":
            fit = fit_logistic(ftr, splits.train.labels, k, l2=cfg.l2, seed=cfg.seed,
                               class_weights=weights_k)
        else:
            fit = fit_mlp(ftr, splits.train.labels, k, seed=cfg.seed, class_weights=weights_k)
        install_head(net, fit.head)
        probs = head_probabilities(fit.head, fva)
        metrics["features"] = {**_stage_metrics(probs, labels), "head": cfg.head,
                               "l2": fit.l2, "cv": fit.cv}  # fmt: skip
        timings["head"] = time.perf_counter() - t
        if fit.l2 is None:  # the MLP head
            l2 = ""
        elif cfg.l2 is not None:
            l2 = f" (L2 {fit.l2:g}, as given)"
        elif fit.cv:
            l2 = f" (L2 {fit.l2:g}, chosen by cross-validation)"
        else:  # `fit_logistic`'s fallback; metrics.json has "cv": []
            l2 = (f" (L2 {fit.l2:g}, fixed: cross-validation needs 2 or more training images "
                  "in every class)")  # fmt: skip
        say(f"head: {cfg.head}{l2}; validation accuracy {metrics['features']['val_acc']:.3f} "
            f"[{timings['head']:.1f}s]")  # fmt: skip
        if cfg.mode == "both" and metrics["features"]["val_acc"] == 1.0:
            # A QA run on five kinds of parts: 1.000 here in 13 s, then 10 minutes of fine-tuning
            # that could not show a gain on those images (it is kept all the same).
            rerun = " (seconds to rerun, from the feature cache)" if cfg.use_cache else ""
            say(f"note: the features head predicts all {len(labels)} validation images right; "
                "fine-tuning, the slow part, follows and cannot show a gain on them: "
                f"--mode features stops here{rerun}")
        final_probs = probs
        if cfg.mode == "both" and cfg.keep_best:  # fine-tuning changes the shared backbone
            features_net = copy.deepcopy(net)

    # What an earlier run wrote goes just before this run writes the same kind of thing (a
    # features run into a fine-tuning run's folder left its curves.png and finetune/ there).
    if out_dir is not None:  # its first write: from here on this run alone writes there
        hold_folder(out_dir)
        check_out(out_dir, data, resume=resume, overwrite=overwrite)  # one that ended meanwhile
    if out_dir is not None and not resume_ft:  # the old run's checkpoints, before ours
        remove_entries(out_dir, ("finetune",))
    split = _split_record(data, splits, cfg)
    history: list[dict[str, Any]] = []
    if cfg.mode in ("finetune", "both"):
        if isinstance(net, StageTaps):  # fine-tuning trains the model with its own head
            net = net.backbone
            net.num_classes = k
        install_head(net, MLPHead(net.num_features, k) if cfg.head == "mlp" else new_head)
        t = time.perf_counter()
        ft = dataclasses.replace(cfg.finetune, **{n: getattr(cfg, n) for n in SHARED_FIELDS})
        meta = {"model": model, "num_classes": k, "class_names": splits.class_names,
                "preprocessing": pre.to_dict(), "img_size": pre.crop_size, "transfer": True,
                "class_weight": cfg.class_weight,
                # The recipe the config does not hold: a resume with another --augment or
                # --label-smoothing went on without a word, as `cnnzoo train` warns of it.
                "augment": ft.augment or "flip-crop", "label_smoothing": ft.label_smoothing}
        if split is not None:  # a resume on other data is refused, as in train
            meta["dataset"] = split["source"]
            # The split, and its files, for the Trainer to warn when a resume splits the
            # data otherwise (`loop.RESUME_WARN_META`).
            meta.update({k: split[k] for k in ("val_fraction", "hold_out_test", "val_files")
                         if k in split})  # fmt: skip
            meta["val_drawn"] = splits.val_drawn  # (whether those split it: the warning's)
        meta["transfer_run"] = run_record(cfg, model, weights, wid)
        old = resumed_record(out_dir) if resume_ft else None
        if old is not None and (changed := record_changes(old, meta["transfer_run"])):
            say(f"warning: resuming with different {', '.join(changed)} than the checkpoint; "
                "the result will differ from an uninterrupted run")
        head_res, full_res = finetune(
            net, splits, pre, ft, out_dir=out_dir / "finetune" if out_dir else None, meta=meta,
            resume=resume_ft, say=say)  # fmt: skip
        for res, phase in ((head_res, "head"), (full_res, "full")):
            if res is not None:
                history.extend({**r, "phase": phase} for r in res.history)
        net.eval()
        probs = predict_tensor(net, splits.val.images, pre, views=cfg.views,
                               batch_size=max(cfg.batch_size, 32), precision=cfg.precision)  # fmt: skip
        metrics["finetune"] = _stage_metrics(probs, labels)
        timings["finetune"] = time.perf_counter() - t
        say(f"fine-tune: validation accuracy {metrics['finetune']['val_acc']:.3f} "
            f"[{timings['finetune']:.1f}s]")  # fmt: skip
        final_probs = probs
        kept = "finetune"
        better = "features" in metrics and (
            metrics["features"]["val_loss"] < metrics["finetune"]["val_loss"])
        metrics["kept_by_val"] = "features" if better else "finetune"
        if better and features_net is not None:
            net = features_net
            final_probs = head_probabilities(fit.head, fva) if fit is not None else final_probs
            kept = "features"
            say("kept the features head: its validation loss "
                f"{metrics['features']['val_loss']:.4f} beats the fine-tuned "
                f"{metrics['finetune']['val_loss']:.4f}")  # fmt: skip
        gap = metrics["features"]["val_acc"] - metrics["finetune"]["val_acc"] \
            if "features" in metrics else 0.0
        if kept == "finetune" and gap >= 0.05:  # small validation sets mislead (docs), not this
            say(f"note: the features head scored {gap:.3f} higher on the validation images than "
                "the fine-tuned net kept here; --keep-best (keep_best=True) keeps the one with "
                "the lower validation loss")  # fmt: skip
        metrics["kept"] = kept
    else:
        metrics["kept"] = "features"
    for key in ("val_acc", "val_top5", "val_loss", "val_balanced_acc", "val_macro_f1"):
        metrics[key] = metrics[metrics["kept"]][key]
    metrics["skipped"] = splits.skipped_count  # unreadable files, as `data info --json` counts

    net.eval()
    # What the bundle needs to rebuild the head, read off the head the net now has.
    head = net.get_classifier()
    head_info: dict[str, Any] = (
        {"kind": "mlp", "hidden": head.hidden, "dropout": head.dropout}
        if isinstance(head, MLPHead) else {"kind": "linear"})
    if isinstance(net, StageTaps):
        head_info["stages"] = list(net.stages)
    # Without the class count and channels: the bundle records those itself (num_classes,
    # in_chans), and `build_model` passing them twice made the bundle unloadable.
    # The options the net was built with: given, or recorded by its weights file (a narrow
    # VGG trained with `cnnzoo train`: its bundle did not load without them).
    own = {key: value for key, value in {**built_with, **(model_kwargs or {})}.items()
           if key not in ("num_classes", "in_chans")}  # fmt: skip
    extra = {"weights": {"source": str(weights), "fingerprint": wid}, "mode": cfg.mode,
             "model_kwargs": own, "skipped_files": list(splits.skipped),
             "class_weight": cfg.class_weight}  # fmt: skip
    if split is not None:  # `Bundle.evaluate` finds the validation split again
        extra["data"] = split
    summary = copy.deepcopy(metrics)
    summary.get("features", {}).pop("cv", None)  # the full table is in the report's metrics.json
    bundle = Bundle(net, model, list(splits.class_names), pre, fit_used, cfg.views, head_info,
                    summary, extra, precision=cfg.precision)
    accumulator = accumulate(final_probs, labels, len(splits.class_names))
    if out_dir is not None:
        t = time.perf_counter()
        # The old run's report goes only now: a fine-tuning that fails (a resume on other data,
        # a NaN) leaves it as it was. Its bundle is replaced in one step by the save, so a new
        # one that cannot be written (a full disk) leaves the old one, not neither.
        remove_entries(out_dir, [n for n in RUN_FILES if n not in ("finetune", "bundle")])
        path = bundle.save(out_dir / "bundle")
        cv = fit.cv if fit is not None else None
        notes, table = write_report(
            out_dir, images=splits.val.images, probs=final_probs, labels=labels,
            class_names=list(splits.class_names), history=history, cv=cv,
            metrics={**metrics, "timings_s": timings}, l2=fit.l2 if fit is not None else None,
            paths=splits.val.paths)
        timings["report"] = time.perf_counter() - t
        # Quoted as the shell needs it: "--bundle Meine Läufe/teile/bundle" pasted as printed
        # gave predict the bundle "Meine" and two images.
        say(f"bundle: {path} (predict with `cnnzoo predict IMAGE --bundle "
            f"{shlex.quote(str(path))}`)")
        for line in notes:
            say(line)
    else:  # nothing written, but the table is a result all the same (none was shown)
        table = per_class_table(accumulator, list(splits.class_names))
    for line in table:
        (show or say)(line)
    return TransferResult(bundle, out_dir, metrics, timings, computed, history, final_probs,
                          accumulator)
