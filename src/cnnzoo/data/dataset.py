"""The in-memory labelled image set every task uses, and the train/validation/test bundle.

cnnzoo's users have a few hundred to a few tens of thousands of images, so a data set is decoded
once into one uint8 tensor (N, C, H, W): 60,000 Fashion-MNIST images take 47 MB, 500 photos at
224 px take 75 MB. Batches are cut from it by `BatchLoader` and augmented as tensors.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import DataError, UsageError

# ITU-R BT.601 luma weights, as PIL's convert("L") uses: RGB -> grey gives the same values
# whether an image was converted while decoding or after loading.
_LUMA = (0.299, 0.587, 0.114)
# Work on a data set's images in float copies of about this size (resizing, statistics).
CHUNK_BYTES = 64 * 2**20


def names_digest(names: Iterable[str]) -> str:
    """A short digest of a set of file names (their order does not matter). Hashed as the file
    system stores them: a name that is not UTF-8 (a file named in Latin-1 on an old machine, its
    'é' the one byte 0xe9) is read with surrogate escapes, which str.encode() refused with a
    traceback."""
    return hashlib.sha256(b"\n".join(os.fsencode(n) for n in sorted(names))).hexdigest()[:16]


@dataclass
class ImageDataset:
    """Labelled images in memory.

    images: uint8 (N, C, H, W), C = 1 (grey) or 3 (RGB); labels: int64 (N,) indices into
    `class_names`; paths: where each image came from (file paths, or ids such as
    'fashion-mnist/train/17' for built-in sets), empty when unknown.
    """

    images: Tensor
    labels: Tensor
    class_names: list[str]
    paths: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise DataError(
                f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}"
            )
        self.labels = torch.as_tensor(self.labels, dtype=torch.int64)
        if self.labels.shape != (len(self.images),):
            raise DataError(
                f"{len(self.images)} images but labels of shape {tuple(self.labels.shape)}"
            )
        self.class_names = list(self.class_names)
        if len(self.labels) and (
            int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.class_names)
        ):
            raise DataError(f"labels must lie in [0, {len(self.class_names)}): one index per "
                            f"class name, not {int(self.labels.min())}..{int(self.labels.max())}")
        self.paths = list(self.paths)
        if self.paths and len(self.paths) != len(self.images):
            raise DataError(f"{len(self.images)} images but {len(self.paths)} paths")

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        n, c, h, w = self.images.shape
        return f"ImageDataset({n} images {c}x{h}x{w}, {self.num_classes} classes)"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width)."""
        return (self.images.shape[2], self.images.shape[3])

    def files_digest(self, source: str | os.PathLike[str]) -> str | None:
        """A short digest of which files these images are, named relative to `source` (an image
        folder, or a CSV manifest's folder); None when they were not read from files. A run
        records its validation split's, so that scoring "the validation split" later can tell
        whether the folder still splits the same way (`engine.run.evaluation_images`)."""
        if not self.paths:
            return None
        base = os.path.abspath(source if os.path.isdir(source) else os.path.dirname(source))
        return names_digest(os.path.relpath(os.path.abspath(p), base) for p in self.paths)

    def class_counts(self) -> list[int]:
        """Number of images per class, in `class_names` order."""
        return torch.bincount(self.labels, minlength=self.num_classes).tolist()

    def select(self, indices: Sequence[int] | Tensor) -> ImageDataset:
        """The images at `indices`, same classes."""
        idx = torch.as_tensor(indices, dtype=torch.int64)
        paths = [self.paths[i] for i in idx.tolist()] if self.paths else []
        return ImageDataset(self.images[idx], self.labels[idx], self.class_names, paths)

    def split(self, val_fraction: float = 0.2, seed: int = 0) -> tuple[ImageDataset, ImageDataset]:
        """A stratified (train, val) split: every class keeps its proportion in both parts.

        Each class with n images sends round(n * val_fraction) to validation, at least one when
        it has two or more and at most n - 1, so no class is missing from training and (with two
        or more images) none from validation. The same seed gives the same split.
        """
        if not 0.0 < val_fraction < 1.0:
            raise UsageError(f"val_fraction must lie strictly between 0 and 1, not {val_fraction}")
        g = torch.Generator().manual_seed(seed)
        train_idx: list[Tensor] = []
        val_idx: list[Tensor] = []
        for c in range(self.num_classes):
            members = torch.nonzero(self.labels == c).flatten()
            members = members[torch.randperm(len(members), generator=g)]
            n = len(members)
            n_val = min(max(round(n * val_fraction), 1 if n >= 2 else 0), max(n - 1, 0))
            val_idx.append(members[:n_val])
            train_idx.append(members[n_val:])
        # Keep the original order inside each part: reproducible and easy to read.
        tr = torch.cat(train_idx).sort().values
        va = torch.cat(val_idx).sort().values
        return self.select(tr), self.select(va)

    def subset(
        self,
        *,
        per_class: int | None = None,
        classes: Sequence[str | int] | None = None,
        seed: int = 0,
    ) -> ImageDataset:
        """Keep some classes and/or at most `per_class` images of each.

        classes: names (matched loosely, see `resolve_classes`) or indices; the result is
        relabelled 0..k-1 in the order given. per_class: a seeded random choice of that many
        images per class (all of them when a class has fewer).
        """
        keep = (
            list(range(self.num_classes))
            if classes is None
            else resolve_classes(classes, self.class_names)
        )
        g = torch.Generator().manual_seed(seed)
        chosen: list[Tensor] = []
        new_labels: list[Tensor] = []
        for new, old in enumerate(keep):
            members = torch.nonzero(self.labels == old).flatten()
            if per_class is not None:
                if per_class < 1:
                    raise UsageError(f"per_class must be at least 1, not {per_class}")
                members = (
                    members[torch.randperm(len(members), generator=g)[:per_class]].sort().values
                )
            chosen.append(members)
            new_labels.append(torch.full((len(members),), new, dtype=torch.int64))
        idx = torch.cat(chosen)
        paths = [self.paths[i] for i in idx.tolist()] if self.paths else []
        return ImageDataset(
            self.images[idx], torch.cat(new_labels), [self.class_names[k] for k in keep], paths
        )

    def with_channels(self, channels: int) -> ImageDataset:
        """The same images with 1 or 3 channels (grey is repeated; RGB -> grey by BT.601 luma)."""
        c = self.channels
        if channels == c:
            return self
        if c == 1 and channels == 3:
            images = self.images.expand(-1, 3, -1, -1).contiguous()
        elif c == 3 and channels == 1:
            w = torch.tensor(_LUMA).view(1, 3, 1, 1)
            images = (self.images.float() * w).sum(1, keepdim=True).round_().to(torch.uint8)
        else:
            raise UsageError(f"channels must be 1 or 3, not {channels!r}")
        return ImageDataset(images, self.labels, self.class_names, self.paths)

    def resized(self, size: int | tuple[int, int]) -> ImageDataset:
        """All images resized to `size` ((height, width) or square) with antialiased bilinear.

        For growing small images to a big network's input (Fashion-MNIST at 224 px is 9 GB in
        RGB), prefer resizing per batch with `augment.Resize`: it costs memory only per batch.
        """
        hw = (size, size) if isinstance(size, int) else tuple(size)
        if hw == self.image_size:
            return self
        # Float copies of ~64 MB at a time: 4096 digits at 512 px were 4.3 GB at once.
        per_image = 4 * self.channels * max(hw[0] * hw[1], self.image_size[0] * self.image_size[1])
        chunk = max(1, CHUNK_BYTES // per_image)
        out = torch.empty((len(self), self.channels, *hw), dtype=torch.uint8)
        for start in range(0, len(self), chunk):  # into one tensor: no second copy from a cat
            part = self.images[start : start + chunk].float()
            out[start : start + chunk] = F.interpolate(
                part, size=hw, mode="bilinear", antialias=True, align_corners=False
            ).round_().clamp_(0, 255)
        return ImageDataset(out, self.labels, self.class_names, self.paths)


@dataclass
class Splits:
    """A data set as training uses it: train and validation parts, a test part when the source
    has one, and the files that were skipped while loading (one line each, for reports)."""

    train: ImageDataset
    val: ImageDataset
    test: ImageDataset | None = None
    skipped: list[str] = field(default_factory=list)
    # Skipped CSV rows beyond one per line of `skipped` (one line names every row of an unknown
    # split value, or every repeated image): len(skipped) + grouped rows were left out.
    grouped: int = 0
    # The validation part was drawn from the training images (val_fraction, seed), not given
    # (a val/ folder, rows marked val, Fashion-MNIST's test set): only then can a changed folder
    # move images between them, or another seed pick others.
    val_drawn: bool = False

    @property
    def class_names(self) -> list[str]:
        return self.train.class_names

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def skipped_count(self) -> int:
        """Files and CSV rows left out while loading: `data info`'s, `train`'s and
        `transfer`'s "skipped"."""
        return len(self.skipped) + self.grouped

    def __repr__(self) -> str:
        test = f", test={len(self.test)}" if self.test is not None else ""
        return (
            f"Splits({self.num_classes} classes, train={len(self.train)}, val={len(self.val)}"
            f"{test}, {self.train.channels}x{self.train.image_size[0]}x{self.train.image_size[1]})"
        )


def _norm(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


def resolve_classes(wanted: Sequence[str | int], class_names: Sequence[str]) -> list[int]:
    """Indices of the `wanted` classes, matched loosely so users can type them.

    An int (or a digit string that is not itself a class name) is an index. A name matches a
    class when, ignoring case and everything but letters and digits, the two are equal, or
    else one starts with the other and that class is the only such one: 'tshirt', 'T-shirt' and
    'T-shirt/top' all find 'tshirt'; 'ankle boot' finds 'ankle_boot'.
    """
    normed = [_norm(n) for n in class_names]
    out: list[int] = []
    for w in wanted:
        if isinstance(w, int) or (str(w).isdigit() and str(w) not in class_names):
            i = int(w)
            if not 0 <= i < len(class_names):
                raise DataError(
                    f"class index {i} is out of range: there are {len(class_names)} classes"
                )
            out.append(i)
            continue
        q = _norm(str(w))
        hits = [i for i, n in enumerate(normed) if n == q]
        if not hits and q:
            hits = [i for i, n in enumerate(normed) if n and (n.startswith(q) or q.startswith(n))]
        if len(hits) != 1:
            why = "matches several classes" if hits else "is not a class"
            raise DataError(f"{w!r} {why}; choose from: {', '.join(class_names)}")
        out.append(hits[0])
    if len(set(out)) != len(out):
        raise DataError(f"a class is named twice in {list(wanted)}")
    return out
