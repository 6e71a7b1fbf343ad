"""The 2-D Gaussian of :mod:`.gaussian` (its parameterisation, moment start and derived sigmas)
and every setting of its fit, in one place: the solver's iteration limit, tolerances, damping
and clamp (:mod:`.lm`), the give-up rule's thresholds, the failure rules' σ bound and the moment
σ's iteration. The protocol is documented in :mod:`.gaussian`.

Parameters per fit: (A, x0, y0, u, l21, v, b), the model ``A·exp(−½·Q) + b`` with
Q = (l11·dx + l21·dy)² + (l22·dy)², l11 = exp(u), l22 = exp(v).

Plain torch and numpy, no compiled code: importing this module costs nothing beyond torch. The
compiled solver takes every number below as an argument when it is called (none is frozen into
its cached machine code), so changing one here takes effect at the next fit.
"""

from __future__ import annotations

import math

import numpy as np
import torch

N_PARAMS = 7

# --------------------------------------------------------------------------- the solver's settings
#: Levenberg–Marquardt iterations at most (``gaussian_fit``'s and ``niff-analyze gaussian``'s default).
MAX_ITER = 200
#: MINPACK's default tolerances (those of ``scipy.optimize.curve_fit``): converged when an
#: accepted step lowers the cost by less than FTOL relative or moves the parameters by less
#: than XTOL relative.
FTOL = XTOL = 1.5e-8
#: Residual RMS, relative to the kernel's peak, that counts as a perfect fit.
PERFECT_RMS = 1e-8
#: |u|, |v| bound: keeps exp() finite; σ ∈ [6e-6, 1.6e5] px.
LOG_CLAMP = 12.0
#: Marquardt's damping λ: its start, its floor after accepted steps, and the value past which no
#: step lowers the cost any more (the fit stops).
LAMBDA_START, LAMBDA_MIN, LAMBDA_MAX = 1e-3, 1e-12, 1e10
#: Floor of the J·Jᵀ diagonal that scales the damping (a parameter the data does not move).
DIAG_FLOOR = 1e-12

# --------------------------------------------------------------------------- the give-up rule
# A fit is given up (lm.give_up) when its σ_minor falls below HARD_SIGMA px or its σ_major
# exceeds HARD_WIDTH kernel sizes or its centre is more than a kernel size off the grid, or when
# it stays below GIVE_UP_SIGMA px or above GIVE_UP_WIDTH kernel sizes for GIVE_UP_PATIENCE
# iterations in a row. Such fits end as failures ("undersampled", "too wide", "centre outside").
# They cut the solver's iterations 3.19× on the bundled baseline at the price of 67 of its
# 416,534 successful fits, paths that left the grid and came back; on the NIFF default they
# change none (``python -m benchmarks analysis``, benchmarks/README.md).
HARD_SIGMA, HARD_WIDTH = 0.1, 20.0
GIVE_UP_SIGMA, GIVE_UP_WIDTH, GIVE_UP_PATIENCE = 0.3, 3.0, 20

# --------------------------------------------------------------------------- the failure rules
#: σ_minor below this (px) is "undersampled" (censored): the nearest pixels hold less than 5 %
#: of the peak, so σ trades off against the amplitude.
MIN_SIGMA = 0.4

# --------------------------------------------------------------------------- the moment start
#: One pixel's variance (px²), added to the start's covariance: never a zero-width start.
PIXEL_VARIANCE = 1 / 12

# --------------------------------------------------------------------------- the moment σ
# Moment σ (gaussian.adaptive_moments): the window's covariance is the current estimate plus this
# many px² (a window never narrower than about a pixel); at most this many iterations, until σ²
# changes by less than this share and the centre by less than this many px; half steps after
# this many iterations.
MOMENT_WINDOW_FLOOR, MOMENT_MAX_ITER, MOMENT_TOL, MOMENT_CENTRE_TOL, MOMENT_DAMP_AFTER = 1.0, 40, 1e-3, 1e-2, 15
#: Below this σ (px) the moment σ cannot pin a peak down (docs/gaussian_validation.md).
MOMENT_RESOLVED = 0.75


def give_up_rule() -> tuple[tuple[float, float, float, float], int]:
    """The give-up rule's thresholds (hard σ, hard width, σ, width) and patience, as this
    module holds them at the time of the call (a test may change them)."""
    return (HARD_SIGMA, HARD_WIDTH, GIVE_UP_SIGMA, GIVE_UP_WIDTH), GIVE_UP_PATIENCE


def solver_settings() -> np.ndarray:
    """The solver's numbers the compiled iteration takes as one float64 array, in its order:
    (perfect RMS, log clamp, λ start, λ min, λ max, diagonal floor)."""
    return np.array([PERFECT_RMS, LOG_CLAMP, LAMBDA_START, LAMBDA_MIN, LAMBDA_MAX, DIAG_FLOOR], dtype=np.float64)


# --------------------------------------------------------------------------- the model
def pixel_coords(h: int, w: int, device=None, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened (x, y) pixel coordinates of an h×w kernel relative to its origin (h//2, w//2)."""
    y, x = torch.meshgrid(
        torch.arange(h, device=device, dtype=dtype) - h // 2,
        torch.arange(w, device=device, dtype=dtype) - w // 2,
        indexing="ij",
    )
    return x.reshape(-1), y.reshape(-1)


def gaussian_model(xy, amplitude, x0, y0, u, l21, v, offset):
    """The fitted model function (numpy), in the signature ``scipy.optimize.curve_fit`` takes.

    Args:
        xy: (x, y) coordinate arrays.
        amplitude, x0, y0, u, l21, v, offset: parameters (see the module docstring).
    """
    x, y = xy
    dx, dy = x - x0, y - y0
    s = np.exp(u) * dx + l21 * dy
    t = np.exp(v) * dy
    return amplitude * np.exp(-0.5 * (s * s + t * t)) + offset


def start_moments(mag: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
    """Background b₀, centre and covariance of magnitudes ``mag`` (B, N) by the weighted moments
    of the fit's start (:mod:`.gaussian`: weights max(|k| − b₀, 0)², covariance twice the
    weighted one)."""
    bg = mag.median(dim=1, keepdim=True).values
    w = (mag - bg).clamp_min(0) ** 2
    empty = w.sum(1, keepdim=True) <= 0
    w = torch.where(empty, mag, w)  # e.g. a kernel above its median nowhere: plain moments
    w = w / w.sum(1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
    mx, my = (w * x).sum(1), (w * y).sum(1)
    dx, dy = x - mx[:, None], y - my[:, None]
    scale = torch.where(empty[:, 0], 1.0, 2.0)
    return (bg, mx, my, scale * (w * dx * dx).sum(1), scale * (w * dy * dy).sum(1), scale * (w * dx * dy).sum(1))


def moment_init(mag: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Initial parameters (B, 7) from weighted moments of magnitudes ``mag`` (B, N)."""
    bg, mx, my, cxx, cyy, cxy = start_moments(mag, x, y)
    cxx, cyy = cxx + PIXEL_VARIANCE, cyy + PIXEL_VARIANCE
    det = (cxx * cyy - cxy * cxy).clamp_min(1e-6)
    pxx, pxy, pyy = cyy / det, -cxy / det, cxx / det  # precision = covariance⁻¹
    l11 = pxx.clamp_min(1e-12).sqrt()
    l21 = pxy / l11
    l22 = (pyy - l21 * l21).clamp_min(1e-12).sqrt()
    amp = mag.max(1).values - bg[:, 0]
    return torch.stack([amp, mx, my, l11.log(), l21, l22.log(), bg[:, 0]], dim=1)


def precision(p: torch.Tensor):
    """Entries (pxx, pxy, pyy) of the precision P = L·Lᵀ of parameters (B, 7), and det P."""
    l11, l21, l22 = p[:, 3].exp(), p[:, 4], p[:, 5].exp()
    return (l11 * l11, l11 * l21, l21 * l21 + l22 * l22), (l11 * l22) ** 2


def derived(p: torch.Tensor) -> dict[str, torch.Tensor]:
    """Sigmas (sigma_x, sigma_y, sigma_major, sigma_minor) and orientation theta from fitted
    parameters (B, 7), as :mod:`.gaussian` reports them."""
    (pxx, pxy, pyy), det = precision(p)
    sxx, sxy, syy = pyy / det, -pxy / det, pxx / det  # Σ = P⁻¹
    half_tr, diff = (sxx + syy) / 2, torch.sqrt(((sxx - syy) / 2) ** 2 + sxy**2)
    theta = 0.5 * torch.atan2(2 * sxy, sxx - syy)
    theta = torch.where(theta <= -math.pi / 2, theta + math.pi, theta)
    return dict(
        sigma_x=sxx.sqrt(),
        sigma_y=syy.sqrt(),
        sigma_major=(half_tr + diff).sqrt(),
        sigma_minor=(half_tr - diff).clamp_min(0).sqrt(),
        theta=theta,
    )


def model_parts(p: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
    """Model values f (B, N) at parameters p (B, 7), and the intermediates an analytic Jacobian
    reuses: (e, A·e, s, t, dx, dy, l11, l21, l22), with e = exp(−½·Q)."""
    a, x0, y0, u, l21, v, b = p[:, :, None].unbind(1)  # (B, 1) views
    l11, l22 = u.exp(), v.exp()
    dx, dy = x - x0, y - y0
    s = torch.addcmul(l21 * dy, l11, dx)
    t = l22 * dy
    e = torch.addcmul(s * s, t, t).mul_(-0.5).exp_()
    ae = a * e
    return ae + b, (e, ae, s, t, dx, dy, l11, l21, l22)


def model_values(p: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Model values (B, N) at parameters p (B, 7) on pixel coordinates x, y (N,)."""
    return model_parts(p, x, y)[0]
