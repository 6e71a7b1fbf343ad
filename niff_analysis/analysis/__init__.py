"""The analysis engine (SPEC §4): spatial kernels, kernel mass ratio, PCA eigenkernels,
2-D Gaussian fits and multiplication-weight PCA. Every analysis is a plain function returning a
tidy pandas DataFrame (identifier columns first), shared by notebooks, the CLI and the figures.
"""

from .claims import paper_claims
from .erf import effective_receptive_fields, erf_area_ratios
from .frequency import frequency_profile
from .gauss2d import gaussian_model
from .gaussian import gaussian_fit, gaussian_summary
from .kernels import LayerKernels, conv_inventory, extract_kernels, kernel_table, sample_channels, stage_of, subsample
from .mass import effective_sizes, kernel_mass, mass_ratios, mass_summary, mass_table, massless_kernels, window_sizes
from .pca import PCAResult, capped_layers, pca_eigenkernels, pca_summary, weight_pca
from .stats import kernel_stats, read_kernel_stats

__all__ = [
    "LayerKernels",
    "PCAResult",
    "capped_layers",
    "effective_receptive_fields",
    "effective_sizes",
    "erf_area_ratios",
    "extract_kernels",
    "frequency_profile",
    "gaussian_fit",
    "gaussian_model",
    "gaussian_summary",
    "kernel_mass",
    "kernel_stats",
    "kernel_table",
    "mass_ratios",
    "mass_summary",
    "mass_table",
    "massless_kernels",
    "paper_claims",
    "pca_eigenkernels",
    "pca_summary",
    "read_kernel_stats",
    "conv_inventory",
    "sample_channels",
    "stage_of",
    "subsample",
    "weight_pca",
    "window_sizes",
]
