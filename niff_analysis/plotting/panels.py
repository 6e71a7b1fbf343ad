"""Panel bookkeeping shared by the figure modules: checking a table's columns, splitting it by
checkpoint, laying out (or reusing) a grid of axes and returning ``(fig, ax)``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..analysis.schema import CHECKPOINT as MODEL  # the column of compared checkpoints
from ..errors import SelectionError
from .style import new_figure, ordered_unique


def require(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    """Refuse (one-line :class:`SelectionError`) a table without ``columns`` or without rows."""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise SelectionError(f"{what} needs columns {missing}; got {list(df.columns)}")
    if df.empty:
        raise SelectionError(f"{what}: the table is empty (no layers selected?)")


def models_of(df: pd.DataFrame) -> list:
    """The table's checkpoints in order of appearance; ``[None]`` for a single-model table."""
    return ordered_unique(df[MODEL]) if MODEL in df.columns else [None]


def of_model(df: pd.DataFrame, model) -> pd.DataFrame:
    """The rows of ``model`` (all rows for ``None``)."""
    return df if model is None else df[df[MODEL] == model]


def panels(
    n: int, ax, fig: Figure | None, ncols: int, panel_size=(3.2, 2.5), sharey: bool = True
) -> tuple[Figure, np.ndarray]:
    """``n`` axes: the given ones, or a new grid on ``fig`` (or a new figure)."""
    if ax is not None:
        axes = np.atleast_1d(np.asarray(ax, dtype=object)).ravel()
        if len(axes) < n:
            raise SelectionError(f"this figure needs {n} axes, got {len(axes)}")
        return axes[0].figure, axes[:n]
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    if fig is None:
        fig = new_figure((panel_size[0] * ncols, panel_size[1] * nrows))
    grid = fig.subplots(nrows, ncols, squeeze=False, sharey=sharey)
    for extra in grid.ravel()[n:]:
        extra.set_visible(False)
    return fig, grid.ravel()[:n]


def ret(fig: Figure, axes: np.ndarray):
    """``(fig, ax)``: a single axes as itself, several as an array."""
    return fig, (axes[0] if len(axes) == 1 else axes)
