"""cnnzoo: the landmark convolutional networks, their pretrained weights, and transfer learning
that runs in minutes on a CPU."""

from typing import TYPE_CHECKING

from .errors import CnnzooError

if TYPE_CHECKING:  # what a type checker sees for the names imported on first use (below)
    from .models import create_model, get_config, list_models
    from .transfer import load_bundle
    from .transfer.run import transfer

# The one place the version is set: pyproject.toml reads it from here (tool.setuptools.dynamic).
__version__ = "0.1.0"

# Imported on first use, so `import cnnzoo` (which `python -m cnnzoo` and the `cnnzoo` script
# do before any of cli.main runs) does not import torch: a Ctrl-C during torch's seconds-long
# import then reaches cli.main, which says "interrupted" in one line instead of a traceback.
_MODELS = ("create_model", "get_config", "list_models")


def __getattr__(name: str):
    if name in _MODELS:
        from . import models

        return getattr(models, name)
    # Transfer learning pulls in the data, engine and plotting modules: imported on first use
    # too, so every CLI command stays quick.
    if name in ("load_bundle", "transfer"):
        import importlib

        # `cnnzoo.transfer` is the subpackage, made callable: cnnzoo.transfer(data, ...) runs
        # `cnnzoo.transfer.run.transfer` (see cnnzoo/transfer/__init__.py).
        module = importlib.import_module(".transfer", __name__)
        return module if name == "transfer" else module.load_bundle
    raise AttributeError(f"module 'cnnzoo' has no attribute {name!r}")


def __dir__() -> list[str]:
    # The lazy names too, so that a notebook's tab completion offers them before first use.
    return sorted({*globals(), *_MODELS, "load_bundle", "transfer"})


__all__ = [
    "CnnzooError",
    "__version__",
    "create_model",
    "get_config",
    "list_models",
    "load_bundle",
    "transfer",
]
