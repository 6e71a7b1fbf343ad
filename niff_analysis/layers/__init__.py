"""Reusable NIFF building blocks. No model knowledge lives here."""

from .mlp import MLP_PRESETS, MLPConfig, build_mlp, resolve_mlp
from .niff import (
    CONV_MODES,
    DepthwiseNIFF,
    FreqPointwise,
    FullNIFF,
    NIFFLayer,
    SplitNIFF,
    centred_frequencies,
    centred_to_kernel,
    frequency_grid,
    hermitian_half,
    kernel_to_centred,
)

__all__ = [
    "CONV_MODES",
    "DepthwiseNIFF",
    "FreqPointwise",
    "FullNIFF",
    "MLPConfig",
    "MLP_PRESETS",
    "NIFFLayer",
    "SplitNIFF",
    "build_mlp",
    "centred_frequencies",
    "centred_to_kernel",
    "frequency_grid",
    "hermitian_half",
    "kernel_to_centred",
    "resolve_mlp",
]
