"""Kept for imports written before the datasets moved to :mod:`niff_analysis.data` (their one
home, shared by training and the analyses); new code imports from there."""

from ..data import (  # noqa: F401
    CIFAR10_CLASSES,
    CIFAR10_STATS,
    DATASETS,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DEFAULT,
    FASHION_MNIST_FILES,
    FASHION_MNIST_STATS,
    SeededImageFolder,
    TensorDataset,
    augment_batch,
    dataset_images,
    load_cifar10,
    load_dataset,
    load_fashion_mnist,
    load_imagefolder,
    normalise,
    scale_content,
)
