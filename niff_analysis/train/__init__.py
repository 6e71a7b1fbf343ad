"""The trainer (the datasets live in :mod:`niff_analysis.data`; re-exported here)."""

from ..data import DATASETS, load_cifar10, load_dataset, load_fashion_mnist, load_imagefolder
from .trainer import TrainConfig, evaluate, train

__all__ = ["DATASETS", "TrainConfig", "evaluate", "load_cifar10", "load_dataset",
           "load_fashion_mnist", "load_imagefolder", "train"]
