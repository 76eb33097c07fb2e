"""Batches from in-memory tensors.

cnnzoo's users have a few hundred to a few tens of thousands of images, so a data set is decoded
once into a uint8 tensor (N, C, H, W) and batches are cut from it; augmentation runs on whole
batches of tensors (see `augment.py`), never one PIL image at a time, so that two cores spend
their time on the network, not on data loading.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import overload

import numpy as np
import torch
from torch import Tensor

from ..errors import ImageError, UsageError
from ..text import plural
from .images import check_unit_range

# (images float NCHW in [0, 1], targets, generator) -> (images, targets). Targets pass through for
# classification; segmentation masks (N, H, W) get the same geometry as their images. A transform
# with `accepts_uint8 = True` is given the uint8 batch (0-255) instead and may return either.
BatchTransform = Callable[[Tensor, Tensor, torch.Generator], tuple[Tensor, Tensor]]


def small_set_batch(batch_size: int, n: int) -> int:
    """`batch_size`, but at most a quarter of the `n` training images (at least 8, at most n):
    on a small set a large batch makes one step per epoch. 150 Fashion-MNIST shoes (120 to
    train), lenet5, 10 epochs: batches of 128 (10 steps in all) reached 0.43 validation
    accuracy, batches of 30 (40 steps) 0.77; transfer's fine-tuning had the same problem."""
    return max(1, min(batch_size, max(8, n // 4), n))


def epoch_steps(n: int, batch_size: int) -> int:
    """Optimizer steps per epoch over `n` images: whole batches only (the training loaders drop
    the last, smaller batch) unless the images fit in one batch."""
    return n // batch_size if n > batch_size else 1


def epochs_for_steps(epochs: int, min_steps: int, steps_per_epoch: int) -> int:
    """`epochs`, raised so that they make at least `min_steps` steps: on a few hundred images
    an epoch is a handful of steps, and a run measured in epochs alone hardly trains."""
    return max(epochs, math.ceil(min_steps / max(steps_per_epoch, 1)))


@overload
def in_raised_epochs(count: int, epochs: int, asked: int) -> int: ...
@overload
def in_raised_epochs(count: float, epochs: int, asked: int) -> float: ...
def in_raised_epochs(count: float, epochs: int, asked: int) -> float:
    """`count` epochs of the `asked` ones (a patience, a --progressive span, a warm-up) in the
    `epochs` a run was raised to (`epochs_for_steps`): they grow with them, or 4-step epochs
    would let noise in a small validation loss stop the run at once, and a warm-up of 1 epoch
    of 10 would be 1 of 75. A whole count is rounded up to whole epochs; a warm-up's fraction
    (a float) is kept, as the schedule counts it in steps."""
    if isinstance(count, float):
        return count * epochs / max(asked, 1)
    return math.ceil(count * epochs / max(asked, 1))


def asked_count(raised: int, epochs: int, asked: int) -> int:
    """The count of `asked` epochs that `in_raised_epochs` made `raised` of `epochs` (unique:
    with epochs >= asked each count rises to a larger one than the count before); `raised`
    when none does. For runs that recorded only the raised count."""
    return next((c for c in range(1, raised + 1) if in_raised_epochs(c, epochs, asked) == raised),
                raised)


class BatchLoader:
    """Iterates `(inputs, targets)` over in-memory tensors, one epoch per `iter()`.

    images: uint8 (N, C, H, W), or float in [0, 1] (other floats are an ImageError); targets:
    (N,) class indices or (N, H, W) masks; tensors or numpy arrays (taken as tensors: Keras's
    x_train, y_train, once made (N, C, H, W)).
    Each epoch draws its order and augmentation from a generator seeded with `(seed, epoch)`, so
    an epoch replays identically after a resume. `shard=(rank, world)` keeps every `world`-th
    sample for distributed training; `mean`/`std` normalise after augmentation.
    `channels_last`: batches come out in that memory format (the engine switches it on when it
    trains in channels_last). Without a transform, multi-channel images are then kept in that
    layout too (one copy, made at the first batch), so a batch is gathered channels_last instead
    of being permuted every step -- for 3-channel LeNet-5 batches the permute was most of the
    loader's time.

    even_shards: cut every shard to the same length (n // world), so that the processes step in
    lock-step (DDP needs that for training). Default: True for shuffled (training) loaders; an
    evaluation loader keeps the remainder, so every validation image is counted exactly once.
    """

    def __init__(
        self,
        images: Tensor,
        targets: Tensor,
        *,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        transform: BatchTransform | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        seed: int = 0,
        shard: tuple[int, int] = (0, 1),
        channels_last: bool = False,
        even_shards: bool | None = None,
    ) -> None:
        # Keras's habit, (x_train, y_train) as numpy arrays: index_select on one was an
        # AttributeError at the first batch.
        images, targets = _tensor(images, "images"), _tensor(targets, "targets")
        if targets.dim() == 1 and targets.dtype in (torch.uint8, torch.int8, torch.int16,
                                                    torch.int32):  # fmt: skip
            # Class indices as Keras keeps them (uint8, int32): cross-entropy takes int64 only.
            targets = targets.long()
        if len(images) != len(targets):
            raise UsageError(f"{len(images)} images but {len(targets)} targets")
        if batch_size < 1:
            raise UsageError("batch_size must be at least 1")
        if images.dim() < 2:
            raise UsageError(f"images must be a batch (N, C, H, W), not shape {tuple(images.shape)}")
        c = images.shape[1]
        if images.dim() == 4 and c not in (1, 3, 4) and images.shape[-1] in (1, 3, 4):
            raise UsageError(f"images of shape {tuple(images.shape)} look channels-last "
                             "(N, H, W, C), Keras's layout: pass images.permute(0, 3, 1, 2) "
                             "(numpy: .transpose(0, 3, 1, 2)), (N, C, H, W)")  # fmt: skip
        if images.is_floating_point() and images.numel():
            # Keras's x_train.astype("float32") is 0..255: read as [0, 1] it trained LeNet-5 on
            # digits to chance (0.09 against 0.94 as uint8) without a word.
            try:
                check_unit_range(float(images.min()), float(images.max()))
            except ImageError as exc:
                raise ImageError(f"images: {exc}") from None
        self.images = images
        self.targets = targets
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.transform = transform
        self.mean, self.std = _per_channel(mean, "mean", c), _per_channel(std, "std", c)
        self._nhwc: Tensor | None = None  # images as (N, H, W, C), see `channels_last`
        self._patterns: dict[tuple, tuple[Tensor, Tensor]] = {}
        self.seed = seed
        self.rank, self.world = shard
        self.channels_last = channels_last
        self.even_shards = shuffle if even_shards is None else even_shards
        self.epoch = 0

    def __repr__(self) -> str:
        # A notebook line, as ImageDataset's: what is batched and how, not the tensors (a
        # loader's default repr named only its address).
        images = self.images
        shape = "x".join(map(str, images.shape[1:]))
        parts = [f"{len(images)} images {shape} {str(images.dtype).removeprefix('torch.')}",
                 f"batch_size={self.batch_size}", plural(len(self), "batch", "batches")]
        parts += [name for name in ("shuffle", "drop_last") if getattr(self, name)]
        if self.transform is not None:
            parts.append(f"transform={self.transform!r}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name}={tuple(round(v, 4) for v in value.flatten().tolist())}")
        if self.world > 1:
            parts.append(f"shard={self.rank, self.world}")
        return f"BatchLoader({', '.join(parts)})"

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.transform, "set_epoch"):  # e.g. augment.ProgressiveResize
            self.transform.set_epoch(epoch)

    def _indices(self, generator: torch.Generator) -> Tensor:
        n = len(self.images)
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        if self.world > 1:
            order = order[self.rank :: self.world]
            if self.even_shards:
                order = order[: n // self.world]
        return order

    def num_samples(self) -> int:
        n = len(self.images)
        if self.world <= 1:
            return n
        if self.even_shards:
            return n // self.world
        return len(range(self.rank, n, self.world))

    def __len__(self) -> int:
        n = self.num_samples()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = self._indices(g)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            if self.drop_last and len(idx) < self.batch_size:
                break
            yield self.make_batch(idx, g)

    def _gather(self, idx: Tensor) -> Tensor:
        images = self.images
        if (self.channels_last and self.transform is None and images.dim() == 4
                and images.shape[1] > 1):
            if self._nhwc is None or len(self._nhwc) != len(images):
                self._nhwc = images.permute(0, 2, 3, 1).contiguous()
            return self._nhwc.index_select(0, idx).permute(0, 3, 1, 2)  # channels_last
        return images.index_select(0, idx)

    def _pattern(self, chw: tuple[int, ...], scale: float) -> tuple[Tensor, Tensor]:
        key = (chw, scale)
        if key not in self._patterns:
            assert self.mean is not None and self.std is not None
            full = (1, *chw)
            cl = torch.channels_last
            self._patterns[key] = (
                (self.mean * scale).expand(full).contiguous(memory_format=cl),
                (1.0 / (self.std * scale)).expand(full).contiguous(memory_format=cl))
        return self._patterns[key]

    def make_batch(self, idx: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        # index_select, not images[idx]: advanced indexing costs ~10x more on a uint8 batch.
        x = self._gather(idx)
        y = self.targets.index_select(0, idx)
        if self.transform is not None:
            if x.dtype != torch.uint8 or not getattr(self.transform, "accepts_uint8", False):
                x = unit_float(x)
            # A transform that accepts uint8 (`augment.Compose`) runs its exact geometric steps
            # (crops, flips) on the 4x smaller uint8 batch and may hand back uint8.
            x, y = self.transform(x, y, generator)
        # uint8 -> normalised float in one pass: (x - 255 mean) / (255 std); .float() keeps the
        # layout.
        scale = 255.0 if x.dtype == torch.uint8 else 1.0
        x = x.float()
        if self.mean is not None:
            if x.dim() == 4 and not x.is_contiguous():
                # channels_last: broadcasting (1, C, 1, 1) over the innermost C is 10x slower
                # than over whole images, so the mean and scale are spread to a full
                # (1, C, H, W) channels_last pattern, made once per shape.
                sub, mul = self._pattern(tuple(x.shape[1:]), scale)
                x = x.sub_(sub).mul_(mul)
            else:
                x = x.sub_(self.mean * scale).mul_(1.0 / (self.std * scale))
        elif scale != 1.0:
            x = x.div_(scale)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y


def _tensor(value: object, name: str) -> Tensor:
    if isinstance(value, Tensor):
        return value
    try:
        return torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError, RuntimeError):  # a list of ragged shapes, object arrays
        raise UsageError(f"{name} must be a tensor or numpy array, not "
                         f"{type(value).__name__}") from None  # fmt: skip


def _per_channel(values: Sequence[float] | None, name: str, channels: int) -> Tensor | None:
    """`values` as a (1, C, 1, 1) tensor; one per channel, or a one-line error (a view of the
    wrong size was torch's "shape '[1, 1, 1, 1]' is invalid for input of size 3")."""
    if values is None:
        return None
    t = torch.tensor(values, dtype=torch.float32).flatten()
    if len(t) != channels:
        raise UsageError(f"{name} needs one number per channel of the images ({channels}), "
                         f"not {len(t)}: {list(values)}")  # fmt: skip
    return t.view(1, channels, 1, 1)


def unit_float(x: Tensor) -> Tensor:
    """uint8 images -> float in [0, 1]; float images -> float32."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()
