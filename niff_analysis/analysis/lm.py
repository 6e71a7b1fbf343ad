"""The compiled Levenberg–Marquardt solver of :mod:`.gaussian`'s 2-D Gaussian fits (numba), run
one fit at a time in each of one thread per core, and the compiled deweighted adaptive moments
of its moment σ. The only solver: kernels are CPU tensors wherever a model ran, so the fits
always run here, on the CPU.

Model, parameters and every setting (tolerances, damping, clamp, the give-up rule's thresholds)
come from :mod:`.gauss2d`; the give-up rule itself is :func:`give_up`. Per fit the iteration is
a few hundred flops on one kernel's pixels; the batched torch iteration it was written from
(now the tests' reference, ``tests/lm_reference.py``, which the tests compare it with fit by
fit) spent most of its time in ~80 tensor ops per iteration over the whole working set
(benchmarks/README.md §3). The Gram matrix is summed pixel by pixel, and the damped 7×7 system
is solved by Gaussian elimination with partial pivoting.

Imported on first use only (:mod:`.gaussian` imports it inside the functions that fit): numba
adds ~0.5 s to a command's start-up, and most commands never fit a Gaussian. The compiled code
is cached next to this file (or in numba's user cache where that is read-only), so it is
compiled once per installation. numba's cache does not notice changes to other files, so the
compiled functions read no other module's globals except N_PARAMS (the model's shape, which
the code below spells out): every setting is an argument.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed

import numba
import numpy as np

from . import gauss2d
from .gauss2d import N_PARAMS

jit = numba.njit(cache=True, nogil=True, fastmath=False, error_model="numpy")
PIECE_PIXELS = 1 << 18  # kernel pixels per piece a thread takes


@jit
def evaluate(p, d, xs, ys, hess, grad):
    """Cost ½·Σr² at p; J·Jᵀ into ``hess`` (7, 7) and J·r into ``grad`` (7,).

    The 35 sums are scalars rather than array entries: kept in registers, they made one
    evaluation 1.1–1.4× faster than accumulating into ``hess`` pixel by pixel (same order of
    additions, so the same result)."""
    a, x0, y0, u, l21, v, b = p[0], p[1], p[2], p[3], p[4], p[5], p[6]
    l11, l22 = math.exp(u), math.exp(v)
    h00 = h10 = h11 = h20 = h21 = h22 = h30 = h31 = h32 = h33 = h40 = h41 = h42 = h43 = h44 = 0.0
    h50 = h51 = h52 = h53 = h54 = h55 = h60 = h61 = h62 = h63 = h64 = h65 = 0.0
    g0 = g1 = g2 = g3 = g4 = g5 = g6 = cost = 0.0
    for i in range(d.shape[0]):
        dx, dy = xs[i] - x0, ys[i] - y0
        s = l21 * dy + l11 * dx
        t = l22 * dy
        e = math.exp(-0.5 * (s * s + t * t))
        ae = a * e
        q = ae * s
        rl = ae * t * l22
        # The Jacobian's column at this pixel: ∂f/∂(A, x0, y0, u, l21, v); ∂f/∂b = 1.
        j0, j1, j2 = e, q * l11, rl + q * l21
        j3, j4, j5 = -j1 * dx, -q * dy, -rl * dy
        r = ae + b - d[i]
        cost += r * r
        g0 += j0 * r
        g1 += j1 * r
        g2 += j2 * r
        g3 += j3 * r
        g4 += j4 * r
        g5 += j5 * r
        g6 += r  # noqa: E702
        h00 += j0 * j0
        h10 += j1 * j0
        h11 += j1 * j1  # noqa: E702
        h20 += j2 * j0
        h21 += j2 * j1
        h22 += j2 * j2  # noqa: E702
        h30 += j3 * j0
        h31 += j3 * j1
        h32 += j3 * j2
        h33 += j3 * j3  # noqa: E702
        h40 += j4 * j0
        h41 += j4 * j1
        h42 += j4 * j2
        h43 += j4 * j3
        h44 += j4 * j4  # noqa: E702
        h50 += j5 * j0
        h51 += j5 * j1
        h52 += j5 * j2
        h53 += j5 * j3
        h54 += j5 * j4
        h55 += j5 * j5  # noqa: E702
        h60 += j0
        h61 += j1
        h62 += j2
        h63 += j3
        h64 += j4
        h65 += j5  # noqa: E702
    lower = (
        h00,
        h10,
        h11,
        h20,
        h21,
        h22,
        h30,
        h31,
        h32,
        h33,
        h40,
        h41,
        h42,
        h43,
        h44,
        h50,
        h51,
        h52,
        h53,
        h54,
        h55,
        h60,
        h61,
        h62,
        h63,
        h64,
        h65,
        float(d.shape[0]),
    )
    m = 0
    for j in range(N_PARAMS):
        for k in range(j + 1):
            hess[j, k] = hess[k, j] = lower[m]
            m += 1
    grad[0], grad[1], grad[2], grad[3], grad[4], grad[5], grad[6] = g0, g1, g2, g3, g4, g5, g6
    return 0.5 * cost


@jit
def solve(m, rhs, out):
    """out = m⁻¹·rhs by elimination with partial pivoting (m, rhs overwritten); NaN when a
    pivot is zero (as LAPACK's LU gives for a singular matrix)."""
    n = rhs.shape[0]
    for c in range(n):
        piv = c
        for r in range(c + 1, n):
            if abs(m[r, c]) > abs(m[piv, c]):
                piv = r
        if m[piv, c] == 0.0:
            out[:] = np.nan
            return
        if piv != c:
            for k in range(n):
                m[c, k], m[piv, k] = m[piv, k], m[c, k]
            rhs[c], rhs[piv] = rhs[piv], rhs[c]
        for r in range(c + 1, n):
            f = m[r, c] / m[c, c]
            for k in range(c + 1, n):
                m[r, k] -= f * m[c, k]
            rhs[r] -= f * rhs[c]
    for c in range(n - 1, -1, -1):
        acc = rhs[c]
        for k in range(c + 1, n):
            acc -= m[c, k] * out[k]
        out[c] = acc / m[c, c]


@jit
def give_up(p, h, w, hard_sigma, hard_width, soft_sigma, soft_width):
    """The give-up rule, for one fit at parameters ``p`` of an h×w kernel: (stop now, stop once
    it has held for the patience, :data:`.gauss2d.GIVE_UP_PATIENCE` iterations in a row).

    It stops fits that have left the meaningful regime and would only creep on: a peak
    squeezing between the samples (σ_minor below ``hard_sigma`` px now, below ``soft_sigma``
    px soon; its amplitude grows without bound), amplitude and offset cancelling into a slope
    (σ_major above ``hard_width`` kernel sizes now, above ``soft_width`` soon), or a centre more
    than a kernel size off the grid (now). Such fits end as failures ("undersampled", "too
    wide", "centre outside"); what the rule costs and saves: :mod:`.gauss2d`."""
    # σ² along the principal axes is 1 / the eigenvalues of the precision P = L·Lᵀ (cheaper than
    # the covariance: this runs every iteration).
    l11, l21, l22 = math.exp(p[3]), p[4], math.exp(p[5])
    pxx, pxy, pyy = l11 * l11, l11 * l21, l21 * l21 + l22 * l22
    half, rad = 0.5 * (pxx + pyy), math.hypot(0.5 * (pxx - pyy), pxy)
    p_max, p_min, size = half + rad, half - rad, max(h, w)
    now = (p_max * hard_sigma**2 > 1) or (p_min * (hard_width * size) ** 2 < 1) or abs(p[1]) > w or abs(p[2]) > h
    soon = (p_max * soft_sigma**2 > 1) or (p_min * (soft_width * size) ** 2 < 1)
    return now, soon


@jit
def fit_one(d, xs, ys, p, max_iter, ftol, xtol, settings, h, w, rules, patience):
    """Fit one kernel from p (updated in place); returns (stopped, iterations). ``settings`` is
    :func:`.gauss2d.solver_settings`; ``rules`` is empty for no give-up rule, else (hard σ, hard
    width, σ, width) of :func:`give_up`."""
    n_par = N_PARAMS
    perfect_rms, log_clamp, la_start, la_min, la_max, diag_floor = (
        settings[0],
        settings[1],
        settings[2],
        settings[3],
        settings[4],
        settings[5],
    )
    tiny = np.finfo(np.float64).tiny
    perfect_cost = 0.5 * d.shape[0] * perfect_rms**2
    hess, grad = np.empty((n_par, n_par)), np.empty(n_par)
    hess_new, grad_new = np.empty((n_par, n_par)), np.empty(n_par)
    m, rhs, step, trial, diag = (
        np.empty((n_par, n_par)),
        np.empty(n_par),
        np.empty(n_par),
        np.empty(n_par),
        np.empty(n_par),
    )
    cost = evaluate(p, d, xs, ys, hess, grad)
    la, nu, it, strikes = la_start, 2.0, 0, 0
    while True:
        for j in range(n_par):
            diag[j] = max(hess[j, j], diag_floor)
            for k in range(n_par):
                m[j, k] = hess[j, k]
            m[j, j] += la * diag[j]  # Marquardt's damping
            rhs[j] = -grad[j]
        solve(m, rhs, step)
        for j in range(n_par):
            trial[j] = p[j] + step[j]
        trial[3] = min(max(trial[3], -log_clamp), log_clamp)
        trial[5] = min(max(trial[5], -log_clamp), log_clamp)
        cost_new = evaluate(trial, d, xs, ys, hess_new, grad_new)
        pred_a, pred_b, step_sq, p_sq, finite = 0.0, 0.0, 0.0, 0.0, True
        for j in range(n_par):
            pred_a += la * diag[j] * step[j] * step[j]
            pred_b += grad[j] * step[j]
            step_sq += step[j] * step[j]
            p_sq += p[j] * p[j]
            finite = finite and math.isfinite(step[j])
        predicted = 0.5 * (pred_a - pred_b)
        # Gain ratio of actual to predicted reduction drives λ (Nielsen's update).
        rho = (cost - cost_new) / max(predicted, tiny)
        ok = math.isfinite(cost_new) and finite and cost_new < cost
        small_f = (cost - cost_new) <= ftol * cost
        small_x = step_sq <= (xtol * (math.sqrt(p_sq) + xtol)) ** 2
        if ok:
            la, nu = max(la * max(1 - (2 * rho - 1) ** 3, 1 / 3), la_min), 2.0
        else:
            la, nu = la * nu, nu * 2
        it += 1
        stop = (ok and (small_f or small_x or cost_new <= perfect_cost)) or la > la_max
        if ok:  # accepted: move to the trial point; rejected: keep the state
            for j in range(n_par):
                p[j] = trial[j]
                grad[j] = grad_new[j]
                for k in range(n_par):
                    hess[j, k] = hess_new[j, k]
            cost = cost_new
        if len(rules):
            now, soon = give_up(p, h, w, rules[0], rules[1], rules[2], rules[3])
            strikes = strikes + 1 if soon else 0
            stop = stop or now or strikes >= patience
        if stop or it >= max_iter:
            return stop, it


@jit
def fit_rows(data, xs, ys, params, stopped, iters, lo, hi, max_iter, ftol, xtol, settings, h, w, rules, patience):
    """Fit rows [lo, hi) of ``data`` in place of ``params``, ``stopped``, ``iters``."""
    for i in range(lo, hi):
        stopped[i], iters[i] = fit_one(
            data[i], xs, ys, params[i], max_iter, ftol, xtol, settings, h, w, rules, patience
        )


def levenberg_marquardt(
    data: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    p0: np.ndarray,
    h: int,
    w: int,
    max_iter: int = gauss2d.MAX_ITER,
    ftol: float = gauss2d.FTOL,
    xtol: float = gauss2d.XTOL,
    give_up: tuple[float, float, float, float] | None = None,
    patience: int = 1,
    threads: int = 1,
    on_done: Callable[[int], object] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit :func:`.gauss2d.gaussian_model` to each row of ``data`` (B, N), float64, on the CPU.

    Levenberg–Marquardt with Marquardt's diagonal scaling and Nielsen's gain-ratio update of λ
    (settings: :func:`.gauss2d.solver_settings`, read at the call); a step is accepted if it
    lowers the cost. Every fit's result depends on its own data only. The rows are cut into
    pieces that ``threads`` Python threads take in turn (the compiled code releases the
    interpreter lock). Plain threads rather than numba's parallel layers: those may load a
    second OpenMP runtime next to torch's and are not all safe to fork, which the trainer does
    (data-loader workers) after it has fitted its kernel statistics.

    Args:
        data: magnitudes (B, N) of h×w kernels (``gaussian_fit`` scales each by its peak).
        x, y: pixel coordinates (N,) of an h×w kernel.
        p0: start parameters (B, 7); not modified.
        h, w: the kernel's size (the give-up rule's scale).
        max_iter, ftol, xtol: iteration limit and tolerances (:mod:`.gauss2d`).
        give_up: (hard σ, hard width, σ, width) of :func:`give_up`, or None for no early stop.
        patience: iterations the soft give-up rule must hold in a row.
        threads: threads to use.
        on_done: optional function called with the number of fits of each finished piece.

    Returns:
        (params (B, 7), stopped (B,) bool: converged or given up, iterations (B,) int).
    """
    data = np.ascontiguousarray(data, dtype=np.float64)
    params = np.array(p0, dtype=np.float64, order="C", copy=True)
    stopped = np.zeros(len(data), dtype=np.bool_)
    iters = np.zeros(len(data), dtype=np.int64)
    rules = np.array(give_up if give_up is not None else (), dtype=np.float64)
    args = (
        np.ascontiguousarray(x, dtype=np.float64),
        np.ascontiguousarray(y, dtype=np.float64),
        params,
        stopped,
        iters,
    )
    opts = (int(max_iter), float(ftol), float(xtol), gauss2d.solver_settings(), int(h), int(w), rules, int(patience))
    threads = max(1, int(threads))
    # Pieces small enough for the threads to finish together and for a progress bar to move.
    piece = max(1, min(PIECE_PIXELS // data.shape[1], -(-len(data) // (4 * threads))))
    bounds = [(lo, min(lo + piece, len(data))) for lo in range(0, len(data), piece)]

    def run(lo: int, hi: int) -> int:
        fit_rows(data, *args, lo, hi, *opts)
        return hi - lo

    if threads == 1 or len(bounds) == 1:
        for lo, hi in bounds:
            n = run(lo, hi)
            if on_done is not None:
                on_done(n)
    else:
        pool = ThreadPoolExecutor(max_workers=threads)
        try:
            for fut in as_completed([pool.submit(run, lo, hi) for lo, hi in bounds]):
                n = fut.result()
                if on_done is not None:
                    on_done(n)
        finally:
            # On Ctrl-C (or an error) drop the pieces not started instead of running them all.
            pool.shutdown(wait=True, cancel_futures=True)
    return params, stopped, iters


# --------------------------------------------------------------------------- moment σ
@jit
def moments_one(d, xs, ys, cx, cy, floor, max_iter, tol, centre_tol, damp_after, cap, out):
    """Deweighted adaptive moments of one kernel's magnitudes above the background ``d`` (N,),
    started at the centre (cx, cy) with Σ = 1 px² (:func:`.gaussian.adaptive_moments` documents
    the iteration). Writes (Σxx, Σyy, Σxy, x0, y0) into ``out``; returns (settled, iterations);
    NaN in ``out`` where a window holds no mass above the background."""
    sxx, syy, sxy = 1.0, 1.0, 0.0
    lo_x, hi_x, lo_y, hi_y = xs.min() - 0.5, xs.max() + 0.5, ys.min() - 0.5, ys.max() + 0.5
    settled = False
    it = 0
    while it < max_iter and not settled:
        it += 1
        mxx, myy, mxy = sxx + floor, syy + floor, sxy
        det = mxx * myy - mxy * mxy
        pxx, pyy, pxy = myy / det, mxx / det, -mxy / det  # the window's precision M⁻¹
        s0 = s1 = s2 = s3 = s4 = s5 = 0.0
        for i in range(d.shape[0]):
            dx, dy = xs[i] - cx, ys[i] - cy
            q = pxx * dx * dx + 2.0 * pxy * dx * dy + pyy * dy * dy
            if q > 80.0:  # a weight below e⁻⁴⁰ of the window's centre adds nothing
                continue
            wt = d[i] * math.exp(-0.5 * q)
            s0 += wt
            s1 += wt * dx
            s2 += wt * dy  # noqa: E702
            s3 += wt * dx * dx
            s4 += wt * dx * dy
            s5 += wt * dy * dy  # noqa: E702
        if not s0 > 0.0:
            for k in range(5):
                out[k] = math.nan
            return False, it
        mx, my = s1 / s0, s2 / s0  # the weighted mean, relative to the window's centre
        cxx = max(s3 / s0 - mx * mx, 0.0)
        cyy = max(s5 / s0 - my * my, 0.0)
        cxy = s4 / s0 - mx * my
        # Deweighting: a Gaussian (Σ, μ) times the window (M, c) is a Gaussian of covariance
        # C = (Σ⁻¹ + M⁻¹)⁻¹ and mean C·(Σ⁻¹μ + M⁻¹c), so Σ⁻¹ = C⁻¹ − M⁻¹ and
        # μ = Σ·(C⁻¹·mean − M⁻¹·c); with coordinates relative to c, the last term vanishes.
        cdet = cxx * cyy - cxy * cxy
        sharp = cdet <= 1e-12 * (cxx + cyy) ** 2  # all weight on a line or a single pixel
        ok = False
        if not sharp:
            qxx, qyy, qxy = cyy / cdet - pxx, cxx / cdet - pyy, -cxy / cdet - pxy
            qdet = qxx * qyy - qxy * qxy
            ok = qxx > 0.0 and qdet > 0.0
        if ok:
            nxx, nyy, nxy = qyy / qdet, qxx / qdet, -qxy / qdet
            ux, uy = (cyy * mx - cxy * my) / cdet, (cxx * my - cxy * mx) / cdet
            nx, ny = cx + nxx * ux + nxy * uy, cy + nxy * ux + nyy * uy
        elif sharp:  # narrower than a pixel: the plain moments (about 0)
            nxx, nyy, nxy, nx, ny = cxx, cyy, cxy, cx + mx, cy + my
        else:  # broader than the window in some direction: widen it
            nxx, nyy, nxy, nx, ny = 4.0 * sxx, 4.0 * syy, sxy, cx + mx, cy + my
        nxx, nyy = min(nxx, cap), min(nyy, cap)
        nx, ny = min(max(nx, lo_x), hi_x), min(max(ny, lo_y), hi_y)
        if it > damp_after:  # a fixed point circled rather than reached: half steps
            nxx, nyy, nxy = 0.5 * (nxx + sxx), 0.5 * (nyy + syy), 0.5 * (nxy + sxy)
            nx, ny = 0.5 * (nx + cx), 0.5 * (ny + cy)
        step = max(abs(nxx - sxx), abs(nyy - syy), abs(nxy - sxy))
        settled = (ok or sharp) and step <= tol * max(nxx, nyy, 1e-2) and max(abs(nx - cx), abs(ny - cy)) <= centre_tol
        sxx, syy, sxy, cx, cy = nxx, nyy, nxy, nx, ny
    out[0], out[1], out[2], out[3], out[4] = sxx, syy, sxy, cx, cy
    return settled, it


@jit
def moments_rows(d, xs, ys, start, out, settled, iters, lo, hi, floor, max_iter, tol, centre_tol, damp_after, cap):
    """:func:`moments_one` for rows [lo, hi) of ``d``, started at ``start`` (B, 2)."""
    for i in range(lo, hi):
        settled[i], iters[i] = moments_one(
            d[i], xs, ys, start[i, 0], start[i, 1], floor, max_iter, tol, centre_tol, damp_after, cap, out[i]
        )


def deweighted_moments(
    d: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    start: np.ndarray,
    floor: float,
    max_iter: int,
    tol: float,
    centre_tol: float,
    damp_after: int,
    threads: int = 1,
):
    """Deweighted adaptive moments of each row of ``d`` (B, N): magnitudes above their background
    on pixel coordinates ``x``, ``y`` (N,), started at ``start`` (B, 2), in ``threads`` threads
    (pieces as in :func:`levenberg_marquardt`).

    Returns:
        (moments (B, 5): Σxx, Σyy, Σxy, x0, y0; settled (B,) bool; iterations (B,) int).
    """
    d = np.ascontiguousarray(d, dtype=np.float64)
    xs, ys = np.ascontiguousarray(x, dtype=np.float64), np.ascontiguousarray(y, dtype=np.float64)
    start = np.ascontiguousarray(start, dtype=np.float64)
    out = np.empty((len(d), 5), dtype=np.float64)
    settled = np.zeros(len(d), dtype=np.bool_)
    iters = np.zeros(len(d), dtype=np.int64)
    cap = (4.0 * (max(xs.max() - xs.min(), ys.max() - ys.min()) + 1.0)) ** 2 if len(xs) else 1.0
    opts = (float(floor), int(max_iter), float(tol), float(centre_tol), int(damp_after), float(cap))
    threads = max(1, int(threads))
    piece = max(1, min(PIECE_PIXELS // max(d.shape[1], 1), -(-len(d) // (4 * threads))))
    bounds = [(lo, min(lo + piece, len(d))) for lo in range(0, len(d), piece)]

    def run(lo: int, hi: int) -> None:
        moments_rows(d, xs, ys, start, out, settled, iters, lo, hi, *opts)

    if threads == 1 or len(bounds) <= 1:
        for lo, hi in bounds:
            run(lo, hi)
    else:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            for fut in [pool.submit(run, lo, hi) for lo, hi in bounds]:
                fut.result()
    return out, settled, iters
