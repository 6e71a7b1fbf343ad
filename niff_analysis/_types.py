"""The types every module shares, each defined once.

* :data:`PathLike`: what a function taking a file or folder accepts;
* :data:`Size`: an (H, W) pair of positive ints, the only form a size is kept in;
* :data:`SizeLike`: what a caller may pass for one (an int means a square);
* :func:`as_hw`: the one function that turns a :data:`SizeLike` into a :data:`Size`;
* :func:`input_hw`: a model's input size, with the one default (224, or 32 for the CIFAR stem).

This module imports nothing of the package, so every layer may use it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

PathLike = str | os.PathLike
#: (H, W), both positive.
Size = tuple[int, int]
#: A size as a caller gives it: ``n`` (n×n) or ``(H, W)`` (a tuple or a JSON list).
SizeLike = int | Sequence[int]

#: The input side a model is built for when none is given: ImageNet's 224 …
DEFAULT_INPUT_SIZE = 224
#: … or 32 for the CIFAR stem (a stride-1 stem without max-pool, for 32×32 images).
CIFAR_INPUT_SIZE = 32


def as_hw(size: SizeLike, what: str = "size") -> Size:
    """``size`` as an (H, W) pair of positive ints.

    Args:
        size: an int (a square) or a pair.
        what: the name used in the error message (``input_size``, ``feature-map size``, …).

    Raises:
        ValueError: not an int or a pair, or a side below 1.
    """
    if isinstance(size, bool):
        raise ValueError(f"{what} must be an integer or (H, W), got {size!r}")
    if isinstance(size, int):
        h = w = size
    else:
        try:
            h, w = (int(s) for s in size)
        except (TypeError, ValueError):
            raise ValueError(f"{what} must be an integer or (H, W), got {size!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"{what} must be positive, got {(h, w)}")
    return h, w


def input_hw(size: SizeLike | None = None, stem: str | None = None) -> Size:
    """A model's input size as (H, W): ``size`` itself, or when it is ``None`` the default of the
    stem (:data:`CIFAR_INPUT_SIZE` for ``"cifar"``, else :data:`DEFAULT_INPUT_SIZE`).

    Raises:
        ValueError: as :func:`as_hw`.
    """
    if size is None:
        size = CIFAR_INPUT_SIZE if stem == "cifar" else DEFAULT_INPUT_SIZE
    return as_hw(size, "input_size")
