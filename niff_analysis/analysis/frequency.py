"""Frequency responses of NIFF layers: the radial profile of the filter that acts (low-, band- or
high-pass).

**Which response.** A NIFF layer's MLPs give a complex W on the centred frequency grid, but on a
real feature map only its Hermitian part W_h(f) = (W(f) + conj(W(−f)))/2 acts: the anti-Hermitian
rest, A(f) = −conj(A(−f)), maps a real input to a purely imaginary output, which the layer's
inverse FFT discards (SPEC §2). W_h is the DFT of the spatial kernel, k = real(F⁻¹(W)) = F⁻¹(W_h),
so everything here is computed from the kernel: |W_h| = |FFT(k)| (:func:`acting_response`). |W|
of the raw MLP output would count the inert part too (a large share of the raw W's energy in a
trained layer, README), and a constant added to an ``imag`` output bias would move the profile
although the layer's output does not change. The raw W stays available for the
multiplication-weight PCA (:func:`~niff_analysis.analysis.weight_pca`, Appendix B.3), which
analyses it as the authors did.

**Radial profile.** |FFT(k)| of every channel on the centred grid of the size the layer runs at
(DC at (H//2, W//2), as :func:`~niff_analysis.analysis.extract_kernels` returns it), binned by
the radial frequency |f| / f_Nyquist: an offset (dy, dx) from DC is the frequency
(dy / (H/2), dx / (W/2)) in units of the Nyquist frequency, and its radius is rounded to the
grid's own step, 1 / (max(H, W) / 2). Corners reach √2. Per bin: the mean |FFT(k)| of each
channel, then the mean and quartiles of that over channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from ..layers.niff import kernel_to_centred
from .kernels import LayerKernels
from .schema import LAYER_COLUMNS, layer_columns

COLUMNS = LAYER_COLUMNS + ["radius", "mean", "q25", "q75", "n_channels"]


def radial_bins(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(bin index per grid point (h·w,), bin radius in units of f_Nyquist) for an h×w grid."""
    half = max(h, w) / 2
    dy = (np.arange(h) - h // 2) / (h / 2)
    dx = (np.arange(w) - w // 2) / (w / 2)
    r = np.hypot(dy[:, None], dx[None, :]).reshape(-1)
    idx = np.rint(r * half).astype(int)
    return idx, np.arange(idx.max() + 1) / half


def negative_frequency_index(n: int) -> np.ndarray:
    """For each index of a centred axis of n frequencies, the index holding the negated frequency.

    Centred index c holds frequency c − n//2, so −f sits at (2·(n//2) − c) mod n. For even n the
    first index (the Nyquist frequency −n/2) maps to itself: −(−n/2) ≡ −n/2 (mod n).
    """
    return (2 * (n // 2) - np.arange(n)) % n


def hermitian_part(response: torch.Tensor) -> torch.Tensor:
    """W_h(f) = (W(f) + conj(W(−f)))/2 of centred responses (..., H, W), DC at (H//2, W//2).

    This is the part of W that acts on a real input; its inverse DFT is the real spatial kernel.
    """
    h, w = response.shape[-2:]
    rows = torch.as_tensor(negative_frequency_index(h), device=response.device)
    cols = torch.as_tensor(negative_frequency_index(w), device=response.device)
    mirrored = response.index_select(-2, rows).index_select(-1, cols)
    return 0.5 * (response + mirrored.conj())


def acting_response(lk: LayerKernels) -> torch.Tensor:
    """The frequency response that acts, FFT(k) of each spatial kernel on the centred grid
    (complex128, the shape of ``lk.kernels``); equal to the Hermitian part of W (module
    docstring) and defined for plain convolutions too."""
    return kernel_to_centred(lk.kernels.to(torch.float64))


def frequency_profile(kernels: Sequence[LayerKernels]) -> pd.DataFrame:
    """Radial profile of |FFT(k)| per NIFF layer (module docstring); plain convolutions are skipped.

    Returns:
        Columns layer, stage, fmap_h, fmap_w, radius (|f| / f_Nyquist), mean, q25, q75 (over
        channels of the per-channel mean |FFT(k)| in the bin), n_channels.
    """
    frames = []
    for lk in kernels:
        if lk.response is None:
            continue
        h, w = lk.size
        mag = acting_response(lk).reshape(-1, h * w).abs()
        idx, radius = radial_bins(h, w)
        counts = np.bincount(idx, minlength=len(radius))
        sums = torch.zeros(mag.shape[0], len(radius), dtype=torch.float64).index_add_(1, torch.as_tensor(idx), mag)
        per_channel = (sums / torch.as_tensor(counts, dtype=torch.float64)).numpy()
        keep = counts > 0
        q25, q75 = np.quantile(per_channel[:, keep], [0.25, 0.75], axis=0)
        frames.append(
            pd.DataFrame(
                {
                    **layer_columns(lk),
                    "radius": radius[keep],
                    "mean": per_channel[:, keep].mean(0),
                    "q25": q25,
                    "q75": q75,
                    "n_channels": per_channel.shape[0],
                }
            )
        )
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    return pd.concat(frames, ignore_index=True)[COLUMNS]


def mean_magnitude(lk: LayerKernels) -> np.ndarray:
    """Mean |FFT(k)| (the filter that acts) over a layer's channels on its centred grid (H, W)."""
    h, w = lk.size
    return acting_response(lk).reshape(-1, h, w).abs().mean(0).numpy()
