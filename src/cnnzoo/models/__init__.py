"""The zoo: one module per architecture family, all reached through the registry."""

from .base import AuxOutputs, Classifier, count_parameters
from .flops import count_macs
from .registry import (
    ModelConfig,
    create_model,
    fixed_input_size,
    get_config,
    list_models,
    min_input_size,
    register_model,
)

__all__ = [
    "AuxOutputs",
    "Classifier",
    "ModelConfig",
    "count_macs",
    "count_parameters",
    "create_model",
    "fixed_input_size",
    "get_config",
    "list_models",
    "min_input_size",
    "register_model",
]
