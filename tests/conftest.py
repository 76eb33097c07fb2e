"""Shared test fixtures: the reference implementations cnnzoo is held against.

torchvision's compiled ops do not load against the CPU torch used here, so `import torchvision`
fails; its model definitions are pure Python, though. `tv_models` registers a bare package object
named `torchvision` whose __path__ is the installed folder, so that `torchvision.models` imports
without running torchvision/__init__.py. Test-only: src/ never imports torchvision.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types

import pytest
import torch

os.environ.setdefault("KERAS_BACKEND", "torch")  # before any keras import: no TensorFlow here


def _import_torchvision_models():
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    if "torchvision" not in sys.modules or not hasattr(sys.modules["torchvision"], "models"):
        pkg = types.ModuleType("torchvision")
        pkg.__path__ = list(spec.submodule_search_locations)
        pkg.__version__ = "oracle"
        sys.modules["torchvision"] = pkg
    import torchvision.models as tvm

    return tvm


@pytest.fixture(scope="session")
def tv_models():
    """torchvision.models, importable despite torchvision's broken compiled ops."""
    tvm = _import_torchvision_models()
    if tvm is None:
        pytest.fail("torchvision is not installed: run `bash scripts/setup.sh --dev`")
    return tvm


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def two_class_folder(tmp_path):
    """A factory: `two_class_folder(n=40)` -> tmp_path/data, classes dark and light, n 32-px grey
    PNGs each (80 images: 64 to train at the default --val-fraction, in batches of 16)."""
    from PIL import Image

    def make(n: int = 40):
        root = tmp_path / "data"
        for cls, value in (("dark", 20), ("light", 220)):
            (root / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("L", (32, 32), value + i).save(root / cls / f"{i}.png")
        return root

    return make


@pytest.fixture
def grey_classes(tmp_path):
    """A tiny image folder: classes cat (dark) and dog (light), five 32-px grey PNGs each."""
    from PIL import Image

    data = tmp_path / "data"
    for cls, value in (("cat", 10), ("dog", 200)):
        (data / cls).mkdir(parents=True)
        for i in range(5):
            Image.new("L", (32, 32), value + i).save(data / cls / f"{i}.png")
    return data
