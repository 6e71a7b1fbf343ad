"""Figures of the paper (SPEC §5) drawn from the analysis tables.

One function per figure kind; each takes the DataFrames/arrays that :mod:`niff_analysis.analysis`
returns (never recomputing them), draws into an optional ``ax``/``fig`` and returns
``(fig, ax)``. All share one style (:func:`style`, a ``matplotlib.rc_context``), one colour per
stage (Okabe–Ito), a diverging colormap centred at 0 for signed images and a sequential one for
magnitudes. :mod:`.report` draws and writes the whole set from :func:`niff_analysis.pipeline.analyse`'s
tables, for ``niff-analyze figures`` and the notebooks.
"""

from .curves import plot_cost, plot_effective_size, plot_mass_ratio, plot_sigma
from .images import (
    centre_crop,
    plot_eigenkernels,
    plot_erf,
    plot_frequency,
    plot_kernel_magnitude,
    plot_raw_kernels,
    plot_weight_pca,
    sample_channels,
)
from .report import iter_figures, write_figures
from .style import CMAP_MAGNITUDE, CMAP_SIGNED, OKABE_ITO, layer_colors, save_figure, signed_norm, stage_color, style
from .training import plot_decay_response, plot_kernel_history, plot_study, plot_sweep

__all__ = [
    "CMAP_MAGNITUDE",
    "CMAP_SIGNED",
    "OKABE_ITO",
    "centre_crop",
    "iter_figures",
    "layer_colors",
    "plot_cost",
    "plot_effective_size",
    "plot_eigenkernels",
    "plot_erf",
    "plot_frequency",
    "plot_kernel_history",
    "plot_kernel_magnitude",
    "plot_mass_ratio",
    "plot_raw_kernels",
    "plot_sigma",
    "plot_decay_response",
    "plot_study",
    "plot_sweep",
    "plot_weight_pca",
    "sample_channels",
    "save_figure",
    "signed_norm",
    "stage_color",
    "style",
    "write_figures",
]
