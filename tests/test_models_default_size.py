"""Forward and backward at the default input size for the models that the family test files only
run forward there (they keep their backward passes at the minimum size to stay fast).

Together with tests/test_models_*.py every registered model is built and trained one step at its
default and its minimum size, with 1 and 3 input channels.
"""

from __future__ import annotations

import pytest
import torch

from cnnzoo import create_model, get_config

# The in_chans not used for each name at the default size by the family test files.
BIG = {
    "resnet34": 1, "resnet50": 3, "resnet101": 1, "resnet152": 3, "plain34": 1,
    "densenet161": 1, "densenet169": 3, "densenet201": 1, "efficientnet_lite0": 1,
    "efficientnet_lite1": 1, "efficientnet_lite2": 1, "unet": 3,
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(BIG))
def test_forward_backward_at_default_size(name):
    cfg = get_config(name)
    chans = BIG[name]
    model = create_model(name, in_chans=chans).train()
    size = cfg.input_size[1]
    out = model(torch.randn(1, chans, size, size))
    if name == "unet":  # the paper's valid convolutions: 572 -> 388
        assert out.shape == (1, cfg.num_classes, 388, 388)
    else:
        assert out.shape == (1, cfg.num_classes)
    out.float().square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
