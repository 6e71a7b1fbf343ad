"""How well the two σ of :mod:`.gaussian` recover known Gaussians: the moment σ and the
Levenberg–Marquardt fit, on synthetic kernels with sub-pixel offsets and additive noise.

Each synthetic kernel is an isotropic Gaussian of peak 1 and width σ sampled at the pixel
centres of a ``size``×``size`` grid, centred ``offset`` px to the right of and below the kernel
origin (the same offset on both axes: 0.5 px puts the peak on a pixel corner), plus i.i.d.
normal noise of standard deviation ``noise`` (a fraction of the peak) on every pixel; the
estimators see |k|, as they do on learned kernels. Each cell of the grid (σ, offset, noise)
draws ``repeats`` noisy kernels (one when noise is 0: nothing is random then) from a seeded
generator, and every kernel gives two estimates, σx and σy, of the same σ.

:func:`sigma_errors` returns, per cell and method (``moment``: ``sigma_x_moment`` and
``sigma_y_moment``; ``fit``: ``sigma_x`` and ``sigma_y`` of the successful fits; ``start``: the
fit's start, the moments of max(|k| − b₀, 0)² times two, which was the toolkit's moment σ before
the deweighted adaptive moments replaced it), the median of
the relative error σ̂/σ − 1, the 90th percentile of its absolute value, and the share of
estimates that exist (moment: not NaN; fit: ``success``). :func:`error_table` lays it out for
the docs (docs/gaussian_validation.md; ``python -m benchmarks sigma_accuracy``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

SIGMAS = (0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)
OFFSETS = (0.0, 0.25, 0.4, 0.5)
NOISES = (0.0, 0.01, 0.02, 0.05)
METHODS = {
    "moment": ("sigma_x_moment", "sigma_y_moment"),
    "fit": ("sigma_x", "sigma_y"),
    "start": ("sigma_x_start", "sigma_y_start"),
}


def synthetic_gaussians(
    sigma: float, offset: float, noise: float, n: int, size: int = 32, seed: int = 0
) -> torch.Tensor:
    """``n`` noisy sampled Gaussians (module docstring) as a float64 (n, size, size) stack."""
    coords = torch.arange(size, dtype=torch.float64) - size // 2 - offset
    g = torch.exp(-0.5 * (coords[:, None] ** 2 + coords[None, :] ** 2) / sigma**2)
    gen = torch.Generator().manual_seed(seed)
    return g.expand(n, size, size) + noise * torch.randn(n, size, size, generator=gen, dtype=torch.float64)


def sigma_errors(
    sigmas: Sequence[float] = SIGMAS,
    offsets: Sequence[float] = OFFSETS,
    noises: Sequence[float] = NOISES,
    repeats: int = 20,
    size: int = 32,
    seed: int = 0,
) -> pd.DataFrame:
    """Errors of the moment σ and the fitted σ on the synthetic grid (module docstring).

    Returns:
        One row per (sigma, offset, noise, method): n (estimates), median_error,
        p90_abs_error (relative, not %), share_ok.
    """
    from .gauss2d import pixel_coords, start_moments
    from .gaussian import fit_gaussians

    cells, stacks = [], []
    for i, (s, o, z) in enumerate((s, o, z) for z in noises for s in sigmas for o in offsets):
        k = 1 if z == 0 else repeats
        cells.append((s, o, z, k))
        stacks.append(synthetic_gaussians(s, o, z, k, size=size, seed=seed + i))
    kernels = torch.cat(stacks)
    fits = fit_gaussians(kernels)
    mag = kernels.abs().reshape(len(kernels), -1)
    *_, cxx, cyy, _ = start_moments(mag / mag.max(1, keepdim=True).values, *pixel_coords(size, size))
    fits["sigma_x_start"], fits["sigma_y_start"] = cxx.sqrt().numpy(), cyy.sqrt().numpy()
    rows, start = [], 0
    for s, o, z, k in cells:
        part = fits.iloc[start : start + k]
        start += k
        for method, cols in METHODS.items():
            ok = part["success"].to_numpy(bool) if method == "fit" else np.ones(k, bool)
            est = np.concatenate([part[c].to_numpy(float)[ok] for c in cols])
            est = est[np.isfinite(est)]
            err = est / s - 1
            rows.append(
                dict(
                    sigma=s,
                    offset=o,
                    noise=z,
                    method=method,
                    n=2 * k,
                    median_error=float(np.median(err)) if len(err) else np.nan,
                    p90_abs_error=float(np.quantile(np.abs(err), 0.9)) if len(err) else np.nan,
                    share_ok=len(est) / (2 * k),
                )
            )
    return pd.DataFrame(rows)


def error_table(errors: pd.DataFrame, method: str) -> str:
    """A Markdown table of one method's errors: a row per (noise, σ), a column per offset, each
    cell "median % (90th percentile of |error| %)", with the share of estimates that exist where
    it is below 100 %."""
    d = errors[errors["method"] == method]
    offsets = sorted(d["offset"].unique())
    head = "| noise | σ (px) | " + " | ".join(f"offset {o:g} px" for o in offsets) + " |"
    lines = [head, "|" + " --- |" * (2 + len(offsets))]
    for (z, s), g in d.groupby(["noise", "sigma"], sort=True):
        cells = []
        for o in offsets:
            r = g[g["offset"] == o].iloc[0]
            if not np.isfinite(r.median_error):
                cells.append("— (0 % ok)")
                continue
            cell = f"{100 * r.median_error:+.1f} ({100 * r.p90_abs_error:.1f})"
            if r.share_ok < 1:
                cell += f", {100 * r.share_ok:.0f} % ok"
            cells.append(cell)
        lines.append(f"| {100 * z:g} % | {s:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
