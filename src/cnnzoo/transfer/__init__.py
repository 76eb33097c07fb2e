"""Transfer learning, the main job: a pretrained network + a small folder of your images -> a
classifier with probabilities, in minutes on a CPU. This package is also callable:
`cnnzoo.transfer(data, model=..., weights=..., out=...)` runs `run.transfer` (its settings:
`help(cnnzoo.transfer.transfer)`, `TransferConfig`).

- `features`: the frozen backbone as a feature extractor, with an on-disk feature cache.
- `heads`: logistic regression with a cross-validated L2, or a small MLP, on those features.
- `finetune`: head first, then the whole net with layer-wise learning rates, on the engine.
- `bundle`: the result folder (weights .safetensors + JSON) and `load_bundle`.
- `report`: confusion matrix, curves, per-class table and the top-losses grid.
- `run`: `transfer(data, model=..., weights=...)`, which chains them.
"""

import inspect
import sys
import types
from typing import Any

from .bundle import Bundle, Evaluation, Predictions, load_bundle
from .features import FeatureCache, cached_features, extract_features
from .finetune import FinetuneConfig, finetune
from .heads import fit_logistic, fit_mlp
from .run import TransferConfig, TransferResult, transfer

__all__ = [
    "Bundle",
    "Evaluation",
    "FeatureCache",
    "FinetuneConfig",
    "Predictions",
    "TransferConfig",
    "TransferResult",
    "cached_features",
    "extract_features",
    "finetune",
    "fit_logistic",
    "fit_mlp",
    "load_bundle",
    "transfer",
]


class _CallableModule(types.ModuleType):
    """`cnnzoo.transfer` is this package and, called, the `transfer` function: the library API
    promises `cnnzoo.transfer(data, ...)`, and a package and a function cannot share the name
    `cnnzoo.transfer` otherwise (whichever was bound last would hide the other)."""

    def __call__(self, *args: Any, **kwargs: Any) -> TransferResult:
        return transfer(*args, **kwargs)

    __call__.__doc__ = transfer.__doc__


sys.modules[__name__].__class__ = _CallableModule
# What a notebook's Shift+Tab, `cnnzoo.transfer?` and inspect.signature show for the call:
# transfer's parameters, which (*args, **kwargs) hid.
__signature__ = inspect.signature(transfer)
