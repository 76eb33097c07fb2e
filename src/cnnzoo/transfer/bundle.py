"""The result of transfer learning: a bundle folder that predicts on its own.

    DIR/model.safetensors   the whole network (backbone + new head) in cnnzoo's key names
    DIR/bundle.json         model name, class names, preprocessing, views, head, numeric
                            precision, val metrics

`load_bundle(DIR)` rebuilds the network from the JSON, checks that every tensor of the
.safetensors file fits it (a JSON that does not match its weights is one `WeightsError`), and
returns a `Bundle` whose `.predict(images)` gives class names and probabilities. Prediction
repeats exactly what validation did: the same decoding and resizing (`ImageSpec`, the bundle's
`fit`, for every kind of image, a ready (N, C, H, W) batch included), the same normalisation,
and the mean of the class probabilities over the same views (test-time flip). A bundle.json
that was edited into something `Bundle` cannot use is one `WeightsError` line naming the field.

A bundle is written into a temporary sibling folder and renamed into place, so a reader (or a
crash) never sees half a bundle.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from ..data.images import ImageSpec, convert_image, to_tensor_uint8
from ..errors import ArgumentKindError, ImageError, UsageError, WeightsError
from ..models.base import finite_numbers, is_whole
from ..paths import (
    BUNDLE_JSON,
    from_run,
    remove_stale_temps,
    run_data,
    temp_prefix,
    transfer_bundle,
    usual_permissions,
    utf8_path,
)
from ..text import listed, plural, some
from ..weights import Preprocessing
from ..weights.adapt import fitted_model, warn_non_finite
from ..weights.files import BUNDLE_FORMAT as FORMAT
from ..weights.files import named_as_checkpoint, newer_format, save_safetensors
from ..weights.preprocess import preprocessing_problem
from .features import (
    MAX_VIEWS,
    forward_pre_logits,
    held_for_inference,
    inference_dtype,
    model_input,
)

WEIGHTS_FILE = "model.safetensors"
JSON_FILE = BUNDLE_JSON
# How images are brought to the input size (`input_spec`): the weights' resize + centre crop, or
# the whole image squashed.
FITS = ("crop", "resize")
HEAD_KINDS = ("linear", "mlp")
# Images `Bundle.predict` decodes at a time: 38 MB of uint8 at 224 px, however long the list.
DECODE_CHUNK = 256
PRECISIONS = ("auto", "bf16", "fp32")  # `features.inference_dtype`'s


class Predictions(NamedTuple):
    """`classes[i]` is the predicted class name of image i; `probabilities[i]` its class
    probabilities (K,) in `class_names` order, summing to 1."""

    classes: list[str]
    probabilities: Tensor
    class_names: list[str]

    def __repr__(self) -> str:
        # The named tuple's own printed every class name and the whole (N, K) tensor in
        # exponent notation: a notebook cell ending in bundle.predict(files) ran to thousands of
        # lines for a folder. Each image's answer and probability instead, the first 8.
        n = len(self.classes)
        top = self.probabilities.max(1).values.tolist() if n else []
        answers = [f"{listed(c)} {p:.2f}" for c, p in zip(self.classes[:8], top, strict=False)]
        return (f"Predictions({plural(n, 'image')}" + (": " + ", ".join(answers) if n else "")
                + (", ..." if n > 8 else "") + f"; probabilities {tuple(self.probabilities.shape)}"
                f" over {plural(len(self.class_names), 'class', 'classes')} "
                f"({some(self.class_names, 8)}))")


class Evaluation(NamedTuple):
    """What `Bundle.evaluate` returns: `metrics` {'acc', 'top5', 'loss', 'balanced_acc',
    'macro_f1'} and the engine's
    `ClassificationAccumulator` (`.confusion` (K, K), rows the true class; `.per_class()`).
    A tuple, so `metrics, acc = bundle.evaluate(...)` works too."""

    metrics: dict[str, float]
    accumulator: Any


@dataclass(frozen=True)
class _Decoder(Preprocessing):
    """`Preprocessing.__call__`'s handling of what an image may be (PIL image, uint8 (C, H, W)
    tensor, uint8 (H, W[, C]) array, path), with a bundle's decoding and sizing (`spec`: its
    `fit` may squash instead of crop) and no normalisation: a uint8 (C, H, W) tensor."""

    spec: ImageSpec = ImageSpec()
    # A batch inside the list: Preprocessing's advice, `.batch(images)`, is no Bundle method.
    batch_hint: ClassVar[str] = "pass the batch itself, not in a list (or torch.cat the batches)"

    def load(self, path: str | os.PathLike[str]) -> Tensor:
        return self.spec.load(path)

    def image_to_uint8(self, img: Image.Image) -> Tensor:
        return to_tensor_uint8(self.spec.apply(convert_image(img, self.spec.channels)))

    def normalize(self, x: Tensor) -> Tensor:
        return x  # `predict_tensor` normalises each view itself


def input_spec(pre: Preprocessing, fit: str = "crop") -> ImageSpec:
    """How a bundle's images are decoded and sized: the weights' preprocessing ('crop': shorter
    side to resize_size, centre crop) or the whole image squashed to the crop size ('resize')."""
    return ImageSpec(size=pre.crop_size, channels=1 if pre.channels == 1 else 3, method=fit,
                     resize_size=pre.resize_size, interpolation=pre.interpolation)  # fmt: skip


def predict_tensor(model: nn.Module, images: Tensor, pre: Preprocessing, *, views: int = 2,
                   batch_size: int = 32, precision: str = "auto",
                   progress: bool = False) -> Tensor:  # fmt: skip
    """Class probabilities (N, K) of uint8 images (N, C, H, W): softmax of the logits, averaged
    over `views` (the image and its mirror by default). The model runs in eval mode; its
    train/eval mode is restored afterwards and its parameters stay plain contiguous tensors
    (so Grad-CAM or more fine-tuning still work)."""
    from tqdm.auto import tqdm

    if not is_whole(batch_size):
        raise UsageError(f"batch_size must be a whole number >= 1, not {batch_size!r}")
    dtype = inference_dtype(precision)
    out = []
    starts = range(0, len(images), batch_size)
    with held_for_inference(model, dtype):  # one thread at a time, its mode restored
        for start in tqdm(starts, desc="predict", unit="batch", leave=False,
                          disable=None if progress else True):  # fmt: skip
            chunk = images[start:start + batch_size]
            probs = 0.0
            with torch.inference_mode():
                for v in range(views):
                    x = model_input(chunk, pre, v)
                    feats = forward_pre_logits(model, x, dtype)
                    probs = probs + model.get_classifier()(feats).float().softmax(-1)
            out.append(probs / views)
    if not out:
        return torch.zeros(0, getattr(model, "num_classes", 0))
    return torch.cat(out)


def _images(images: Iterable[Any] | Any) -> Iterable[Any]:
    """What `Bundle.predict` and `load_images` were given, as images to iterate. One image is
    not a sequence to iterate: a path would otherwise be taken apart into its characters (a
    load_images("a.png") read "a" as a file), a (C, H, W) tensor into its channels, an
    (H, W, C) array into its rows."""
    if isinstance(images, np.ndarray) and images.ndim in (3, 4) and images.shape[-1] > 4:
        # No channels last: a batch of grey images (Keras's x_test of Fashion-MNIST is
        # (10000, 28, 28)) or channels first. Each image's own error advised a transpose that
        # made Keras's x_test one 10000-channel image, or a (3, 28, 28) stack one RGB image.
        shape = images.shape
        if images.ndim == 3:
            hint = f"for {shape[0]} grey images pass x[..., None], (N, H, W, 1)"
            if shape[0] in (1, 3, 4):
                hint += "; for one (C, H, W) image, x.transpose(1, 2, 0)"
        else:
            hint = "for a (N, C, H, W) batch pass x.transpose(0, 2, 3, 1), or torch.from_numpy(x)"
        raise ImageError(f"expected an image array (H, W) or (H, W, C), or a batch "
                         f"(N, H, W, C), not {shape}: {hint}")  # fmt: skip
    if isinstance(images, np.ndarray) and images.ndim == 4:  # (N, H, W, C): its images
        return list(images)
    if isinstance(images, Tensor):
        if images.dim() == 2:  # (H, W): one grey image
            return [images[None]]
        if images.dim() == 3:
            return [images]
        if images.dim() != 4:  # a 1-D one was taken apart into numbers, of shape ()
            raise ImageError(f"expected an image (C, H, W) or a batch (N, C, H, W), not "
                             f"{tuple(images.shape)}")  # fmt: skip
        if images.shape[1] not in (1, 3, 4):
            hint = ": use images.permute(0, 3, 1, 2)" if images.shape[-1] in (1, 3, 4) else ""
            raise ImageError(f"expected a batch (N, C, H, W), not {tuple(images.shape)}{hint}")
        return images
    if isinstance(images, str | bytes | os.PathLike | Image.Image | np.ndarray) or not isinstance(
            images, Iterable):  # fmt: skip
        return [images]  # (not an image at all: the decoder's error says what may be)
    return images


@dataclass
class Bundle:
    """A trained transfer-learning model with everything needed to use it."""

    model: nn.Module
    model_name: str
    class_names: list[str]
    preprocessing: Preprocessing
    fit: str = "crop"
    views: int = 2
    head: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    extra: dict[str, Any] | None = None
    path: Path | None = None
    # The run's --precision ('auto', 'bf16', 'fp32'): prediction uses it, so the bundle repeats
    # the validation metrics it records (a fp32 run predicted in bf16 where the CPU has it:
    # validation loss 0.281 against the 0.312 in bundle.json).
    precision: str = "auto"

    def __repr__(self) -> str:  # not the whole network and every setting: a notebook line
        names = some(self.class_names, 8)
        acc = (self.metrics or {}).get("val_acc")
        return (f"Bundle({self.model_name}, {plural(len(self.class_names), 'class', 'classes')} "
                f"({names}), {self.preprocessing.crop_size} px"
                + (f", val_acc {acc:.3f}" if isinstance(acc, float) else "")
                + (f", {self.path}" if self.path else "") + ")")

    @property
    def spec(self) -> ImageSpec:
        return input_spec(self.preprocessing, self.fit)

    def load_images(self, images: Iterable[Any] | Any) -> Tensor:
        """Paths, PIL images, uint8 (C, H, W) tensors or uint8 (H, W[, C]) arrays (a list, a
        batch, or one of them, as `predict` takes them) -> one uint8 batch (N, C, H, W) at the
        bundle's size. An unreadable file raises a one-line `ImageError` naming it, and so does
        an image of another type or layout (`NotAnImageError`, also a `TypeError`, for an object
        that is no image at all)."""
        decode = _Decoder(self.preprocessing.crop_size, spec=self.spec)
        out = [decode(item) for item in _images(images)]
        if not out:
            return torch.zeros(0, self.spec.channels, self.preprocessing.crop_size,
                               self.preprocessing.crop_size, dtype=torch.uint8)  # fmt: skip
        return torch.stack(out)

    def predict(self, images: Iterable[Any] | Any, *, batch_size: int = 32,
                precision: str | None = None) -> Predictions:  # fmt: skip
        """Class names and probabilities for images: a list of image files, PIL images,
        (C, H, W) tensors or (H, W[, C]) arrays (uint8, uint16, bool, or float in [0, 1]); one
        (N, C, H, W) batch at any size; or a single image of any of these kinds (then one
        row). Every image, those of a batch included, is decoded and sized as a file would be
        (`load_images`): the same picture gets one answer whatever its form. An empty list
        gives empty predictions. Any iterable (a generator too) is decoded a few hundred images
        at a time, so a long list does not sit decoded in memory. precision: None (the run's
        own, `self.precision`, which its recorded metrics were measured in), 'auto' (bf16 on a
        CPU with native bf16, else fp32), 'bf16' or 'fp32'."""
        images = _images(images)
        # A 'crop' bundle's batch, squashed straight to the input size, lost the centre crop its
        # files get, and the same picture got another answer: sized as a file would be. A
        # chunk at a time: all 5,000 files of a folder decoded at once took 1.7 GB at 224 px.
        items = iter(images)
        parts = []
        while chunk := list(itertools.islice(items, DECODE_CHUNK)):
            parts.append(self.predict_loaded(self.load_images(chunk), batch_size=batch_size,
                                             precision=precision))  # fmt: skip
        if not parts:
            return self._predict(self.load_images([]), batch_size, precision)
        return Predictions([c for p in parts for c in p.classes],
                           torch.cat([p.probabilities for p in parts]),
                           list(self.class_names))  # fmt: skip

    def predict_loaded(self, batch: Tensor, *, batch_size: int = 32,
                       precision: str | None = None) -> Predictions:  # fmt: skip
        """`predict` for images already decoded and sized by `load_images`: a uint8 batch
        (N, C, crop_size, crop_size). (`predict` would size them once more: a 'crop' bundle
        would crop their centre again.)"""
        size = self.preprocessing.crop_size
        if batch.dtype != torch.uint8 or tuple(batch.shape[1:]) != (self.spec.channels, size, size):
            raise ImageError(f"expected a uint8 batch (N, {self.spec.channels}, {size}, {size}) "
                             f"from load_images, not {batch.dtype} {tuple(batch.shape)}: "
                             "pass other images to predict")  # fmt: skip
        return self._predict(batch, batch_size, precision)

    def _predict(self, batch: Tensor, batch_size: int, precision: str | None) -> Predictions:
        if len(batch) == 0:
            return Predictions([], torch.zeros(0, len(self.class_names)), list(self.class_names))
        probs = predict_tensor(self.model, batch, self.preprocessing, views=self.views,
                               batch_size=batch_size,
                               precision=precision or self.precision)  # fmt: skip
        classes = [self.class_names[i] for i in probs.argmax(1).tolist()]
        return Predictions(classes, probs, list(self.class_names))

    def evaluate(
        self, source: str | os.PathLike[str] | None = None, *, split: str | None = None,
        batch_size: int = 32, progress: bool = True,
        count_skipped: Callable[[int], None] | None = None,
    ) -> Evaluation:
        """Accuracy, top-5, loss, balanced accuracy, macro F1 and the confusion matrix on
        labelled images, predicted exactly
        as `predict` does; returns an `Evaluation` (metrics, accumulator).

        source: an image folder, CSV manifest or built-in name (default: the data the bundle
        was trained on, when `cnnzoo transfer` read it from a folder, CSV or built-in). split:
        as in `engine.run.evaluation_images`; by default the run's validation split on its own
        data, every image of another folder. count_skipped: given, told how many unreadable
        files the load left out (`engine.run.evaluation_images`).
        """
        from ..engine.run import evaluation_images
        from ..engine.task import ClassificationAccumulator
        from ..errors import DataError

        data = (self.extra or {}).get("data") or {}
        trained_on = self.trained_on_data(source)
        src = str(source or trained_on)
        if not src:
            raise DataError("this bundle was trained on images passed in memory: say which "
                            "labelled images to evaluate on (--data DIR|CSV)")  # fmt: skip
        ds = evaluation_images(src, self.spec, split, list(self.class_names),
                               trained_on=trained_on, val_fraction=data.get("val_fraction", 0.2),
                               seed=data.get("seed", 0),
                               val_files=data.get("val_files"), progress=progress,
                               count_skipped=count_skipped,
                               hold_out_test=bool(data.get("hold_out_test")))  # fmt: skip
        if ds.channels != self.preprocessing.channels:
            ds = ds.with_channels(self.preprocessing.channels)
        probs = predict_tensor(self.model, ds.images, self.preprocessing, views=self.views,
                               batch_size=batch_size, precision=self.precision,
                               progress=progress)  # fmt: skip
        log_probs = probs.clamp_min(1e-12).log()
        acc = ClassificationAccumulator(len(self.class_names))
        acc.update(log_probs, ds.labels, torch.nn.functional.nll_loss(log_probs, ds.labels))
        return Evaluation(acc.summary(), acc)

    def trained_on_data(self, given: object = None) -> str:
        """The data the bundle was trained on, where it is now (`paths.run_data`); `given`
        when it is that data; '' for images passed in memory."""
        data = (self.extra or {}).get("data") or {}
        return run_data(data.get("source"), data.get("source_from_bundle"),
                        self.path or Path(), given)

    def to_json(self) -> dict[str, Any]:
        from .. import __version__

        return {
            "format": FORMAT, "cnnzoo_version": __version__, "model": self.model_name,
            "class_names": list(self.class_names),
            "num_classes": len(self.class_names), "in_chans": self.preprocessing.channels,
            "preprocessing": self.preprocessing.to_dict(), "fit": self.fit, "views": self.views,
            "head": self.head or {"kind": "linear"}, "precision": self.precision,
            "metrics": self.metrics or {},
            **{k: v for k, v in (self.extra or {}).items() if k != "cnnzoo_version"},
        }  # fmt: skip

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the bundle folder atomically (temp folder + rename); returns its path."""
        target = Path(directory)
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(target)  # a killed save's folders, the model's weights in each
        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(target), suffix=".tmp", dir=target.parent))
        try:
            usual_permissions(tmp)  # mkdtemp's folder is private; the bundle is not
            meta = {"format": FORMAT, "model": self.model_name}
            # A full disk names the bundle, not the hidden folder it is written into first.
            save_safetensors(self.model.state_dict(), tmp / WEIGHTS_FILE, meta, shown_as=target)
            description = self.to_json()
            if isinstance(data := description.get("data"), dict):  # see paths.run_data
                data = {k: v for k, v in data.items() if k != "source_from_bundle"}
                rel = from_run(self.trained_on_data(), target)
                description["data"] = {**data, "source_from_bundle": rel} if rel else data
            try:
                (tmp / JSON_FILE).write_text(json.dumps(description, indent=2) + "\n")
            except OSError as exc:
                raise WeightsError(f"{target}: cannot write ({exc.strerror or exc}); choose "
                                   "another output path") from None
            old = None
            if target.exists():
                old = target.with_name(f"{temp_prefix(target)}old.tmp")  # remove_stale_temps finds it
                os.replace(target, old)
            os.replace(tmp, target)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        self.path = target
        return target


def build_model(name: str, num_classes: int, in_chans: int, head: dict[str, Any] | None,
                model_kwargs: dict[str, Any] | None = None) -> nn.Module:  # fmt: skip
    """The bundle's network with random weights: the zoo model and the head the JSON names
    (on the pooled feature stages `head['stages']` when given, see `models.taps`)."""
    from ..models import create_model
    from ..models.taps import StageTaps
    from .heads import MLPHead, install_head

    # The bundle's own class count and channels win: bundles written before `transfer` kept
    # them out of model_kwargs hold in_chans there too, and create_model got it twice.
    kwargs = {**(model_kwargs or {}), "num_classes": num_classes, "in_chans": in_chans}
    model = create_model(name, **kwargs)
    head = head or {"kind": "linear"}
    if head.get("stages"):
        try:
            model = StageTaps(model, head["stages"], num_classes)
        except ValueError as exc:
            raise WeightsError(f"the bundle's head: {exc}") from None
    if head.get("kind") == "mlp":
        install_head(model, MLPHead(model.num_features, num_classes, int(head["hidden"]),
                                    float(head.get("dropout", 0.0))))  # fmt: skip
    return model


def check_bundle_json(meta: Any, path: Path) -> None:
    """A bundle.json that `Bundle` can use, or one `WeightsError` line naming the file and the
    first field that is wrong. A hand-edited or damaged description otherwise crashed with a
    traceback deep in decoding, or loaded and predicted nan (std 0) or wrong names (duplicate
    class names, or a string taken apart into letters)."""

    def bad(problem: str) -> WeightsError:
        return WeightsError(f"{path}: {problem} (fix that field, or run cnnzoo transfer again)")

    if not isinstance(meta, dict):
        raise WeightsError(f"{path} must hold a JSON object, not a {type(meta).__name__}: write "
                           "the bundle again with cnnzoo transfer")  # fmt: skip
    if meta.get("format") != FORMAT:
        newer_format(path, meta.get("format"), FORMAT, meta.get("cnnzoo_version"))
        raise WeightsError(f"{path}: format {meta.get('format')!r} is not a bundle this cnnzoo "
                           f"reads ({FORMAT}): write the bundle again with cnnzoo transfer")
    if not isinstance(meta.get("model"), str):
        raise bad(f"model must be a zoo model name, not {meta.get('model')!r}")
    names = meta.get("class_names")
    if not (isinstance(names, list) and len(names) >= 2
            and all(isinstance(c, str) and c for c in names)):  # fmt: skip
        raise bad("class_names must be a list of 2 or more class names")
    # Counted once: comparing each name with all before it took minutes for 100,000 names.
    twice = next((c for c, n in Counter(names).items() if n > 1), None)
    if twice is not None:
        raise bad(f"class_names lists {twice!r} twice")
    pre = meta.get("preprocessing")
    if (problem := preprocessing_problem(pre)) is not None:
        raise bad(problem)
    channels = pre.get("channels", len(pre["mean"]))
    if meta.get("fit", "crop") not in FITS:
        raise bad(f"fit must be {' or '.join(map(repr, FITS))}, not {meta.get('fit')!r}")
    if meta.get("precision", "auto") not in PRECISIONS:
        raise bad(f"precision must be {', '.join(PRECISIONS)}, not {meta.get('precision')!r}")
    if not (is_whole(meta.get("views", 1)) and meta.get("views", 1) <= MAX_VIEWS):
        raise bad(f"views must be a whole number from 1 to {MAX_VIEWS}, not {meta.get('views')!r}")
    head = meta.get("head")
    if head is not None:
        if not isinstance(head, dict) or head.get("kind") not in HEAD_KINDS:
            raise bad(f"head must be an object whose kind is {' or '.join(HEAD_KINDS)}, not "
                      f"{head!r}")  # fmt: skip
        if head["kind"] == "mlp" and not is_whole(head.get("hidden")):
            raise bad(f"head.hidden (an mlp head's width) must be a whole number >= 1, not "
                      f"{head.get('hidden')!r}")  # fmt: skip
        if not (finite_numbers([head.get("dropout", 0.0)], 1) and 0 <= head.get("dropout", 0.0) < 1):
            raise bad(f"head.dropout must be a number in [0, 1), not {head.get('dropout')!r}")
    for key in ("model_kwargs", "metrics", "data"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise bad(f"{key} must be an object, not {meta[key]!r}")
    # Redundant with class_names and the preprocessing, which build the net: a JSON edited in
    # one place and not the other would otherwise load and predict without a word.
    for key, want, what in (("num_classes", len(names), "class_names lists {} classes"),
                            ("in_chans", channels, "preprocessing has {} channels")):  # fmt: skip
        if key in meta and meta[key] != want:
            raise WeightsError(f"{path} does not match itself: {key} is {meta[key]!r} but its "
                               f"{what.format(want)}; fix the one that was edited")  # fmt: skip


def load_bundle(directory: str | os.PathLike[str]) -> Bundle:
    """The `Bundle` in `directory`, the bundle/ folder `cnnzoo transfer` or `transfer(...,
    out=OUT)` wrote (OUT/bundle): `.predict(images)` gives class names and probabilities,
    `.evaluate(data)` the metrics and confusion matrix, `.model` the network. Its files and
    checks: `help(cnnzoo.transfer.bundle)`. A folder that holds no bundle (a run's folder, a
    checkpoint, a file of the bundle) is one `WeightsError` line that says what to give."""
    if not isinstance(directory, str | os.PathLike):  # Path(None)'s TypeError named no folder
        raise ArgumentKindError(f"expected the bundle's folder (a str or Path), not "
                                f"{type(directory).__name__}")  # fmt: skip
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ..engine.distributed import library_threads

    library_threads()  # a Python caller's predictions, within a container's CPU quota
    d = Path(directory)
    if not (d / JSON_FILE).is_file() or not (d / WEIGHTS_FILE).is_file():
        if not d.exists():
            raise WeightsError(f"{d} does not exist: give the bundle/ folder `cnnzoo transfer` "
                               "wrote")  # fmt: skip
        if d.name in (JSON_FILE, WEIGHTS_FILE) and (d.parent / JSON_FILE).is_file():
            raise WeightsError(f"{d} is a file of the bundle: give its folder, {d.parent}")
        if (d / "bundle" / JSON_FILE).is_file():  # the run's folder, given for its bundle
            raise WeightsError(f"{d} is the folder of a transfer run: its bundle is "
                               f"{d / 'bundle'}")  # fmt: skip
        checkpoint = next((f for f in (d / "best.pt", d / "last.pt") if f.is_file()), None)
        if checkpoint is None and named_as_checkpoint(d):
            checkpoint = d
        if checkpoint is not None and checkpoint.parent.parent.name == "finetune":
            bundle = transfer_bundle(checkpoint)  # OUT/finetune/full: a transfer run's own
            where = (f"its bundle is {bundle}" if (bundle / JSON_FILE).is_file() else
                     f"its run wrote no bundle yet (`cnnzoo transfer --resume --out "
                     f"{bundle.parent}` finishes it)")
            what = "a checkpoint" if checkpoint == d else "the checkpoints' folder"
            raise WeightsError(f"{d} is {what} of a transfer run's fine-tuning, not a bundle: "
                               f"{where}")  # fmt: skip
        if checkpoint is not None:  # a `cnnzoo train` run (or a checkpoint): not a bundle
            what = "a checkpoint" if checkpoint == d else "the folder of a `cnnzoo train` run"
            raise WeightsError(f"{d} is {what}, not a bundle: give {checkpoint} as `predict "
                               f"--weights {checkpoint}` or `evaluate {checkpoint}`")
        raise WeightsError(f"{d} is not a bundle: it needs {JSON_FILE} and {WEIGHTS_FILE} "
                           "(the bundle/ folder `cnnzoo transfer` writes)")  # fmt: skip
    try:
        meta = json.loads((d / JSON_FILE).read_text())
    except (ValueError, RecursionError) as exc:  # not JSON, not text, or nested 100,000 deep
        raise WeightsError(f"{d / JSON_FILE} is not a valid bundle description "
                           f"({type(exc).__name__}: {exc})") from None  # fmt: skip
    check_bundle_json(meta, d / JSON_FILE)
    names = list(meta["class_names"])
    pre = Preprocessing.from_dict(meta["preprocessing"])
    try:
        with utf8_path(d / WEIGHTS_FILE) as name:
            state = load_file(name)
    except (SafetensorError, OSError) as exc:
        raise WeightsError(f"{d / WEIGHTS_FILE} cannot be read ({' '.join(str(exc).split())})") from None
    # Checked on the meta device before it is built: an edited head.hidden or width_mult of
    # 10^9 asked for terabytes (a traceback, or the machine's memory) before the mismatch.
    model = fitted_model(lambda: build_model(meta["model"], len(names), pre.channels,
                                             meta.get("head"), meta.get("model_kwargs")),
                         state, d / WEIGHTS_FILE,
                         says=f"{d / JSON_FILE} does not match {d / WEIGHTS_FILE} "
                              f"({meta['model']} with {len(names)} classes)")  # fmt: skip
    warn_non_finite(state, d / WEIGHTS_FILE)
    model.eval()
    known = {"format", "model", "class_names", "num_classes", "in_chans", "preprocessing", "fit",
             "views", "head", "metrics", "precision"}  # fmt: skip
    # Bundles written before the precision was recorded predict as 'auto' did for them.
    return Bundle(model, meta["model"], names, pre, meta.get("fit", "crop"), meta.get("views", 1),
                  meta.get("head"), meta.get("metrics"),
                  {k: v for k, v in meta.items() if k not in known}, d,
                  precision=meta.get("precision", "auto"))  # fmt: skip
