"""niff-analysis: how large are the kernels a CNN learns when it could learn any size?

The names below are imported on first use (PEP 562), so ``import niff_analysis`` (and the
command line's ``--help``/``--version``) does not pay for torch and torchvision.
"""

from __future__ import annotations

import importlib

# The one place the version is written: pyproject.toml reads it (dynamic = ["version"]), and
# CHANGELOG.md names it.
__version__ = "0.1.0"

_LAZY = {
    "DepthwiseNIFF": "layers",
    "FreqPointwise": "layers",
    "FullNIFF": "layers",
    "SplitNIFF": "layers",
    "create_model": "models",
    "list_models": "models",
    "to_niff": "models",
    "to_separated": "models",
    "build_model": "models",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
