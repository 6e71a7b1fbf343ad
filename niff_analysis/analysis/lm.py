"""The 2-D Gaussian model of :mod:`.gaussian` (its parameterisation, moment start and derived
sigmas) and its batched Levenberg–Marquardt solver; the protocol (model, start, tolerances and
failure rules) is documented in :mod:`.gaussian`.

Parameters per fit: (A, x0, y0, u, l21, v, b), the model ``A·exp(−½·Q) + b`` with
Q = (l11·dx + l21·dy)² + (l22·dy)², l11 = exp(u), l22 = exp(v). Every iteration needs, at
the trial point, the cost ½·Σr² and the Gram matrix of [J; r] (J·Jᵀ and J·r together):
:func:`evaluate_direct` writes the Jacobian's 7 rows and the residual per pixel into one
buffer and takes one batched product. (Building J·Jᵀ instead from weighted moments of the
fixed grid, since J's rows are e·polynomials of degree ≤ 2, was tried and measured slower on
CPU: benchmarks/README.md.)
"""

from __future__ import annotations

import math

import numpy as np
import torch

N_PARAMS = 7
PERFECT_RMS = 1e-8  # residual RMS, relative to the kernel's peak, that counts as a perfect fit
_LOG_CLAMP = 12.0  # |u|, |v| bound: keeps exp() finite; σ ∈ [6e-6, 1.6e5] px
_SIGNS = torch.tensor([1.0, 1, 1, -1, -1, -1, 1])  # signs of the rows evaluate_* differentiate


# --------------------------------------------------------------------------- the model
def pixel_coords(h: int, w: int, device=None, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened (x, y) pixel coordinates of an h×w kernel relative to its origin (h//2, w//2)."""
    y, x = torch.meshgrid(torch.arange(h, device=device, dtype=dtype) - h // 2,
                          torch.arange(w, device=device, dtype=dtype) - w // 2, indexing="ij")
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


def _moments(mag: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
    """Background b₀, centre and covariance of magnitudes ``mag`` (B, N) by the weighted moments
    of the module docstring (weights max(|k| − b₀, 0)², covariance twice the weighted one)."""
    bg = mag.median(dim=1, keepdim=True).values
    w = (mag - bg).clamp_min(0) ** 2
    empty = w.sum(1, keepdim=True) <= 0
    w = torch.where(empty, mag, w)  # e.g. a kernel above its median nowhere: plain moments
    w = w / w.sum(1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
    mx, my = (w * x).sum(1), (w * y).sum(1)
    dx, dy = x - mx[:, None], y - my[:, None]
    scale = torch.where(empty[:, 0], 1.0, 2.0)
    return (bg, mx, my, scale * (w * dx * dx).sum(1), scale * (w * dy * dy).sum(1),
            scale * (w * dx * dy).sum(1))


def moment_init(mag: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Initial parameters (B, 7) from weighted moments of magnitudes ``mag`` (B, N)."""
    bg, mx, my, cxx, cyy, cxy = _moments(mag, x, y)
    cxx, cyy = cxx + 1 / 12, cyy + 1 / 12  # one pixel's variance: never a zero-width start
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


def _derived(p: torch.Tensor) -> dict[str, torch.Tensor]:
    """Sigmas, orientation from fitted parameters (B, 7)."""
    (pxx, pxy, pyy), det = precision(p)
    sxx, sxy, syy = pyy / det, -pxy / det, pxx / det  # Σ = P⁻¹
    half_tr, diff = (sxx + syy) / 2, torch.sqrt(((sxx - syy) / 2) ** 2 + sxy ** 2)
    theta = 0.5 * torch.atan2(2 * sxy, sxx - syy)
    theta = torch.where(theta <= -math.pi / 2, theta + math.pi, theta)
    return dict(sigma_x=sxx.sqrt(), sigma_y=syy.sqrt(), sigma_major=(half_tr + diff).sqrt(),
                sigma_minor=(half_tr - diff).clamp_min(0).sqrt(), theta=theta)


# --------------------------------------------------------------------------- the solver
def _model_parts(p: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
    """Model values f (B, N) at parameters p (B, 7), and the intermediates the Jacobian reuses."""
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
    return _model_parts(p, x, y)[0]


def _jacobian(parts, extra_rows: int = 0) -> torch.Tensor:
    """Analytic Jacobian (B, 7, N) from :func:`_model_parts`' intermediates, written row by row
    into one buffer (contiguous rows for the J·Jᵀ products; no stacking copy), with rows 3-5
    negated (−∂f/∂u, −∂f/∂l21, −∂f/∂v: three passes fewer; the solver flips its step's signs,
    :data:`_SIGNS`, which is exact). With ``extra_rows`` the buffer has that many more rows,
    left for the caller to fill."""
    e, ae, s, t, dx, dy, l11, l21, l22 = parts
    jac = torch.empty((e.shape[0], N_PARAMS + extra_rows, e.shape[1]), dtype=e.dtype, device=e.device)
    jac[:, 0] = e                                            # ∂f/∂A
    q = ae * s  # df/dQ = −A·e/2, so each column below is a product with A·e
    torch.mul(q, l11, out=jac[:, 1])                         # ∂f/∂x0 = A·e·s·l11
    rl = (ae * t).mul_(l22)
    torch.addcmul(rl, q, l21, out=jac[:, 2])                 # ∂f/∂y0 = A·e·(s·l21 + t·l22)
    torch.mul(jac[:, 1], dx, out=jac[:, 3])                  # −∂f/∂u = A·e·s·dx·l11
    torch.mul(q, dy, out=jac[:, 4])                          # −∂f/∂l21 = A·e·s·dy
    torch.mul(rl, dy, out=jac[:, 5])                         # −∂f/∂v = A·e·t·dy·l22
    jac[:, 6] = 1                                            # ∂f/∂b
    return jac


def model_jacobian(p: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
    """Model values (B, N) and Jacobian (B, 7, N) at parameters p (B, 7)."""
    f, parts = _model_parts(p, x, y)
    return f, _jacobian(parts) * _SIGNS.to(f)[:, None]


def _gram(a: torch.Tensor) -> torch.Tensor:
    """Batched a·aᵀ of (B, R, N). On the CPU numpy's stacked matmul, which was 1.4–1.5× faster
    than torch.bmm for these small float64 matrices (benchmarks/README.md)."""
    if a.device.type == "cpu" and a.dtype == torch.float64:
        n = a.numpy()
        return torch.from_numpy(np.matmul(n, n.transpose(0, 2, 1)))
    return torch.bmm(a, a.transpose(1, 2))


def evaluate_direct(p: torch.Tensor, data: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
    """(Gram of [J; r] (B, 8, 8) with J's rows signed as :data:`_SIGNS`, cost (B,)) at p."""
    f, parts = _model_parts(p, x, y)
    aug = _jacobian(parts, extra_rows=1)
    r = torch.sub(f, data, out=aug[:, N_PARAMS])
    return _gram(aug), 0.5 * torch.linalg.vector_norm(r, dim=1).square()


def levenberg_marquardt(data: torch.Tensor, x: torch.Tensor, y: torch.Tensor, p0: torch.Tensor,
                        max_iter: int = 200, ftol: float = 1.5e-8, xtol: float = 1.5e-8,
                        give_up=None, patience: int = 1, batch: int | None = None,
                        on_done=None, evaluate=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched LM fit of :func:`gaussian_model` to ``data`` (B, N).

    The fits iterate together in a working set of at most ``batch`` rows. Finished fits are
    written back, and once a sixteenth of the rows has finished, fits not yet started take
    their places; when none are left, finished rows are dropped. So the set stays near
    ``batch`` rows (small enough to stay in the CPU's cache), and no iteration runs for a
    handful of slow fits only. Each fit's Gram matrix of [J; r] is carried from its accepted
    trial point into the next iteration, so every iteration evaluates the model once. Every
    fit's result depends on its own data only.

    Args:
        give_up: optional function params (B, 7) → (bool (B,), bool (B,)) marking fits to stop
            early (their status is then judged from their values): now, or once the second
            mask has held for ``patience`` iterations in a row.
        batch: working-set rows at most (default: all B).
        on_done: optional function called with the number of fits that just finished.
        evaluate: ``fn(params, data) → (gram, cost)`` (default: :func:`evaluate_direct`).

    Returns:
        (params (B, 7), stopped (B,) bool: converged or given up, iterations (B,) int).
    """
    bsz = data.shape[0]
    dev = data.device
    p = p0.clone()
    done = torch.zeros(bsz, dtype=torch.bool, device=dev)
    iters = torch.zeros(bsz, dtype=torch.long, device=dev)
    if bsz == 0:
        return p, done, iters
    batch = bsz if batch is None else max(1, min(int(batch), bsz))
    tiny = torch.finfo(data.dtype).tiny
    perfect_cost = 0.5 * data.shape[1] * PERFECT_RMS ** 2
    queued = 0  # fits [0, queued) have entered the working set
    signs = _SIGNS.to(data)
    evaluate = evaluate or (lambda params, d: evaluate_direct(params, d, x, y))

    def start(k: int) -> list[torch.Tensor]:
        """Working-set state of the next k fits; ``gram`` holds J·Jᵀ, J·r and r·r at the
        current parameters."""
        nonlocal queued
        rows = torch.arange(queued, queued + k, device=dev)
        queued += k
        # Copies: refilling finished rows writes into these, and must not reach the caller's.
        pa, da = p0[queued - k:queued].clone(), data[queued - k:queued].clone()
        gram, cost = evaluate(pa, da)
        la = torch.full((k,), 1e-3, dtype=data.dtype, device=dev)
        return [rows, pa, da, la, torch.full_like(la, 2.0), torch.zeros(k, dtype=torch.long, device=dev),
                gram, cost, torch.ones(k, dtype=torch.bool, device=dev),
                torch.zeros(k, dtype=torch.long, device=dev)]

    state = start(batch)
    while True:
        rows, pa, da, la, nu, it, prod, cost, live, strikes = state
        # A copy: the damping below must not reach the carried Gram matrix.
        hess, grad = prod[:, :N_PARAMS, :N_PARAMS].clone(), prod[:, :N_PARAMS, N_PARAMS]
        diag = torch.diagonal(hess, dim1=1, dim2=2).clamp_min(1e-12)
        torch.diagonal(hess, dim1=1, dim2=2).add_(la[:, None] * diag)  # Marquardt's damping
        step, _ = torch.linalg.solve_ex(hess, grad.neg())
        trial = _clamp_(pa + step * signs)
        new_prod, cost_new = evaluate(trial, da)
        # Gain ratio of actual to predicted reduction drives λ (Nielsen's update).
        predicted = 0.5 * ((la[:, None] * diag * step * step).sum(1) - (grad * step).sum(1))
        rho = (cost - cost_new) / predicted.clamp_min(tiny)
        ok = torch.isfinite(cost_new) & torch.isfinite(step).all(1) & (cost_new < cost)
        small_f = (cost - cost_new) <= ftol * cost
        small_x = step.square().sum(1) <= (xtol * (pa.square().sum(1).sqrt() + xtol)) ** 2
        shrink = torch.clamp(1 - (2 * rho - 1) ** 3, min=1 / 3)
        la.copy_(torch.where(ok, (la * shrink).clamp_min(1e-12), la * nu))
        nu.copy_(torch.where(ok, 2.0, nu * 2))
        it += 1
        stop = (ok & (small_f | small_x | (cost_new <= perfect_cost))) | (la > 1e10)
        # Accepted fits move to the trial point; rejected ones (usually few) keep their state.
        rej = (~ok).nonzero()[:, 0]
        if len(rej):
            trial[rej], new_prod[rej], cost_new[rej] = pa[rej], prod[rej], cost[rej]
        state[1], state[6], state[7] = pa, prod, cost = trial, new_prod, cost_new
        if give_up is not None:
            now, soon = give_up(pa)
            strikes.copy_(torch.where(soon, strikes + 1, 0))
            stop |= now | (strikes >= patience)
        stop &= live
        out = stop | (live & (it >= max_iter))  # converged or given up, or out of iterations
        if bool(out.any()):
            fin = out.nonzero()[:, 0]
            p[rows[fin]], done[rows[fin]], iters[rows[fin]] = pa[fin], stop[fin], it[fin]
            live[fin] = False
            if on_done is not None:
                on_done(len(fin))
        n_live = int(live.sum())
        if n_live == 0 and queued == bsz:
            return p, done, iters
        free = len(live) - n_live
        if queued < bsz and free * 16 >= len(live):
            # Start queued fits in the finished ones' rows (writes only those rows).
            slots = (~live).nonzero()[:, 0][:bsz - queued]
            for v, new in zip(state, start(len(slots))):
                v[slots] = new
        elif queued == bsz and free * 4 >= len(live):
            # Nothing left to start: drop the finished rows.
            keep = live.nonzero()[:, 0]
            state = [v[keep] for v in state]


def _clamp_(p: torch.Tensor) -> torch.Tensor:
    """Bound u and v (columns 3 and 5: log l11, log l22) to ±_LOG_CLAMP, in place."""
    p[:, 3:6:2].clamp_(-_LOG_CLAMP, _LOG_CLAMP)
    return p
