"""The frozen backbone as a feature extractor, and the on-disk cache that makes a second run fast.

`extract_features` runs a pretrained model once over uint8 images in eval mode under
`torch.inference_mode` -- no gradient, no BatchNorm update, nothing in the model changes -- and
returns its pre-logits vector (timm's `forward_head(..., pre_logits=True)`, Keras's
`include_top=False, pooling='avg'`) for each image and each *view* of it. Views are fixed,
deterministic variants of an image (the image, its mirror, a 87.5 % centre zoom and that zoom's
mirror): the head trains on all of them as extra samples and prediction averages over them
(test-time augmentation). Fixed rather than random, so a cached feature never depends on which
batch an image was in.

`FeatureCache` keeps the features on disk, keyed by what determines them: the model name, a
fingerprint of the weights file, the feature stages pooled (`models.taps`; none for the
pre-logits vector), the preprocessing, the views and the numeric precision (one
cache file per such key), and inside that file one row per image, keyed by a hash of the decoded
pixels. A second run with another head or other hyper-parameters computes nothing; a changed or
added image is recomputed alone.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UsageError, WeightsError
from ..paths import cache_root, utf8_path
from ..weights import Preprocessing
from ..weights.files import save_safetensors

log = logging.getLogger("cnnzoo.transfer")

MAX_VIEWS = 4
VIEW_NAMES = ("image", "mirror", "zoom", "zoom+mirror")
ZOOM = 0.875  # the centre crop ImageNet evaluation takes (224 of 256)


def view(x: Tensor, index: int) -> Tensor:
    """View `index` (see VIEW_NAMES) of a float batch (N, C, H, W); deterministic."""
    if index < 0 or index >= MAX_VIEWS:
        raise ValueError(f"view index must lie in [0, {MAX_VIEWS}), not {index}")
    if index >= 2:
        h, w = x.shape[-2:]
        ch, cw = round(h * ZOOM), round(w * ZOOM)
        top, left = (h - ch) // 2, (w - cw) // 2
        x = F.interpolate(x[..., top:top + ch, left:left + cw], size=(h, w), mode="bilinear",
                          antialias=True, align_corners=False)  # fmt: skip
    return x.flip(-1) if index % 2 == 1 else x


def inference_dtype(precision: str = "auto") -> str:
    """'bf16' or 'fp32' for forward passes: 'auto' takes bf16 only on CPUs with native bf16
    (AVX-512 bf16 / AMX), where it runs conv nets about twice as fast; emulated bf16 is slower."""
    if precision in ("bf16", "fp32"):
        return precision
    if precision != "auto":
        raise UsageError(f"precision must be auto, bf16 or fp32, not {precision!r}")
    from ..engine.precision import cpu_features

    return "bf16" if cpu_features()["native_bf16"] else "fp32"


def model_input(images: Tensor, pre: Preprocessing, view_index: int = 0) -> Tensor:
    """uint8 (N, C, H, W) -> the normalised input at the weights' crop size, view `view_index`.

    Images decoded for the run (`bundle.input_spec`: files, `Bundle.load_images`) are at that
    size already and pass as they are. Others (built-in sets and in-memory images, kept at their
    own size so that Fashion-MNIST does not take 9 GB at 224 px) are squashed whole -- fit
    'resize', which `transfer` records for them. A 'crop' bundle's pictures must go through
    `Bundle.load_images` first, or they lose the centre crop their files get."""
    x = images.float().div_(255)
    size = pre.crop_size
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)  # fmt: skip
    return pre.normalize(view(x, view_index))


# The model is put in eval mode and, for bf16, its weights turned channels-last, then both are
# restored; the switch reassigns every parameter's data. A second thread running the same model
# meanwhile (two requests to one bundle) read weights mid-switch and got wrong classes at
# probability 1. One lock for every model, not one each: on a CPU a single forward pass already
# keeps all the cores busy.
_INFERENCE_LOCK = threading.RLock()


@contextmanager
def held_for_inference(model: nn.Module, dtype: str) -> Iterator[None]:
    """Hold the model for forward passes in `dtype` ('bf16' or 'fp32'): in eval mode (dropout
    off, BatchNorm on its running statistics), its weights channels-last for bf16 (the input is
    converted too). Afterwards every module's train/eval mode is restored (not the whole model's
    at once: fine-tuning keeps BatchNorm in eval inside a training model, and `model.train()`
    made those layers update their statistics again) and its weights are plain contiguous
    tensors again, made outside any inference mode so that they stay trainable (Grad-CAM, more
    fine-tuning). Calls from several threads run one at a time."""
    with _INFERENCE_LOCK:
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        bf16 = dtype == "bf16"
        try:
            if bf16:  # outside inference mode, the caller's too: see the docstring
                with torch.inference_mode(False):
                    model.to(memory_format=torch.channels_last)
            yield
        finally:
            model.train(modes[0][1])  # through train(), for a model that overrides it
            for m, training in modes:  # then the sub-modules in another mode than the model
                m.training = training
            if bf16:
                with torch.inference_mode(False):
                    model.to(memory_format=torch.contiguous_format)


@torch.inference_mode()
def run_model(forward: Callable[[Tensor], Tensor], x: Tensor, dtype: str = "fp32") -> Tensor:
    """`forward(x)` in float32, computed in `dtype`: 'bf16' autocast on a channels-last input
    (bf16 in NCHW loses most of its gain), inside `held_for_inference`; or 'fp32'."""
    x = x.contiguous(memory_format=torch.channels_last) if dtype == "bf16" else x
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
        return forward(x).float()


def forward_pre_logits(model: nn.Module, x: Tensor, dtype: str = "fp32") -> Tensor:
    """The model's pooled pre-logits vector (N, D) in float32; the model must be in eval mode."""
    return run_model(lambda t: model.forward_head(model.forward_features(t), pre_logits=True),
                     x, dtype)  # fmt: skip


def extract_features(
    model: nn.Module,
    images: Tensor,
    pre: Preprocessing,
    *,
    views: int = 2,
    batch_size: int = 32,
    precision: str = "auto",
    progress: bool = True,
    desc: str = "features",
) -> Tensor:
    """Pre-logits features (N, views, D) of uint8 `images` (N, C, H, W) through frozen `model`.

    The model is put in eval mode (dropout off, BatchNorm uses its running statistics) and run
    under inference mode: its parameters and buffers are not changed. Its train/eval mode is
    restored afterwards.
    """
    out = list(feature_batches(model, images, pre, views=views, batch_size=batch_size,
                               precision=precision, progress=progress, desc=desc))  # fmt: skip
    if not out:
        return torch.zeros(0, views, 0)
    return torch.cat(out)


def feature_batches(
    model: nn.Module, images: Tensor, pre: Preprocessing, *, views: int, batch_size: int,
    precision: str, progress: bool, desc: str,
) -> Iterator[Tensor]:
    """`extract_features` a batch at a time: (n, views, D) for each `batch_size` images, in
    order, so that a caller keeps what was computed before an interruption."""
    from tqdm.auto import tqdm

    if not 1 <= views <= MAX_VIEWS:
        raise UsageError(f"views must lie in [1, {MAX_VIEWS}], not {views}")
    dtype = inference_dtype(precision)
    with held_for_inference(model, dtype), tqdm(
            total=len(images) * views, desc=desc, unit="img", leave=False,
            disable=None if progress else True) as bar:  # fmt: skip
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            per_view = []
            for v in range(views):
                per_view.append(forward_pre_logits(model, model_input(chunk, pre, v), dtype))
                bar.update(len(chunk))
            yield torch.stack(per_view, dim=1)


# --------------------------------------------------------------------------------- the cache


def image_hashes(images: Tensor) -> list[str]:
    """A content hash per uint8 image (N, C, H, W): shape and pixels, 128-bit BLAKE2b."""
    out = []
    for img in images:
        h = hashlib.blake2b(digest_size=16)
        h.update(str(tuple(img.shape)).encode())
        h.update(img.contiguous().numpy().tobytes())
        out.append(h.hexdigest())
    return out


def feature_cache_dir() -> Path:
    """Default cache: $CNNZOO_CACHE/features, else ~/.cache/cnnzoo/features (XDG respected)."""
    return cache_root() / "features"


_UNWRITABLE: set[Path] = set()  # cache files a write failed on, warned of once


class FeatureCache:
    """Features of images under one key (model, weights, preprocessing, views, precision).

    Stored as one .safetensors file per key: a float32 (M, views, D) tensor and, in its metadata,
    the M image hashes in row order. Writes are atomic (temp file + rename).
    """

    def __init__(self, root: str | os.PathLike[str], key: dict[str, Any]) -> None:
        self.root = Path(root)
        self.key = key
        text = json.dumps(key, sort_keys=True)
        self.path = self.root / f"{hashlib.sha256(text.encode()).hexdigest()[:20]}.safetensors"
        self._rows: dict[str, Tensor] | None = None

    def _load(self) -> dict[str, Tensor]:
        if self._rows is None:
            self._rows = {}
            if self.path.is_file():
                try:
                    from safetensors import safe_open

                    with utf8_path(self.path) as name, safe_open(name, framework="pt") as f:
                        hashes = json.loads((f.metadata() or {}).get("hashes", "[]"))
                        feats = f.get_tensor("features")
                    if len(hashes) == len(feats):
                        self._rows = dict(zip(hashes, feats, strict=True))
                except Exception:  # noqa: BLE001 - a damaged cache file is only recomputed
                    self._rows = {}
        return self._rows

    def get(self, hashes: Sequence[str]) -> dict[int, Tensor]:
        """{position in `hashes`: cached features (views, D)} for the images found."""
        rows = self._load()
        return {i: rows[h] for i, h in enumerate(hashes) if h in rows}

    def put(self, hashes: Sequence[str], features: Tensor) -> None:
        """Add features to the file. One that cannot be written (a full disk, a read-only
        folder) is a warning, not the end of the run: the features are at hand, and a cache
        that cannot be read is recomputed alike (it stopped the run, saying 'choose another
        output path' of a cache file)."""
        rows = self._load()
        rows.update(zip(hashes, features, strict=True))
        keys = list(rows)
        meta = {"hashes": json.dumps(keys), "key": json.dumps(self.key, sort_keys=True)}
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            save_safetensors({"features": torch.stack([rows[k] for k in keys])}, self.path, meta)
        except (OSError, WeightsError) as exc:
            if self.path in _UNWRITABLE:  # said once (the training and the validation images)
                return
            _UNWRITABLE.add(self.path)
            cause = exc.__context__ if isinstance(exc, WeightsError) else exc  # the OS's reason
            why = getattr(cause, "strerror", None) or " ".join(str(cause).split())
            log.warning("warning: cannot write the feature cache %s (%s): the run goes on "
                        "without it, and the features are computed again next time; free some "
                        "space, or give another --cache DIR or --no-cache", self.path, why)


def cached_features(
    model: nn.Module,
    images: Tensor,
    pre: Preprocessing,
    *,
    model_name: str,
    weights_id: str,
    stages: Sequence[int] | None = None,
    views: int = 2,
    batch_size: int = 32,
    precision: str = "auto",
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    progress: bool = True,
    desc: str = "features",
) -> tuple[Tensor, int]:
    """`extract_features` through the cache: (features (N, views, D), number computed now).
    `stages`: the feature stages `model` (a `StageTaps`) pools, part of the cache key."""
    if not use_cache:
        feats = extract_features(model, images, pre, views=views, batch_size=batch_size,
                                 precision=precision, progress=progress, desc=desc)  # fmt: skip
        return feats, len(images)
    key = {"model": model_name, "weights": weights_id, "preprocessing": pre.to_dict(),
           "views": views, "dtype": inference_dtype(precision),
           "in_chans": int(images.shape[1])}  # fmt: skip
    if stages:  # absent for the pre-logits features, so their earlier cache files stay valid
        key["stages"] = list(stages)
    store = FeatureCache(cache_dir or feature_cache_dir(), key)
    hashes = image_hashes(images)
    found = store.get(hashes)
    todo = [i for i in range(len(images)) if i not in found]
    if todo:
        done: list[Tensor] = []
        try:
            for feats in feature_batches(model, images[todo], pre, views=views,
                                         batch_size=batch_size, precision=precision,
                                         progress=progress, desc=desc):  # fmt: skip
                done.append(feats)
        finally:
            # Also when interrupted (Ctrl-C, SIGTERM): the batches computed are kept, and the
            # rerun of a large folder goes on from there (it started again from the first).
            if done:
                new = torch.cat(done)
                store.put([hashes[i] for i in todo[:len(new)]], new)
                found.update(zip(todo, new, strict=False))
                if len(new) < len(todo) and store.path not in _UNWRITABLE:
                    # Said: 'interrupted' alone read as every feature lost.
                    # (No 'of N': a run extracts its training and validation images apart.)
                    log.warning("note: the features of %d images are kept in the cache (%s): "
                                "the same command computes only the rest", len(found),
                                store.root)  # fmt: skip
    return torch.stack([found[i] for i in range(len(images))]), len(todo)
