"""Benchmark 3: analysis throughput on ``resnet50_niff`` (random weights, 224×224, 2,880 kernels).

* **Gaussian fits.** :func:`niff_analysis.analysis.gaussian_fit` (Levenberg–Marquardt, compiled
  on the CPU; timed on its second call in the process, the first, which loads the compiled code,
  is printed beside it) over every NIFF kernel against a per-kernel ``scipy.optimize.curve_fit``
  loop with the same model function (:func:`~niff_analysis.analysis.gauss2d.gaussian_model`), the same data (|k|
  scaled by its peak) and the same moment start. A full curve_fit loop would take minutes, so it
  runs on ``sample`` kernels per kernel size; its time for all kernels is extrapolated per size
  (mean seconds per kernel × kernels of that size). Results are compared on the sampled kernels
  that both fits call successful. Target: ≥ 20× faster.
* **Pipeline.** ``niff-analyze describe``, ``mass``, ``pca`` and ``gaussian`` on a saved
  ``resnet50_niff`` checkpoint, in process (click's runner), each timed once. Target: ≤ 30 s in all.
* **Solvers.** The compiled solver (:mod:`niff_analysis.analysis.lm`, the only one
  ``gaussian_fit`` runs) against the batched torch iteration it replaced, now the tests' reference
  solver (``tests/lm_reference.py``, loaded from this source tree), on the same seeded sample of
  the bundled baseline's kernels per map size, one thread each, one after the other: seconds, the
  ratio, and how many statuses agree. It says what the compiled solver gains and that it still
  gives the reference's fits; the reference is not a product path.
* **Give-up rules.** The compiled solver with the early give-up rules (what ``gaussian_fit``
  runs) against the same solver without them, on every kernel of both bundled checkpoints
  (``quick``: a seeded sample per map size): seconds and iterations of each, the fits ok in
  each, and those the rules turn into failures (or the other way), with their statuses.
* **Scale.** ``niff-analyze gaussian`` as a user runs it (a fresh process, start-up included) on
  the bundled baseline (1,048,640 spatial kernels) and on the bundled NIFF default (2,944), one
  after the other. Target: the baseline in ≤ 60 s on 2 cores. ``quick`` fits 2,000
  sampled kernels per layer instead (``--max-kernels``).
"""

from __future__ import annotations

import importlib.util
import tempfile
import time
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import torch

from niff_analysis.analysis import extract_kernels, gaussian_fit
from niff_analysis.analysis.gauss2d import derived, gaussian_model, moment_init, pixel_coords
from niff_analysis.analysis.gaussian import fit_status
from niff_analysis.models import create_model

from . import show, verdict

MODEL = "resnet50_niff"


def curve_fit_loop(flat: torch.Tensor, h: int, w: int, max_iter: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Fit each kernel of (n, h, w) with ``scipy.optimize.curve_fit``: (params (n, 7), status)."""
    from scipy.optimize import OptimizeWarning, curve_fit

    mag = flat.abs().double().reshape(len(flat), h * w)
    data = mag / mag.max(1, keepdim=True).values
    x, y = pixel_coords(h, w)
    p0 = moment_init(data, x, y).numpy()
    xy, params = (x.numpy(), y.numpy()), np.full((len(data), 7), np.nan)
    converged = np.zeros(len(data), dtype=bool)
    for i, row in enumerate(data.numpy()):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OptimizeWarning)
                params[i], _ = curve_fit(gaussian_model, xy, row, p0=p0[i], maxfev=max_iter * 8)
            converged[i] = True
        except (RuntimeError, ValueError):  # maxfev reached or a non-finite model value
            pass
    return params, fit_status(params, h, w, converged)


def gaussian_vs_curve_fit(model: torch.nn.Module, sample: int) -> pd.DataFrame:
    """Per kernel size: gaussian_fit's time (all kernels), curve_fit's (sampled, extrapolated), agreement."""
    kernels = extract_kernels(model)
    t0 = time.perf_counter()
    gaussian_fit(kernels)  # the first call in a process also loads the compiled CPU solver
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    fits = gaussian_fit(kernels)
    ours_s = time.perf_counter() - t0
    rows = []
    gen = np.random.default_rng(0)
    for size in sorted({lk.size for lk in kernels}):
        layers = [lk for lk in kernels if lk.size == size]
        flat = torch.cat([lk.flat for lk in layers])
        ours = pd.concat([fits[fits.layer == lk.name] for lk in layers], ignore_index=True)
        pick = np.sort(gen.choice(len(flat), size=min(sample, len(flat)), replace=False))
        t0 = time.perf_counter()
        params, status = curve_fit_loop(flat[pick], *size)
        per_kernel = (time.perf_counter() - t0) / len(pick)
        both = (status == "ok") & ours.success.to_numpy()[pick]
        if both.any():
            d = derived(torch.as_tensor(params[both]))
            rel = np.maximum(
                np.abs(d["sigma_x"].numpy() / ours.sigma_x.to_numpy()[pick][both] - 1),
                np.abs(d["sigma_y"].numpy() / ours.sigma_y.to_numpy()[pick][both] - 1),
            )
        else:
            rel = np.array([np.nan])
        rows.append(
            dict(
                size=f"{size[0]}x{size[1]}",
                kernels=len(flat),
                sampled=len(pick),
                curve_fit_ms_per_kernel=1e3 * per_kernel,
                curve_fit_est_s=per_kernel * len(flat),
                ok_ours=float(ours.success.mean()),
                ok_curve_fit=float((status == "ok").mean()),
                status_agree=float((status == ours.status.to_numpy()[pick]).mean()),
                both_ok=int(both.sum()),
                sigma_rel_diff_median=float(np.median(rel)),
                sigma_rel_diff_max=float(np.max(rel)),
            )
        )
    frame = pd.DataFrame(rows)
    frame.attrs["ours_s"] = ours_s
    frame.attrs["first_s"] = first_s
    return frame


def pipeline(model: torch.nn.Module) -> pd.DataFrame:
    """Time the CLI's describe, mass, pca and gaussian on a saved checkpoint of ``model``."""
    from click.testing import CliRunner

    from niff_analysis.checkpoint import save_checkpoint
    from niff_analysis.cli import main

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_checkpoint(model, Path(tmp) / MODEL)
        for cmd in ("describe", "mass", "pca", "gaussian"):
            args = [cmd, str(ckpt)] + ([] if cmd == "describe" else ["--quiet"])
            t0 = time.perf_counter()
            res = CliRunner().invoke(main, args)
            seconds = time.perf_counter() - t0
            err = "" if res.exit_code == 0 else (res.output.strip().splitlines() or [repr(res.exception)])[-1]
            rows.append(dict(command=f"niff-analyze {cmd}", seconds=seconds, exit_code=res.exit_code, error=err[:80]))
    return pd.DataFrame(rows)


def scale(quick: bool = False) -> pd.DataFrame:
    """Wall time of ``niff-analyze gaussian`` on the bundled baseline and NIFF default."""
    import subprocess
    import sys

    from niff_analysis.checkpoint import BUNDLED_DIR

    rows = []
    for name in ("resnet18_fmnist", "resnet18_niff_fmnist"):
        cmd = [sys.executable, "-m", "niff_analysis", "gaussian", str(BUNDLED_DIR / name), "--quiet"]
        cmd += ["--max-kernels", "2000"] if quick else []
        t0 = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        err = "" if res.returncode == 0 else (res.stderr.strip().splitlines() or ["?"])[-1][:80]
        rows.append(dict(checkpoint=name, seconds=seconds, exit_code=res.returncode, error=err))
    return pd.DataFrame(rows)


def _fit_data(flat: torch.Tensor) -> torch.Tensor:
    """What the solvers fit: |k| of each kernel scaled by its peak, float64; zero kernels dropped."""
    mag = flat.abs().double().reshape(len(flat), -1)
    peak = mag.max(1, keepdim=True).values
    return (mag / peak)[peak[:, 0] > 0]


def _reference_solver() -> ModuleType:
    """The tests' reference solver, ``tests/lm_reference.py`` of this source tree."""
    path = Path(__file__).resolve().parents[1] / "tests" / "lm_reference.py"
    spec = importlib.util.spec_from_file_location("lm_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def solvers(quick: bool = False, sample: int = 4096) -> pd.DataFrame:
    """Compiled solver vs the batched torch reference on ``sample`` baseline kernels per map size."""
    from niff_analysis.analysis import gaussian as g
    from niff_analysis.checkpoint import BUNDLED_DIR

    ref = _reference_solver()

    sample = 512 if quick else sample
    layers = extract_kernels(BUNDLED_DIR / "resnet18_fmnist", include_conv=True)
    rng = np.random.default_rng(0)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    try:
        for size in sorted({lk.size for lk in layers}, reverse=True):
            flat = torch.cat([lk.flat for lk in layers if lk.size == size])
            flat = flat[torch.as_tensor(rng.choice(len(flat), min(sample, len(flat)), replace=False))]
            mag = _fit_data(flat)
            h, w = size
            g._solve(mag[:2], h, w, 200)  # compiled code loaded before timing
            t0 = time.perf_counter()
            pn, sn, _ = g._solve(mag, h, w, 200, threads=1)
            compiled_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            pt, st, _ = ref.solve(mag, h, w, 200, batch=min(8192, (1 << 17) // (h * w)))
            torch_s = time.perf_counter() - t0
            a, b = g.fit_status(pt, h, w, st), g.fit_status(pn, h, w, sn)
            ok = (a == "ok") & (b == "ok")
            rows.append(
                dict(
                    size=f"{h}x{w}",
                    kernels=len(mag),
                    torch_s=torch_s,
                    compiled_s=compiled_s,
                    speedup=torch_s / compiled_s,
                    same_status=float(np.mean(a == b)),
                    ok=int(ok.sum()),
                    max_param_diff=float(np.abs(pt.numpy() - pn)[ok].max()) if ok.any() else 0.0,
                )
            )
    finally:
        torch.set_num_threads(before)
    return pd.DataFrame(rows)


def give_up_rules(quick: bool = False, sample: int = 2000) -> pd.DataFrame:
    """What the early give-up rules cost and save on the bundled checkpoints' kernels."""
    from niff_analysis.analysis import gaussian as g
    from niff_analysis.analysis.lm import levenberg_marquardt
    from niff_analysis.checkpoint import BUNDLED_DIR

    rng = np.random.default_rng(0)
    threads = torch.get_num_threads()
    rows = []
    for name in ("resnet18_fmnist", "resnet18_niff_fmnist"):
        layers = extract_kernels(BUNDLED_DIR / name, include_conv=True)
        for size in sorted({lk.size for lk in layers}, reverse=True):
            flat = torch.cat([lk.flat for lk in layers if lk.size == size])
            if quick:
                flat = flat[torch.as_tensor(rng.choice(len(flat), min(sample, len(flat)), replace=False))]
            mag = _fit_data(flat)
            h, w = size
            x, y = pixel_coords(h, w, dtype=torch.float64)
            start = moment_init(mag, x, y).numpy()
            g._solve(mag[:2], h, w, 200)  # compiled code loaded before timing
            t0 = time.perf_counter()
            pr, sr, ir = g._solve(mag, h, w, 200, threads=threads)
            rules_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            pn, sn, i_n = levenberg_marquardt(
                mag.numpy(), x.numpy(), y.numpy(), start, h, w, max_iter=200, give_up=None, threads=threads
            )
            none_s = time.perf_counter() - t0
            a, b = g.fit_status(pr, h, w, sr), g.fit_status(pn, h, w, sn)
            lost = (a != "ok") & (b == "ok")
            both = (a == "ok") & (b == "ok")
            rows.append(
                dict(
                    checkpoint=name,
                    size=f"{h}x{w}",
                    kernels=len(mag),
                    rules_s=rules_s,
                    none_s=none_s,
                    iter_rules=int(ir.sum()),
                    iter_none=int(i_n.sum()),
                    ok_rules=int((a == "ok").sum()),
                    ok_none=int((b == "ok").sum()),
                    lost=int(lost.sum()),
                    gained=int(((a == "ok") & (b != "ok")).sum()),
                    lost_as=", ".join(f"{k} {v}" for k, v in pd.Series(a[lost]).value_counts().items()),
                    max_param_diff=float(np.abs(pr - pn)[both].max()) if both.any() else 0.0,
                )
            )
    return pd.DataFrame(rows)


def run(
    quick: bool = False,
    device: torch.device = torch.device("cpu"),
    sample: int | None = None,
    with_pipeline: bool = True,
) -> pd.DataFrame:
    """Both parts; returns the Gaussian comparison table (the pipeline table is printed)."""
    sample = sample or (4 if quick else 24)
    torch.manual_seed(0)
    model = create_model(MODEL).eval()
    frame = gaussian_vs_curve_fit(model, sample)
    ours_s = frame.attrs["ours_s"]
    est_s = float(frame.curve_fit_est_s.sum())
    show(
        f"analysis: Gaussian fits of all {int(frame.kernels.sum())} NIFF kernels of {MODEL} "
        f"(curve_fit on {sample} sampled kernels per size, extrapolated)",
        frame,
    )
    speedup = est_s / ours_s
    print(
        f"  gaussian_fit {ours_s:.2f} s ({frame.attrs['first_s']:.2f} s for the process's first "
        f"call, which loads the compiled solver), curve_fit loop (est.) {est_s:.1f} s: "
        f"{speedup:.1f}x (target >= 20: {verdict(speedup, 20, False)})"
    )
    if with_pipeline:
        pipe = pipeline(model)
        total = float(pipe.seconds.sum())
        show(f"analysis: CLI pipeline on a {MODEL} checkpoint", pipe)
        print(f"  total {total:.1f} s (target <= 30 s: {verdict(total, 30)})")
        frame.attrs["pipeline_s"] = total
        sol = solvers(quick)
        show(
            "analysis: compiled solver vs the tests' batched torch reference, bundled baseline's kernels "
            "(seeded sample per size, one thread each)",
            sol,
        )
        print(
            f"  all sizes: torch {sol.torch_s.sum():.1f} s, compiled {sol.compiled_s.sum():.1f} s: "
            f"{sol.torch_s.sum() / sol.compiled_s.sum():.1f}x"
        )
        rules = give_up_rules(quick)
        show(
            "analysis: the solver's early give-up rules against none, bundled checkpoints' kernels "
            "(compiled, all threads)",
            rules,
        )
        for name, part in rules.groupby("checkpoint", sort=False):
            print(
                f"  {name}: {part.iter_none.sum() / part.iter_rules.sum():.2f}x fewer iterations, "
                f"{part.none_s.sum() / part.rules_s.sum():.2f}x less time; {part.lost.sum()} of "
                f"{part.ok_none.sum()} fits ok without the rules fail with them, "
                f"{part.gained.sum()} the other way"
            )
        big = scale(quick)
        show("analysis: niff-analyze gaussian on the bundled checkpoints (fresh process each)", big)
        base_s = float(big.seconds.iloc[0])
        print(
            f"  baseline {base_s:.1f} s, {base_s / float(big.seconds.iloc[1]):.1f}x the NIFF default "
            f"(target <= 60 s{' on all kernels' if not quick else ''}: {verdict(base_s, 60)})"
        )
        frame.attrs["baseline_gaussian_s"] = base_s
    frame.attrs["speedup"] = speedup
    return frame
