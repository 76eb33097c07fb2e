"""Counting a model's operations by running it, not by formula.

The count follows the papers' and torchvision's tables: one multiply-add is one operation
(VGG-16: 15.5 G; ResNet-50: 4.1 G). torch's FlopCounterMode counts a multiply-add as two, so the
result is halved. Models are built and run on the 'meta' device: shapes only, no memory, no time.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from .registry import create_model, get_config


def count_macs(name: str, input_size: tuple[int, int, int] | None = None) -> int:
    """Multiply-adds of one forward pass of `name` at `input_size` (default: the model's own)."""
    cfg = get_config(name)
    c, h, w = input_size or cfg.input_size
    with torch.device("meta"):
        model = create_model(name, in_chans=c).eval()
        x = torch.empty(1, c, h, w)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops() // 2


def count_params(name: str) -> int:
    """Parameters at the model's default number of classes, without allocating them."""
    with torch.device("meta"):
        model = create_model(name)
    return sum(p.numel() for p in model.parameters())
