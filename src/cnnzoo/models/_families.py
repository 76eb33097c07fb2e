"""Imports every family module so that each registers its models (see registry._ensure_loaded)."""

# ruff: noqa: F401
from . import alexnet, densenet, efficientnet, googlenet, lenet, residual_net, resnet, unet, vgg
