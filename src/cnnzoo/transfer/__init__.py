"""Transfer learning, the main job: a pretrained network + a small folder of your images -> a
classifier with probabilities, in minutes on a CPU. This package is also callable:
`cnnzoo.transfer(data, model=..., weights=..., out=...)` runs `run.transfer` (its settings:
`help(cnnzoo.transfer.transfer)`, `TransferConfig`).

- `features`: the frozen backbone as a feature extractor, with an on-disk feature cache.
- `heads`: logistic regression with a cross-validated L2, or a small MLP, on those features.
- `finetune`: head first, then the whole net with layer-wise learning rates, on the engine;
  the module is callable as its function `finetune(model, splits, pre, cfg, out_dir=...)`, so
  `from cnnzoo.transfer import finetune` and `import cnnzoo.transfer.finetune as ft` both work.
- `bundle`: the result folder (weights .safetensors + JSON) and `load_bundle`.
- `report`: confusion matrix, curves, per-class table and the top-losses grid.
- `run`: `transfer(data, model=..., weights=...)`, which chains them.
"""

from typing import TYPE_CHECKING

from ..callable_module import make_callable
from .bundle import Bundle, Evaluation, Predictions, load_bundle
from .features import FeatureCache, cached_features, extract_features
from .finetune import FinetuneConfig
from .heads import fit_logistic, fit_mlp
from .run import TransferConfig, TransferResult, transfer

if TYPE_CHECKING:  # what a type checker sees: the function, which the module is called as
    from .finetune import finetune
else:  # the module, callable as its function finetune(...) (see callable_module)
    from . import finetune

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


# `cnnzoo.transfer(data, ...)`, which the library API promises, runs `run.transfer`: a package
# and a function cannot otherwise share the name `cnnzoo.transfer`.
make_callable(__name__, transfer)
