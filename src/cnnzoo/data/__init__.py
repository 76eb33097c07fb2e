"""Everything that turns files into tensors, and nothing that trains.

- `images`: decode one image file (any mode, EXIF, clear errors) and the resize helpers.
- `dataset`: `ImageDataset`, the in-memory labelled set (uint8 NCHW) every task uses.
- `folder`: image folders and CSV manifests -> `ImageDataset`, bad files skipped and counted.
- `builtin`: Fashion-MNIST (offline) and scikit-learn's digits; `load_dataset(name_or_path)`.
- `augment`: label-preserving augmentation on batches of tensors (masks follow the geometry).
- `export`: built-in sets written out as image folders (`cnnzoo data export`).
- `loader`: `BatchLoader`, batches from in-memory tensors.
"""

from .augment import default_augmentation, resize_batch
from .builtin import load_dataset, load_digits, load_fashion_mnist
from .dataset import ImageDataset, Splits
from .folder import load_csv, load_folder
from .images import ImageSpec, load_image
from .loader import BatchLoader

__all__ = [
    "BatchLoader",
    "ImageDataset",
    "ImageSpec",
    "Splits",
    "default_augmentation",
    "load_csv",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_folder",
    "load_image",
    "resize_batch",
]
