"""An exponential moving average of a model's weights (Polyak averaging), `--ema DECAY`.

After every optimizer step the average moves towards the trained weights:
`avg = d * avg + (1 - d) * w`. Validation, the best-epoch choice and the final model use the
average, which smooths out the last steps' noise (timm's ModelEmaV2, Keras' `use_ema`).

The decay warms up as `min(decay, (1 + n) / (10 + n))` after n updates (TensorFlow's
`ExponentialMovingAverage(num_updates=...)`): with a fixed 0.999 the first thousand steps
would keep the random initialisation in the average. Buffers (BatchNorm running statistics)
are copied, not averaged: they are already running averages of the current weights' activations.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn


class WeightAverage:
    """`model`'s running weight average, kept in a copy of the model (`.model`, eval mode)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be between 0 and 1 (e.g. 0.998), not {decay}")
        self.decay = decay
        self.updates = 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        n = self.updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        avg = [p for p in self.model.parameters()]
        new = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(avg, new, 1.0 - d)
        for b_avg, b in zip(self.model.buffers(), model.buffers(), strict=True):
            b_avg.copy_(b)
        self.updates += 1

    def state_dict(self) -> dict[str, Tensor]:
        return self.model.state_dict()

    def load(self, weights: dict[str, Any], updates: int) -> None:
        self.model.load_state_dict(weights)
        self.updates = updates
