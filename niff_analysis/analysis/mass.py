"""Kernel mass ratio (SPEC §4, Eq. 6) and effective kernel sizes, under two measures.

For an odd window size s the ratio is the mass inside the s×s window centred on the kernel
origin c = (H//2, W//2) over the mass of the whole kernel. The *measure* says what a pixel's
mass is: ``"l1"`` is |k|, Eq. 6 as the paper's code computes it (the default); ``"energy"`` is
k², which counts a faint tail by its square and so weighs a sharp centre more. The two can give
opposite readings of one kernel: a delta-like centre with faint cross-shaped tails has a small
energy footprint and a large L1 one. Every output names the measure it used. Windows run s = 1, 3, 5, …
up to and including the full size; where the largest dimension is even, the last window is the
full kernel and is labelled with that size. On a non-square kernel the window is square and is
clipped to the kernel (so the last window is again the full kernel).

An all-zero kernel has no mass: its ratios (and effective sizes) are NaN, never an error.
Kernels holding NaN or Inf are refused (:class:`~niff_analysis.errors.NiffError`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from .kernels import LayerKernels, require_finite
from .schema import CHANNEL, LAYER, LAYER_COLUMNS, MEASURE, WINDOW, keys, layer_columns
from .uncertainty import add_intervals


def window_sizes(h: int, w: int) -> np.ndarray:
    """The window sizes s of Eq. 6 for an h×w kernel: 1, 3, 5, … and the full size last."""
    rmax = max(h // 2, w // 2, (h - 1) - h // 2, (w - 1) - w // 2)
    sizes = 2 * np.arange(rmax + 1) + 1
    sizes[-1] = min(sizes[-1], max(h, w))
    return sizes


MEASURES = ("l1", "energy")


def check_measure(measure: str) -> str:
    """``measure`` if it is one of :data:`MEASURES`; ValueError otherwise."""
    if measure not in MEASURES:
        raise ValueError(f"unknown measure {measure!r}; choose from {', '.join(MEASURES)}")
    return measure


def mass_ratios(kernels: torch.Tensor, measure: str = "l1") -> tuple[np.ndarray, np.ndarray]:
    """Mass ratio of every kernel at every window.

    Args:
        kernels: (N, H, W) real kernels, centred.
        measure: ``"l1"`` (|k|, Eq. 6) or ``"energy"`` (k²).

    Returns:
        (windows, ratios): the window sizes (R,) and a float64 (N, R) array of ratios.
    """
    n, h, w = kernels.shape
    a = kernels.detach().double().reshape(n, h * w)
    a = a.abs() if check_measure(measure) == "l1" else a.square()
    rows = torch.arange(h).sub(h // 2).abs()
    cols = torch.arange(w).sub(w // 2).abs()
    # Chebyshev distance from the centre: window s holds the pixels with ring <= (s-1)/2.
    ring = torch.maximum(rows[:, None], cols[None, :]).reshape(-1)
    n_rings = int(ring.max()) + 1
    ring_mass = torch.zeros(n, n_rings, dtype=torch.float64).index_add_(1, ring, a)
    cum = ring_mass.cumsum(1)
    # Divide by the last cumulative sum, not a separate total, so the full window is exactly 1
    # (and an all-zero kernel gives 0/0 = NaN).
    ratios = (cum / cum[:, -1:]).numpy()
    return window_sizes(h, w), ratios


def kernel_mass(kernels: Sequence[LayerKernels], measure: str = "l1") -> pd.DataFrame:
    """Long-form mass ratios: one row per (layer, kernel, window).

    Columns: measure, layer, stage, fmap_h, fmap_w, channel, window, mass_ratio. For full NIFF /
    dense conv layers channel = o·Cin + i. ``df.attrs["measure"]`` names the measure too.

    Raises:
        NiffError: a layer's kernels hold NaN or Inf.
    """
    check_measure(measure)
    require_finite(kernels, "the mass ratio")
    frames = []
    for lk in kernels:
        windows, ratios = mass_ratios(lk.flat, measure)
        n, r = ratios.shape
        frames.append(
            pd.DataFrame(
                {
                    MEASURE: measure,
                    **layer_columns(lk),
                    CHANNEL: np.repeat(np.arange(n), r),
                    WINDOW: np.tile(windows, n),
                    "mass_ratio": ratios.reshape(-1),
                }
            )
        )
    out = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=[MEASURE] + LAYER_COLUMNS + [CHANNEL, WINDOW, "mass_ratio"])
    )
    out.attrs["measure"] = measure
    return out


#: Windows every layer of :func:`mass_summary` has a row at, whatever its kernel's size: those of
#: :func:`mass_table` (``mass_w1`` … ``mass_w9``) and of the statistics recorded in training.
REPORTED_WINDOWS = (1, 3, 5, 9)
BEYOND_KERNEL = "beyond_kernel"  #: :func:`mass_summary`'s column marking windows larger than the kernel


def mass_summary(mass_df: pd.DataFrame, resamples: int = 0, windows: Sequence[int] = REPORTED_WINDOWS) -> pd.DataFrame:
    """Per layer and window: mean and std of the mass ratio over kernels, and their count n.

    NaN ratios (all-zero kernels) are left out of mean, std and n. Keeps the leading
    ``checkpoint`` and ``measure`` columns when the input has them.

    Every layer has a row at each of ``windows``, so that e.g. ``query("window == 9")`` gives
    every layer, as the CLI's table does: a window larger than a layer's kernel (9 on a 4×4 or
    8×8 kernel) covers all of it, so its row repeats the whole-kernel row (mean 1, std 0 over
    the kernels with mass) and has ``beyond_kernel`` True. Rows of the windows a kernel has
    (1, 3, 5, … and its full size) have it False.

    Args:
        mass_df: :func:`kernel_mass` output.
        resamples: with a positive count, ``mean_lo`` and ``mean_hi`` give the mean's seeded
            percentile-bootstrap 95 % interval over kernels
            (:func:`~niff_analysis.analysis.uncertainty.bootstrap_interval`; the CLI uses 1,000).
        windows: windows reported for every layer (``()``: only those its kernels have).
    """
    by = keys(mass_df, LAYER_COLUMNS, WINDOW)
    g = mass_df.groupby(by, sort=False, dropna=False)["mass_ratio"]
    out = g.agg(mean="mean", std="std", n="count").reset_index()
    out["n"] = out["n"].astype(int)
    if resamples:
        out = add_intervals(out, mass_df, by, {"mean": ("mass_ratio", "mean")}, resamples)
    out[BEYOND_KERNEL] = False
    layer = [c for c in by if c != WINDOW]
    if not len(out) or not windows:
        return out
    # The last window of a layer is its whole kernel (windows increase within a layer).
    whole = out.groupby(layer, sort=False, dropna=False).tail(1)
    extra = [whole[whole[WINDOW] < w].assign(**{WINDOW: w, BEYOND_KERNEL: True}) for w in sorted(set(windows))]
    extra = [e for e in extra if len(e)]
    if not extra:
        return out
    out = pd.concat([out, *extra], ignore_index=True)
    order = out.groupby(layer, sort=False, dropna=False).ngroup()
    return (
        out.assign(_layer=order)
        .sort_values(["_layer", WINDOW], kind="stable")
        .drop(columns="_layer")
        .reset_index(drop=True)
    )


def effective_sizes(mass_df: pd.DataFrame, quantiles: Sequence[float] = (0.5, 0.9, 0.95)) -> pd.DataFrame:
    """Per kernel, the smallest window holding at least a fraction q of its mass.

    Columns: layer, stage, fmap_h, fmap_w, channel and ``size_<100q>`` per quantile (size_50,
    size_90, size_95 by default); NaN for an all-zero kernel.
    """
    for q in quantiles:
        if not 0 < q <= 1:
            raise ValueError(f"quantiles must lie in (0, 1], got {q}")
    by = keys(mass_df, LAYER_COLUMNS, CHANNEL)
    g = mass_df.groupby(by, sort=False, dropna=False)
    out = g.size().reset_index()[by]
    ratio = mass_df["mass_ratio"].to_numpy()
    window = mass_df["window"].to_numpy().astype(float)
    group_id = g.ngroup().to_numpy()
    for q in quantiles:
        # Windows are increasing within a kernel; the first window reaching q is the minimum
        # window among those reaching it. Tiny slack absorbs float rounding of q·total.
        cand = np.where(ratio >= q - 1e-12, window, np.inf)
        best = np.full(len(out), np.inf)
        np.minimum.at(best, group_id, cand)
        best[np.isinf(best)] = np.nan
        out[f"size_{100 * q:g}"] = best
    return out


def mass_table(mass_df: pd.DataFrame, resamples: int = 0) -> pd.DataFrame:
    """Per layer (and checkpoint, measure): the count of kernels with mass (``kernels``), the
    mean mass ratio at windows 1, 3, 5, 9 (``mass_w1`` … ``mass_w9``; a window larger than the
    kernel covers all of it, so a layer smaller than S×S gives its full-size value, 1.0) and the
    mean 50/90/95 % sizes; with ``resamples`` > 0 each mean has its bootstrap 95 % interval over
    kernels in ``<column>_lo`` / ``_hi`` (:func:`mass_summary`)."""
    by = keys(mass_df, LAYER_COLUMNS)
    summ = mass_summary(mass_df, resamples)
    table = summ.groupby(by, sort=False, dropna=False)["n"].max().rename("kernels").reset_index()
    bounds = ["mean_lo", "mean_hi"] if resamples else []
    for w in (1, 3, 5, 9):
        at = summ[summ[WINDOW] <= w].groupby(by, sort=False, dropna=False).tail(1)
        names = {"mean": f"mass_w{w}", "mean_lo": f"mass_w{w}_lo", "mean_hi": f"mass_w{w}_hi"}
        table = table.merge(at[by + ["mean"] + bounds].rename(columns=names), on=by, how="left")
    per_kernel = effective_sizes(mass_df)
    sizes = per_kernel.groupby(by, sort=False, dropna=False)[["size_50", "size_90", "size_95"]].mean().reset_index()
    if resamples:
        sizes = add_intervals(
            sizes, per_kernel, by, {f"size_{q}": (f"size_{q}", "mean") for q in (50, 90, 95)}, resamples
        )
    return table.merge(sizes, on=by, how="left").round(3)


def massless_kernels(mass_df: pd.DataFrame) -> pd.DataFrame:
    """Per layer with all-zero kernels (mass ratios NaN: Eq. 6 is 0/0): ``layer``, the count
    ``massless`` and the layer's ``kernels``. Empty when every kernel has mass."""
    by = keys(mass_df, LAYER)
    kernels = mass_df.drop_duplicates(by + [CHANNEL])
    zero = kernels[kernels["mass_ratio"].isna()]
    out = zero.groupby(by, sort=False).size().rename("massless").reset_index()
    total = kernels.groupby(by, sort=False).size().rename("kernels").reset_index()
    return out.merge(total, on=by, how="left")


def massless_warning(mass_df: pd.DataFrame) -> str | None:
    """The warning for layers with all-zero kernels (their ratios and sizes are NaN), or None."""
    zero = massless_kernels(mass_df)
    if zero.empty:
        return None
    where = ", ".join(f"{r.layer} ({r.massless} of {r.kernels})" for r in zero.itertuples())
    return f"{int(zero.massless.sum())} all-zero kernel(s) have no mass; their mass ratios and sizes are NaN: {where}"
