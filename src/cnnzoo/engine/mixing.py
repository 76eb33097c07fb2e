"""Batch mixing for classification: mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019).

Each training batch is blended with a shuffled copy of itself: mixup takes
lam * x + (1 - lam) * x[perm]; CutMix pastes a box of x[perm] into x and sets lam to the share
of pixels left from x. The loss is lam * loss(out, y) + (1 - lam) * loss(out, y[perm]), which
for cross-entropy equals the loss against the mixed one-hot targets, so the task keeps hard
labels and the metrics keep counting hits against y. lam is drawn from Beta(alpha, alpha).

The mixing comes after normalisation; that is the same as mixing the raw pixels, because
(x - mean) / std is affine and lam + (1 - lam) = 1 (CutMix copies pixels, so it commutes too).

The draws come from a generator seeded by (seed, epoch, rank), so a run resumed at an epoch
boundary mixes exactly as the uninterrupted run, and DDP processes mix differently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass
class Mix:
    """How one batch was mixed: `perm` is the partner of each image, `lam` the weight of y."""

    perm: Tensor
    lam: float


class BatchMixer:
    """mixup: alpha of mixup's Beta (0: off); cutmix: alpha of CutMix's (0: off). With both
    on, each batch uses one of them, chosen with equal odds (timm's `switch_prob` 0.5)."""

    def __init__(self, mixup: float = 0.0, cutmix: float = 0.0, *, seed: int = 0,
                 rank: int = 0) -> None:  # fmt: skip
        for name, alpha in (("mixup", mixup), ("cutmix", cutmix)):
            if alpha < 0 or not math.isfinite(alpha):
                raise ValueError(f"{name} alpha must be >= 0 (0: off), not {alpha}")
        self.mixup, self.cutmix = mixup, cutmix
        self.seed, self.rank = seed, rank
        self.set_epoch(0)

    @property
    def enabled(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    def set_epoch(self, epoch: int) -> None:
        self.rng = np.random.default_rng([self.seed, epoch, self.rank])

    def __call__(self, x: Tensor) -> tuple[Tensor, Mix]:
        """The mixed batch (a new tensor; x is left alone) and how it was mixed."""
        n = x.shape[0]
        use_cutmix = self.cutmix > 0 and (self.mixup <= 0 or self.rng.random() < 0.5)
        alpha = self.cutmix if use_cutmix else self.mixup
        lam = float(self.rng.beta(alpha, alpha))
        perm = torch.from_numpy(self.rng.permutation(n))
        partner = x.index_select(0, perm)
        if not use_cutmix:
            return torch.lerp(partner, x, lam), Mix(perm, lam)
        h, w = x.shape[-2:]
        # A box of area (1 - lam) * h * w centred anywhere, clipped at the borders; lam is
        # then the share actually left from x (Yun et al. 2019, Algorithm A1).
        cut = math.sqrt(1.0 - lam)
        ch, cw = int(h * cut), int(w * cut)
        cy, cx = int(self.rng.integers(h)), int(self.rng.integers(w))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        mixed = x.clone()
        mixed[..., y0:y1, x0:x1] = partner[..., y0:y1, x0:x1]
        return mixed, Mix(perm, 1.0 - (y1 - y0) * (x1 - x0) / (h * w))
