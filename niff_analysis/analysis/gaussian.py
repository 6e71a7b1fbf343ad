"""2-D Gaussian fits to kernel magnitudes (SPEC §4, paper Appendix A).

The paper gives no protocol; this module defines one.

**What is fitted.** The magnitude |k| of each centred spatial kernel, on pixel coordinates
relative to the kernel origin: x = column − W//2 (right positive), y = row − H//2 (down
positive), sampled at pixel centres. Plain least squares over all pixels.

**Model function** (:func:`.gauss2d.gaussian_model`, 7 parameters)::

    f(x, y) = A · exp(−½ · Q) + b,   Q = (l11·dx + l21·dy)² + (l22·dy)²,
    dx = x − x0, dy = y − y0,  l11 = exp(u), l22 = exp(v)

i.e. a rotated Gaussian whose precision matrix P = L·Lᵀ is parameterised by its Cholesky factor
L = [[l11, 0], [l21, l22]]; every parameter value is a valid Gaussian and an isotropic one is not a
singular point (as the orientation angle would be). Reported from the covariance Σ = P⁻¹:
``sigma_x`` = √Σxx and ``sigma_y`` = √Σyy (the standard deviations along the image axes, equal to
the axis-aligned σ for an unrotated Gaussian), ``sigma_major`` ≥ ``sigma_minor`` (square roots of
Σ's eigenvalues), ``theta`` the angle of the major axis from +x towards +y (down), in (−π/2, π/2],
``x0``, ``y0`` (pixels from the origin), ``amplitude`` A and ``offset`` b in the kernel's units,
and ``r2`` = 1 − SS_res/SS_tot.

**Initialisation** from weighted moments: the background b₀ is the median of |k|, the weights are
w = max(|k| − b₀, 0)² (squared so that a long, low tail of a learned kernel does not swamp the
peak), the centre is the w-weighted mean position and the covariance twice the w-weighted
covariance (for an exact Gaussian, squaring halves the covariance) plus 1/12 px² (one pixel's
variance); A₀ = max|k| − b₀.

**Solver.** Levenberg–Marquardt with Marquardt's diagonal scaling and Nielsen's gain-ratio
update of λ (float64), with the analytic Jacobian; each kernel is scaled by its
maximum |k| first. A step is accepted if it lowers the cost. With MINPACK's default tolerances
(``ftol`` = ``xtol`` = 1.5e-8, those of ``scipy.optimize.curve_fit``) a fit has converged when an
accepted step lowers the cost by less than ``ftol`` relative or changes the parameters by less
than ``xtol`` relative, when the RMS residual falls below 1e-8 of the peak, or when λ exceeds
1e10 (no step lowers the cost any more). The solver gives up early on a fit that has left the
meaningful regime: σ_minor below
0.1 px, or below 0.3 px for 20 iterations in a row (a peak squeezing between the samples while
its amplitude grows without bound); σ_major above 20 kernel sizes, or above 3 for 20 iterations
(amplitude and offset cancelling into a slope); or a centre more than a kernel size off the
grid. Such fits are then judged by the failure rules below. The iteration runs compiled
(numba, :mod:`.lm`), one fit at a time in each of one thread per core, always on the CPU (the
kernels are CPU tensors wherever the model ran); its settings and the give-up rule's thresholds
are in :mod:`.gauss2d`. The tests keep the batched torch iteration it was written from as a
reference (``tests/lm_reference.py``) and check that the two agree fit by fit up to rounding.

**Failure** is data (``success`` False, a reason in ``status``), never an exception:
``"zero kernel"``, ``"non-finite kernel"``, ``"constant kernel"`` and ``"too few pixels"`` (fewer
than 7) are not fitted (sigmas NaN; a constant kernel reports amplitude 0 and its value as
offset). A fit fails as ``"not converged"`` (``max_iter`` reached), ``"non-finite"``,
``"no peak"`` (A ≤ 0), ``"centre outside"`` (x0, y0 off the kernel grid), ``"too wide"``
(σ_major larger than the kernel's largest side: the Gaussian fits a slope, not a blob) or
``"undersampled"`` (σ_minor < 0.4 px: the nearest pixels hold less than 5 % of the peak, so σ
trades off against the amplitude and is not determined by the samples; different solvers stop at
different points of that flat valley). :func:`fit_status` applies these rules to any parameters,
e.g. those ``scipy.optimize.curve_fit`` finds. Failed fits keep their fitted values; summaries
use successful fits only.

**Moment σ and censoring.** Next to the fit, every kernel with mass gets ``sigma_x_moment`` and
``sigma_y_moment``, the widths of its peak by deweighted adaptive moments (Bernstein & Jarvis
2002, "Shapes and shears, stars and smears", §3): the weighted second moments of |k| − b₀ (b₀ the
median of |k|, the lower middle value for an even count) under an elliptical Gaussian window
centred on the peak, whose covariance M is
the current estimate plus 1 px² (:data:`.gauss2d.MOMENT_WINDOW_FLOOR`). A Gaussian of covariance Σ seen
through that window has covariance C = (Σ⁻¹ + M⁻¹)⁻¹, so each step sets Σ = (C⁻¹ − M⁻¹)⁻¹ and
the centre likewise, starting at the brightest pixel with Σ = 1 px², until Σ changes by less
than 0.1 % and the centre by less than 0.01 px (at most 40 steps, half steps after 15): on a
sampled Gaussian it settles on the Gaussian's own Σ, whatever the window. The window keeps a
noise floor and a kernel's far tails (a NIFF kernel's arms) out of the estimate, which the
earlier moments of max(|k| − b₀, 0)² over the whole kernel (still the fit's start) did not: with
noise at 2 % of the peak those read 171–181 % high for σ = 1 px. Measured errors on
synthetic Gaussians (σ 0.3–4 px, offsets 0–0.5 px, noise 0–5 % of the peak;
docs/gaussian_validation.md, :mod:`.sigma_validation`): within 1.3 % without noise for σ ≥ 0.75 px
at any offset; median errors between −5 % and −1 % (90 % of estimates within 7 %) with noise up to
2 %, and between −9 % and −3 % (within 15 %) at 5 %, for σ ≥ 0.75 px; noise on |k| makes every σ
read a few % low, the fit's too. Below 0.75 px the samples cannot pin a peak down by moments: a
0.5 px Gaussian reads from −22 % to +26 % with the offset, a 0.3 px one anywhere from −77 % to
+210 %, so a moment σ under about 0.75 px says "sharper than about a pixel" and no more (the
fit, which knows the shape, recovers 0.5 px within 10 % where it succeeds, but under noise it
fails on most such kernels). The moment σ is NaN where no window holds mass above the
background or the steps do not settle: on the bundled baseline for 1 % of the kernels of its
4×4 layers, whose 3×3 taps fill the grid and have no peak (README). A kernel whose fit is
``"undersampled"`` is reported as ``censored`` (σ < 0.4 px: sharper
than the samples resolve), not left out: :func:`gaussian_summary` counts it (``n_censored``) next
to ``n_ok`` and ``n``, and gives the median and quartiles of the successful fits with the mean and
std.

**Validation** (tests/test_analysis_gaussian.py): synthetic Gaussians with known σx ≠ σy, rotation,
offset and off-centre peaks are recovered; on learned kernels of the bundled checkpoint and on
noisy synthetic ones, σx and σy agree within 2 % with ``curve_fit`` on the same model function
from the same start wherever both fits succeed.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from . import gauss2d
from .gauss2d import (
    MAX_ITER,
    MIN_SIGMA,
    MOMENT_CENTRE_TOL,
    MOMENT_DAMP_AFTER,
    MOMENT_MAX_ITER,
    MOMENT_TOL,
    MOMENT_WINDOW_FLOOR,
    N_PARAMS,
    derived,
    model_values,
    moment_init,
    pixel_coords,
)
from .kernels import LayerKernels
from .schema import CHANNEL, LAYER_COLUMNS, keys, layer_columns
from .uncertainty import add_intervals

# What a fit gives per kernel (NaN where it fails), then the moment sigmas, which never fail.
FIT_FIELDS = ["sigma_x", "sigma_y", "sigma_major", "sigma_minor", "theta", "x0", "y0", "amplitude", "offset", "r2"]
MOMENT_FIELDS = ["sigma_x_moment", "sigma_y_moment"]
COLUMNS = LAYER_COLUMNS + [
    CHANNEL,
    *FIT_FIELDS,
    "success",
    "status",
    "sigma_ratio",
    "iterations",
    *MOMENT_FIELDS,
    "censored",
]


def fit_status(params, h: int, w: int, converged=None) -> np.ndarray:
    """Judge fitted parameters (B, 7) of h×w kernels: "ok" or the failure reason (docstring)."""
    p = torch.as_tensor(params, dtype=torch.float64).reshape(-1, N_PARAMS).cpu()
    d = {k: v.numpy() for k, v in derived(p).items()}
    x0, y0, amp = p[:, 1].numpy(), p[:, 2].numpy(), p[:, 0].numpy()
    st = np.array(["ok"] * len(p), dtype=object)
    with np.errstate(invalid="ignore"):
        # From the least to the most fundamental problem, so the last one wins.
        st[d["sigma_minor"] < MIN_SIGMA] = "undersampled"
        st[d["sigma_major"] > max(h, w)] = "too wide"
        outside = (
            (x0 < -(w // 2) - 0.5)
            | (x0 > (w - 1 - w // 2) + 0.5)
            | (y0 < -(h // 2) - 0.5)
            | (y0 > (h - 1 - h // 2) + 0.5)
        )
        st[outside] = "centre outside"
        st[amp <= 0] = "no peak"
    if converged is not None:
        st[~torch.as_tensor(converged).cpu().numpy()] = "not converged"
    st[~(np.isfinite(p.numpy()).all(1) & np.isfinite(d["sigma_major"]))] = "non-finite"
    return st


def _solve(
    data: torch.Tensor, h: int, w: int, max_iter: int = MAX_ITER, threads: int = 1, on_done=None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit h×w kernels' peak-scaled magnitudes ``data`` (B, h·w) from their moment start with the
    compiled solver (:func:`.lm.levenberg_marquardt`, float64 on the CPU) and the give-up rule
    as :mod:`.gauss2d` holds it at the call: (params (B, 7), stopped (B,), iterations (B,))."""
    from .lm import levenberg_marquardt

    x, y = pixel_coords(h, w, dtype=torch.float64)
    data = data.to(torch.float64)
    rules, patience = gauss2d.give_up_rule()
    return levenberg_marquardt(
        data.numpy(),
        x.numpy(),
        y.numpy(),
        moment_init(data, x, y).numpy(),
        h,
        w,
        max_iter=max_iter,
        give_up=rules,
        patience=patience,
        threads=threads,
        on_done=on_done,
    )


def adaptive_moments(
    mag: torch.Tensor, x: torch.Tensor, y: torch.Tensor, threads: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Deweighted adaptive second moments of the peak of each row of magnitudes ``mag`` (B, N)
    on pixel coordinates ``x``, ``y`` (N,): the moment σ of the module docstring (compiled,
    :func:`.lm.deweighted_moments`; settings in :mod:`.gauss2d`).

    Returns:
        (covariance (B, 3): Σxx, Σyy, Σxy; centre (B, 2): x0, y0; settled (B,) bool;
        iterations (B,) int). NaN where a window holds no mass above the background; rows that
        did not settle within the iterations keep their last values.
    """
    from .lm import deweighted_moments

    mag = mag.to(torch.float64)
    d = mag - mag.median(dim=1, keepdim=True).values  # above the background b₀
    peak = mag.argmax(dim=1)
    start = torch.stack([x.to(torch.float64)[peak], y.to(torch.float64)[peak]], dim=1)
    out, settled, iters = deweighted_moments(
        d.numpy(),
        x.numpy(),
        y.numpy(),
        start.numpy(),
        MOMENT_WINDOW_FLOOR,
        MOMENT_MAX_ITER,
        MOMENT_TOL,
        MOMENT_CENTRE_TOL,
        MOMENT_DAMP_AFTER,
        threads,
    )
    return out[:, :3], out[:, 3:], settled, iters


def fit_gaussians(
    kernels: torch.Tensor, max_iter: int = MAX_ITER, chunk_pixels: int = 1 << 20, bar=None
) -> pd.DataFrame:
    """Fit every kernel of a (N, H, W) stack, on the CPU; one row per kernel (without layer
    columns)."""
    n, h, w = kernels.shape
    mag_all = kernels.detach().cpu().abs().to(torch.float64).reshape(n, h * w)
    res = {c: np.full(n, np.nan) for c in FIT_FIELDS + MOMENT_FIELDS}
    status = np.array(["ok"] * n, dtype=object)
    iters = np.zeros(n, dtype=int)
    finite = torch.isfinite(mag_all).all(1)
    peak = torch.where(finite, mag_all.max(1).values, torch.zeros(n, dtype=torch.float64))
    low = torch.where(finite, mag_all.min(1).values, torch.zeros(n, dtype=torch.float64))
    status[(~finite).numpy()] = "non-finite kernel"
    # Moment sigmas of every finite, non-zero kernel: they never fail (no solver), so a summary
    # can cover the sharpest kernels that the least-squares fit calls undersampled.
    has_mass = (finite & (peak > 0)).numpy()
    x_all, y_all = pixel_coords(h, w, dtype=torch.float64)
    for start in range(0, n, max(1, chunk_pixels // (h * w))):
        idx = np.arange(start, min(n, start + max(1, chunk_pixels // (h * w))))
        idx = idx[has_mass[idx]]
        if len(idx):
            cov, _, settled, _ = adaptive_moments(
                mag_all[idx] / peak[idx, None], x_all, y_all, threads=torch.get_num_threads()
            )
            res["sigma_x_moment"][idx] = np.where(settled, np.sqrt(cov[:, 0]), np.nan)
            res["sigma_y_moment"][idx] = np.where(settled, np.sqrt(cov[:, 1]), np.nan)
    status[(finite & (peak == 0)).numpy()] = "zero kernel"
    const = finite & (peak > 0) & (peak - low <= 1e-12 * peak)
    status[const.numpy()] = "constant kernel"
    res["amplitude"][const.numpy()] = 0.0
    res["offset"][const.numpy()] = peak[const].numpy()
    if h * w < N_PARAMS:
        status[status == "ok"] = "too few pixels"
    todo = np.flatnonzero(status == "ok")
    step = max(1, chunk_pixels // (h * w))

    def keep(idx: np.ndarray, data: torch.Tensor, p, conv, it) -> None:
        """Write the fits of kernels ``idx`` (their scaled magnitudes ``data``; params, stopped,
        iterations) into the results."""
        p, conv, it = (torch.as_tensor(v) for v in (p, conv, it))
        scale = peak[idx].to(p)[:, None]
        x, y = pixel_coords(h, w, dtype=p.dtype)
        f = model_values(p, x, y)
        ss_res = ((f - data) ** 2).sum(1)
        ss_tot = ((data - data.mean(1, keepdim=True)) ** 2).sum(1)
        vals = dict(
            derived(p),
            x0=p[:, 1],
            y0=p[:, 2],
            amplitude=p[:, 0] * scale[:, 0],
            offset=p[:, 6] * scale[:, 0],
            r2=1 - ss_res / ss_tot,
        )
        for k, v in vals.items():
            res[k][idx] = v.double().numpy()
        iters[idx] = it.numpy()
        status[idx] = fit_status(p, h, w, conv)

    on_done = None if bar is None else bar.update
    for start in range(0, len(todo), step):
        idx = todo[start : start + step]
        data = mag_all[idx] / peak[idx, None]
        keep(idx, data, *_solve(data, h, w, max_iter, torch.get_num_threads(), on_done))
    out = pd.DataFrame(res)
    out["success"] = status == "ok"
    out["status"] = status
    out["censored"] = status == "undersampled"
    with np.errstate(invalid="ignore", divide="ignore"):
        out["sigma_ratio"] = out["sigma_x"] / out["sigma_y"]
    out["iterations"] = iters
    return out


def gaussian_fit(
    kernels: Sequence[LayerKernels], device: object = None, max_iter: int = MAX_ITER, progress: bool = False
) -> pd.DataFrame:
    """Fit a 2-D Gaussian to |k| of every kernel of every layer (protocol: module docstring).

    The fits always run compiled on the CPU, on every core (torch's thread count).

    Args:
        kernels: layers from :func:`extract_kernels`.
        device: deprecated and ignored: the fits run on the CPU whatever it says (the kernels
            are CPU tensors wherever the model ran; the device a model runs on is chosen where
            the kernels are extracted). Accepted so that callers passing their device keep
            working.
        max_iter: Levenberg–Marquardt iterations at most.
        progress: show a progress bar (stderr) over the kernels being fitted.

    Returns:
        One row per kernel: layer, stage, fmap_h, fmap_w, channel, sigma_x, sigma_y,
        sigma_major, sigma_minor, theta, x0, y0, amplitude, offset, r2, success, status,
        sigma_ratio (σx/σy), iterations. Full/dense layers: channel = o·Cin + i.
    """
    kernels = list(kernels)
    fits: dict[int, pd.DataFrame] = {}
    # Layers with the same kernel size are fitted as one batch: fewer, larger solver runs.
    by_size: dict[tuple, list[int]] = {}
    for i, lk in enumerate(kernels):
        by_size.setdefault(lk.size, []).append(i)
    from tqdm.auto import tqdm

    bar = tqdm(
        total=sum(lk.flat.shape[0] for lk in kernels),
        desc="Gaussian fits",
        unit="kernel",
        file=sys.stderr,
        disable=not progress,
        leave=False,
    )
    for idx in by_size.values():
        stacked = torch.cat([kernels[i].flat for i in idx])
        df = fit_gaussians(stacked, max_iter=max_iter, bar=bar)
        start = 0
        for i in idx:
            n = kernels[i].flat.shape[0]
            fits[i] = df.iloc[start : start + n].reset_index(drop=True)
            start += n
    bar.close()
    frames = []
    for i, lk in enumerate(kernels):
        df = fits[i]
        df.insert(0, CHANNEL, np.arange(len(df)))
        for j, (col, val) in enumerate(layer_columns(lk).items()):
            df.insert(j, col, val)
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    return pd.concat(frames, ignore_index=True)[COLUMNS]


#: Statistics of :func:`gaussian_summary` that get a bootstrap interval: name → (column, statistic).
SUMMARY_INTERVALS = {
    "sigma_x_mean": ("sigma_x", "mean"),
    "sigma_y_mean": ("sigma_y", "mean"),
    "sigma_ratio_mean": ("sigma_ratio", "mean"),
    "sigma_ratio_median": ("sigma_ratio", "median"),
    "sigma_ratio_gmean": ("sigma_ratio", "gmean"),
    "sigma_x_median": ("sigma_x", "median"),
    "sigma_y_median": ("sigma_y", "median"),
    "r2_median": ("r2", "median"),
}


def gaussian_summary(gauss_df: pd.DataFrame, resamples: int = 0) -> pd.DataFrame:
    """Per layer: over successful fits the mean/std, median and quartiles of σx, σy and the
    mean/std, median and geometric mean of σx/σy, their count n_ok; the count of censored kernels
    (fits undersampled: σ below 0.4 px, sharper than the samples resolve) n_censored; the median
    moment σx, σy over every kernel that has one (below :data:`.gauss2d.MOMENT_RESOLVED` px it only says
    "sharper than about a pixel"); and the count n of kernels. Keeps a leading ``checkpoint``
    column when the input has one.

    The mean of per-kernel ratios σx/σy is the paper's statistic (App. A); it is pulled away
    from 1 by a few large ratios whichever way round the ratio is taken (the mean of σy/σx is
    above 1 as well), so the median and the geometric mean (exp of the mean log ratio:
    symmetric, 1/r for the inverted ratio) stand beside it.

    Args:
        gauss_df: :func:`gaussian_fit` output.
        resamples: with a positive count, every statistic of :data:`SUMMARY_INTERVALS` (and the
            moment medians) gets ``<name>_lo``/``_hi``: its seeded percentile-bootstrap 95 %
            interval over the layer's kernels
            (:func:`~niff_analysis.analysis.uncertainty.bootstrap_interval`).
    """
    by = keys(gauss_df, LAYER_COLUMNS)
    ok = gauss_df[gauss_df["success"].astype(bool)]
    ok = ok.assign(log_ratio=np.log(ok["sigma_ratio"].astype(float).where(ok["sigma_ratio"] > 0)))
    g = ok.groupby(by, sort=False, dropna=False)
    out = g.agg(
        sigma_x_mean=("sigma_x", "mean"),
        sigma_x_std=("sigma_x", "std"),
        sigma_y_mean=("sigma_y", "mean"),
        sigma_y_std=("sigma_y", "std"),
        sigma_ratio_mean=("sigma_ratio", "mean"),
        sigma_ratio_std=("sigma_ratio", "std"),
        sigma_ratio_median=("sigma_ratio", "median"),
        sigma_ratio_gmean=("log_ratio", "mean"),
        sigma_x_median=("sigma_x", "median"),
        sigma_x_q25=("sigma_x", lambda v: v.quantile(0.25)),
        sigma_x_q75=("sigma_x", lambda v: v.quantile(0.75)),
        sigma_y_median=("sigma_y", "median"),
        sigma_y_q25=("sigma_y", lambda v: v.quantile(0.25)),
        sigma_y_q75=("sigma_y", lambda v: v.quantile(0.75)),
        r2_median=("r2", "median"),
        n_ok=("success", "size"),
    ).reset_index()
    out["sigma_ratio_gmean"] = np.exp(out["sigma_ratio_gmean"])
    all_g = gauss_df.groupby(by, sort=False, dropna=False)
    n = all_g.size().rename("n").reset_index()
    extra = []
    if "censored" in gauss_df.columns:
        extra.append(all_g["censored"].sum().astype(int).rename("n_censored").reset_index())
    for axis in ("x", "y"):
        col = f"sigma_{axis}_moment"
        if col in gauss_df.columns:
            extra.append(all_g[col].median().rename(f"{col}_median").reset_index())
    out = n.merge(out, on=by, how="left")  # layers without a single success keep a row
    for e in extra:
        out = out.merge(e, on=by, how="left")
    out["n_ok"] = out["n_ok"].fillna(0).astype(int)
    cols = by + [
        "sigma_x_mean",
        "sigma_x_std",
        "sigma_y_mean",
        "sigma_y_std",
        "sigma_ratio_mean",
        "sigma_ratio_std",
        "sigma_ratio_median",
        "sigma_ratio_gmean",
        "sigma_x_median",
        "sigma_x_q25",
        "sigma_x_q75",
        "sigma_y_median",
        "sigma_y_q25",
        "sigma_y_q75",
        "r2_median",
        "n_ok",
    ]
    cols += [c for c in ("n_censored", "sigma_x_moment_median", "sigma_y_moment_median") if c in out.columns]
    out = out[cols + ["n"]]
    if resamples:
        out = add_intervals(out, ok, by, SUMMARY_INTERVALS, resamples)
        moments = {
            f"sigma_{a}_moment_median": (f"sigma_{a}_moment", "median")
            for a in "xy"
            if f"sigma_{a}_moment_median" in out.columns
        }
        out = add_intervals(out, gauss_df, by, moments, resamples)
    return out
