"""Figures of the paper (SPEC §5) drawn from the analysis tables.

One function per figure kind; each takes the DataFrames/arrays that :mod:`niff_analysis.analysis`
returns (never recomputing them), draws into an optional ``ax``/``fig`` and returns
``(fig, ax)``. All share one style (:func:`style`, a ``matplotlib.rc_context``), one colour per
stage (Okabe–Ito), a diverging colormap centred at 0 for signed images and a sequential one for
magnitudes. :mod:`.report` builds the whole set for ``niff-analyze figures`` and the notebooks.
"""

from .curves import (plot_cost, plot_effective_size, plot_kernel_history, plot_mass_ratio, plot_sigma,
                     plot_sweep)
from .images import (centre_crop, plot_eigenkernels, plot_erf, plot_frequency, plot_kernel_magnitude,
                     plot_raw_kernels, plot_weight_pca, sample_channels)
from ..checkpoint import checkpoint_label
from .report import FigureData, analyse, iter_figures, subsample, write_figures
from .style import (CMAP_MAGNITUDE, CMAP_SIGNED, OKABE_ITO, layer_colors, save_figure, signed_norm,
                    stage_color, style)

__all__ = ["CMAP_MAGNITUDE", "CMAP_SIGNED", "FigureData", "OKABE_ITO", "analyse", "centre_crop",
           "checkpoint_label", "iter_figures", "layer_colors", "plot_cost", "plot_effective_size",
           "plot_eigenkernels", "plot_erf", "plot_frequency", "plot_kernel_history", "plot_kernel_magnitude", "plot_mass_ratio", "plot_raw_kernels",
           "plot_sigma", "plot_sweep", "plot_weight_pca", "sample_channels", "save_figure", "signed_norm",
           "stage_color", "style", "subsample", "write_figures"]
