"""Frequency responses of NIFF layers: the radial profile of |W| (low-, band- or high-pass).

For each NIFF layer, |W| of every channel on the centred grid of the size the layer runs at (DC
at (H//2, W//2), as :func:`~niff_analysis.analysis.extract_kernels` returns it), binned by the
radial frequency |f| / f_Nyquist: an offset (dy, dx) from DC is the frequency
(dy / (H/2), dx / (W/2)) in units of the Nyquist frequency, and its radius is rounded to the
grid's own step, 1 / (max(H, W) / 2). Corners reach √2. Per bin: the mean |W| of each channel,
then the mean and quartiles of that over channels.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch

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


def frequency_profile(kernels: Sequence[LayerKernels]) -> pd.DataFrame:
    """Radial profile of |W| per NIFF layer (module docstring); plain convolutions are skipped.

    Returns:
        Columns layer, stage, fmap_h, fmap_w, radius (|f| / f_Nyquist), mean, q25, q75 (over
        channels of the per-channel mean |W| in the bin), n_channels.
    """
    frames = []
    for lk in kernels:
        if lk.response is None:
            continue
        h, w = lk.size
        mag = lk.response.reshape(-1, h * w).abs().double()
        idx, radius = radial_bins(h, w)
        counts = np.bincount(idx, minlength=len(radius))
        sums = torch.zeros(mag.shape[0], len(radius), dtype=torch.float64).index_add_(1, torch.as_tensor(idx), mag)
        per_channel = (sums / torch.as_tensor(counts, dtype=torch.float64)).numpy()
        keep = counts > 0
        q25, q75 = np.quantile(per_channel[:, keep], [0.25, 0.75], axis=0)
        frames.append(pd.DataFrame({
            **layer_columns(lk), "radius": radius[keep], "mean": per_channel[:, keep].mean(0), "q25": q25, "q75": q75,
            "n_channels": per_channel.shape[0]}))
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    return pd.concat(frames, ignore_index=True)[COLUMNS]


def mean_magnitude(lk: LayerKernels) -> np.ndarray:
    """Mean |W| over a NIFF layer's channels on its centred grid (H, W)."""
    h, w = lk.size
    return lk.response.reshape(-1, h, w).abs().mean(0).double().numpy()
