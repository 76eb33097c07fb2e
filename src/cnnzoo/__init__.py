"""cnnzoo: the landmark convolutional networks, their pretrained weights, and transfer learning
that runs in minutes on a CPU."""

from .errors import CnnzooError
from .models import create_model, get_config, list_models

__version__ = "0.1.0"

__all__ = [
    "CnnzooError",
    "__version__",
    "create_model",
    "get_config",
    "list_models",
]
