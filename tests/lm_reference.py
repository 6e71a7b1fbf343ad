"""The reference solver of the tests: the batched torch Levenberg–Marquardt iteration that the
product's compiled solver (:mod:`niff_analysis.analysis.lm`) was written from and is compared
with fit by fit (tests/test_analysis_gaussian.py; ``python -m benchmarks analysis`` times the
two). Not part of the package: the product fits with the compiled solver only.

It shares the model, the start and every setting with the product (:mod:`niff_analysis.analysis.gauss2d`:
tolerances, damping, clamp, the give-up rule's thresholds), but not the code of the iteration:
the Jacobian, the linear solve (LAPACK's LU), the bookkeeping and the give-up rule are written
here again, vectorised over a working set of fits.

Every iteration needs, at the trial point, the cost ½·Σr² and the Gram matrix of [J; r] (J·Jᵀ
and J·r together): :func:`evaluate_direct` writes the Jacobian's 7 rows and the residual per
pixel into one buffer and takes one batched product.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

from niff_analysis.analysis import gauss2d
from niff_analysis.analysis.gauss2d import N_PARAMS, model_parts, moment_init, pixel_coords, precision

_SIGNS = torch.tensor([1.0, 1, 1, -1, -1, -1, 1])  # signs of the rows evaluate_* differentiate


def _jacobian(parts, extra_rows: int = 0) -> torch.Tensor:
    """Analytic Jacobian (B, 7, N) from :func:`~niff_analysis.analysis.gauss2d.model_parts`' intermediates,
    written row by row into one buffer (contiguous rows for the J·Jᵀ products; no stacking copy), with rows 3-5
    negated (−∂f/∂u, −∂f/∂l21, −∂f/∂v: three passes fewer; the solver flips its step's signs,
    :data:`_SIGNS`, which is exact). With ``extra_rows`` the buffer has that many more rows,
    left for the caller to fill."""
    e, ae, s, t, dx, dy, l11, l21, l22 = parts
    jac = torch.empty((e.shape[0], N_PARAMS + extra_rows, e.shape[1]), dtype=e.dtype, device=e.device)
    jac[:, 0] = e  # ∂f/∂A
    q = ae * s  # df/dQ = −A·e/2, so each column below is a product with A·e
    torch.mul(q, l11, out=jac[:, 1])  # ∂f/∂x0 = A·e·s·l11
    rl = (ae * t).mul_(l22)
    torch.addcmul(rl, q, l21, out=jac[:, 2])  # ∂f/∂y0 = A·e·(s·l21 + t·l22)
    torch.mul(jac[:, 1], dx, out=jac[:, 3])  # −∂f/∂u = A·e·s·dx·l11
    torch.mul(q, dy, out=jac[:, 4])  # −∂f/∂l21 = A·e·s·dy
    torch.mul(rl, dy, out=jac[:, 5])  # −∂f/∂v = A·e·t·dy·l22
    jac[:, 6] = 1  # ∂f/∂b
    return jac


def model_jacobian(p: torch.Tensor, x: torch.Tensor, y: torch.Tensor):
    """Model values (B, N) and Jacobian (B, 7, N) at parameters p (B, 7)."""
    f, parts = model_parts(p, x, y)
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
    f, parts = model_parts(p, x, y)
    aug = _jacobian(parts, extra_rows=1)
    r = torch.sub(f, data, out=aug[:, N_PARAMS])
    return _gram(aug), 0.5 * torch.linalg.vector_norm(r, dim=1).square()


def levenberg_marquardt(
    data: torch.Tensor,
    x: torch.Tensor,
    y: torch.Tensor,
    p0: torch.Tensor,
    max_iter: int = gauss2d.MAX_ITER,
    ftol: float = gauss2d.FTOL,
    xtol: float = gauss2d.XTOL,
    give_up=None,
    patience: int = 1,
    batch: int | None = None,
    on_done=None,
    evaluate=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batched LM fit of :func:`~niff_analysis.analysis.gauss2d.gaussian_model` to ``data`` (B, N).

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
    perfect_cost = 0.5 * data.shape[1] * gauss2d.PERFECT_RMS**2
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
        pa, da = p0[queued - k : queued].clone(), data[queued - k : queued].clone()
        gram, cost = evaluate(pa, da)
        la = torch.full((k,), gauss2d.LAMBDA_START, dtype=data.dtype, device=dev)
        return [
            rows,
            pa,
            da,
            la,
            torch.full_like(la, 2.0),
            torch.zeros(k, dtype=torch.long, device=dev),
            gram,
            cost,
            torch.ones(k, dtype=torch.bool, device=dev),
            torch.zeros(k, dtype=torch.long, device=dev),
        ]

    state = start(batch)
    while True:
        rows, pa, da, la, nu, it, prod, cost, live, strikes = state
        # A copy: the damping below must not reach the carried Gram matrix.
        hess, grad = prod[:, :N_PARAMS, :N_PARAMS].clone(), prod[:, :N_PARAMS, N_PARAMS]
        diag = torch.diagonal(hess, dim1=1, dim2=2).clamp_min(gauss2d.DIAG_FLOOR)
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
        la.copy_(torch.where(ok, (la * shrink).clamp_min(gauss2d.LAMBDA_MIN), la * nu))
        nu.copy_(torch.where(ok, 2.0, nu * 2))
        it += 1
        stop = (ok & (small_f | small_x | (cost_new <= perfect_cost))) | (la > gauss2d.LAMBDA_MAX)
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
            slots = (~live).nonzero()[:, 0][: bsz - queued]
            for v, new in zip(state, start(len(slots))):
                v[slots] = new
        elif queued == bsz and free * 4 >= len(live):
            # Nothing left to start: drop the finished rows.
            keep = live.nonzero()[:, 0]
            state = [v[keep] for v in state]


def _clamp_(p: torch.Tensor) -> torch.Tensor:
    """Bound u and v (columns 3 and 5: log l11, log l22) to ±LOG_CLAMP, in place."""
    p[:, 3:6:2].clamp_(-gauss2d.LOG_CLAMP, gauss2d.LOG_CLAMP)
    return p


def give_up(
    p: torch.Tensor, h: int, w: int, rules: tuple[float, float, float, float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The give-up rule (:func:`niff_analysis.analysis.lm.give_up`) for parameters (B, 7) of h×w
    kernels at once, with thresholds ``rules`` = (hard σ, hard width, σ, width): (stop now, stop
    once it has lasted the patience)."""
    hard_sigma, hard_width, soft_sigma, soft_width = rules
    (pxx, pxy, pyy), _ = precision(p)
    half, rad = 0.5 * (pxx + pyy), torch.hypot(0.5 * (pxx - pyy), pxy)
    p_max, p_min, size = half + rad, half - rad, max(h, w)
    now = (
        (p_max * hard_sigma**2 > 1) | (p_min * (hard_width * size) ** 2 < 1) | (p[:, 1].abs() > w) | (p[:, 2].abs() > h)
    )
    soon = (p_max * soft_sigma**2 > 1) | (p_min * (soft_width * size) ** 2 < 1)
    return now, soon


def solve(
    data: torch.Tensor, h: int, w: int, max_iter: int = gauss2d.MAX_ITER, batch: int | None = None, on_done=None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What the product's ``gaussian._solve`` does, with this solver: fit h×w kernels'
    peak-scaled magnitudes ``data`` (B, h·w) from their moment start with the give-up rule as
    :mod:`~niff_analysis.analysis.gauss2d` holds it now; (params, stopped, iterations) as
    :func:`levenberg_marquardt` returns them."""
    x, y = pixel_coords(h, w, device=data.device, dtype=data.dtype)
    rules, patience = gauss2d.give_up_rule()
    return levenberg_marquardt(
        data,
        x,
        y,
        moment_init(data, x, y),
        max_iter=max_iter,
        give_up=partial(give_up, h=h, w=w, rules=rules),
        patience=patience,
        batch=batch,
        on_done=on_done,
    )
