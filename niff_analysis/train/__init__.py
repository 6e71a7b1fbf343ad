"""Training: the trainer (the datasets live in :mod:`niff_analysis.data`; re-exported here).

The names below are imported on first use (PEP 562), so that :mod:`.config` (the recipe, which
the command line's options are built from) can be imported without torch.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "DATASETS": "..data",
    "load_cifar10": "..data",
    "load_dataset": "..data",
    "load_fashion_mnist": "..data",
    "load_imagefolder": "..data",
    "TrainConfig": ".trainer",
    "evaluate": ".trainer",
    "train": ".trainer",
}

__all__ = [
    "DATASETS",
    "TrainConfig",
    "evaluate",
    "load_cifar10",
    "load_dataset",
    "load_fashion_mnist",
    "load_imagefolder",
    "train",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
