"""cnnzoo from a notebook, as a Keras Applications / timm user drives it: what bad input raises,
what the objects print as, and how pixel values are read."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cnnzoo
from cnnzoo.errors import CnnzooError
from cnnzoo.segmentation.tiling import predict_tiled
from cnnzoo.weights import Preprocessing


def _one_line_cnnzoo_error(call, *kinds: type[Exception]) -> str:
    with pytest.raises(CnnzooError) as exc:
        call()
    for kind in kinds:  # what `except ValueError` / `except TypeError` callers caught before
        assert isinstance(exc.value, kind), (type(exc.value).__mro__, kind)
    text = str(exc.value)
    assert text and "\n" not in text
    return text


def test_bad_images_and_batches_are_one_line_cnnzoo_errors_that_stay_value_or_type_errors():
    """A float image of 0..255, a (C, H, W) array, a list given as an image, a numpy or uint8
    batch given to a model: plain ValueError / TypeError, which a notebook's `except
    CnnzooError` (the library's documented base) let through. They are CnnzooErrors now, and
    still the ValueError or TypeError they were."""
    pre = Preprocessing.for_model(cnnzoo.create_model("lenet5", in_chans=1))
    grey = np.arange(32 * 32, dtype=np.uint8).reshape(32, 32)
    text = _one_line_cnnzoo_error(lambda: pre(grey.astype(np.float64)), ValueError)
    assert text.startswith("a float image must lie in [0, 1]")
    _one_line_cnnzoo_error(lambda: pre(grey.astype(np.int8)), ValueError)
    _one_line_cnnzoo_error(lambda: pre(np.stack([grey] * 3)), ValueError)  # (C, H, W) array
    _one_line_cnnzoo_error(lambda: pre(torch.zeros(1, 1, 32, 32)), ValueError)  # a batch
    _one_line_cnnzoo_error(lambda: pre(b"\x89PNG"), TypeError)

    net = cnnzoo.create_model("resnet18", num_classes=3).eval()
    x = np.zeros((1, 3, 32, 32), np.float32)
    _one_line_cnnzoo_error(lambda: net(x), TypeError)
    _one_line_cnnzoo_error(lambda: net(torch.zeros(1, 3, 32, 32, dtype=torch.uint8)), TypeError)
    _one_line_cnnzoo_error(lambda: net(torch.zeros(1, 3, 32, 32, dtype=torch.float64)), TypeError)

    unet = cnnzoo.create_model("unet", num_classes=2, in_chans=1, padding="same", base_width=4)
    _one_line_cnnzoo_error(lambda: predict_tiled(unet, [[1, 2], [3, 4]]), TypeError)
    _one_line_cnnzoo_error(lambda: predict_tiled(unet, np.zeros((40, 50, 3), np.uint8)),
                           ValueError)
