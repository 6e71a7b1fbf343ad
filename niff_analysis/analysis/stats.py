"""Per-layer kernel statistics: the few numbers that say how large a layer's kernels are.

One call summarises every layer of a model with the same library functions the analysis
commands use (:func:`~niff_analysis.analysis.mass.kernel_mass`, :func:`mass_summary`,
:func:`effective_sizes`, :func:`~niff_analysis.analysis.gaussian.gaussian_fit`), so a row
recorded during training equals what ``niff-analyze mass`` / ``gaussian`` print on the same
weights. The trainer records them at initialisation, after every epoch and optionally every N
steps (``kernel_stats.csv`` in the run folder, read back by :func:`read_kernel_stats`).

Statistics (long form, one row per layer, measure and statistic; the ``measure`` column says
what a pixel's mass is: ``l1`` = |k| as Eq. 6, ``energy`` = k², ``any`` for statistics that do
not depend on it):

* per measure (``l1`` and ``energy``): ``mass1_mean`` (the centre pixel's share: 1 for a delta,
  small for a kernel that is a faint pattern without a peak), ``mass3_mean``, ``mass3_std``,
  ``mass5_…``, ``mass9_…``: mean and std over the layer's kernels of the mass ratio at
  s = 1, 3, 5, 9. A window at least as large as the kernel covers all of it, so on kernels no
  larger than s the ratio is 1 (e.g. ``mass9`` of an 8×8 layer). ``k50_mean``, ``k50_median``,
  ``k90_mean``, ``k90_median``: the per-kernel effective size (the smallest odd window holding
  50 / 90 % of the mass), mean and median over kernels.
* ``any``: ``sigma_x_median``, ``sigma_y_median``, ``sigma_ratio_mean``, ``sigma_ratio_median``:
  median σx, σy and mean and median σx/σy of the successful 2-D Gaussian fits (NaN when none
  succeeded); ``gauss_ok``: the fraction of fitted kernels whose fit succeeded; ``gauss_n``: how
  many kernels were fitted; ``n_kernels``: the layer's kernel count (all-zero kernels have NaN
  mass and are left out of the mass statistics, as in :func:`mass_summary`).

Files written before the measure was recorded (no ``measure`` column, no ``mass1_mean`` or
``sigma_ratio_median``) read as they were measured: their mass and size statistics are ``l1``,
the others ``any`` (:func:`read_kernel_stats`). A run started by that code and resumed by this
one keeps its earlier records in that reading and records both measures from then on.

Gaussian fits cost the most. A layer with more than ``gaussian_max_kernels`` kernels (only dense
convolutions of baselines reach the default 1,024: a 256→256 3×3 conv has 65,536) is fitted on
that many kernels evenly spaced over its channel index, so the statistic stays a cheap,
deterministic sample; NIFF layers have one kernel per channel and are fitted whole.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..runs import STATS_NAME
from .gaussian import gaussian_fit
from .kernels import LayerKernels, subsample
from .mass import MEASURES, check_measure, effective_sizes, kernel_mass, mass_summary
from .schema import CHECKPOINT, EPOCH, LAYER, MEASURE, STAGE, STEP, keys

WINDOWS = (3, 5, 9)
#: Statistics recorded under each measure (rows with measure ``l1`` and ``energy``).
MASS_STATS = (
    ["mass1_mean"]
    + [f"mass{s}_{a}" for s in WINDOWS for a in ("mean", "std")]
    + ["k50_mean", "k50_median", "k90_mean", "k90_median"]
)
#: Statistics that no measure changes (rows with measure ``any``).
SHARED_STATS = [
    "sigma_x_median",
    "sigma_y_median",
    "sigma_ratio_mean",
    "sigma_ratio_median",
    "gauss_ok",
    "gauss_n",
    "n_kernels",
]
STATS = MASS_STATS + SHARED_STATS
#: Statistics that count kernels: :func:`history_table` shows them as integers.
COUNT_STATS = ("gauss_n", "n_kernels")
ANY = "any"  #: the measure of a statistic that does not depend on one
COLUMNS = [LAYER, STAGE, MEASURE, "stat", "value"]
HISTORY_COLUMNS = [EPOCH, STEP] + COLUMNS
FILE_NAME = STATS_NAME  # in every run folder (niff_analysis.runs)


def measure_of(stat: str) -> str:
    """The measure a statistic of a file without a ``measure`` column was recorded under: mass
    ratios and effective sizes were |k| (``l1``, Eq. 6), everything else is ``any``."""
    return "l1" if stat.startswith(("mass", "k50", "k90")) else ANY


def _mass_at(summary: pd.DataFrame, s: int) -> tuple[float, float]:
    """Mean and std at window s (odd windows run 1, 3, 5, … so s is there unless the kernel is
    smaller, and then the window covers the whole kernel: the last row)."""
    hit = np.flatnonzero(summary["window"].to_numpy() == s)
    row = summary.iloc[int(hit[0]) if len(hit) else -1]
    return float(row["mean"]), float(row["std"])


def kernel_stats(
    kernels: Sequence[LayerKernels],
    gaussian_max_kernels: int | None = 1024,
    device: object = "cpu",
    mass: dict[str, pd.DataFrame] | None = None,
    measures: Sequence[str] = MEASURES,
) -> pd.DataFrame:
    """The statistics listed in the module docstring for every layer.

    Args:
        kernels: layers from :func:`~niff_analysis.analysis.extract_kernels`.
        gaussian_max_kernels: fit at most this many kernels per layer (evenly spaced); ``None``
            fits all.
        device: deprecated and ignored: the Gaussian fits run on the CPU whatever the device
            (:func:`~niff_analysis.analysis.gaussian.gaussian_fit`); the trainer still passes
            its training device.
        mass: measure → :func:`~niff_analysis.analysis.kernel_mass` of ``kernels`` under it, for
            the measures the caller has already computed (the costly part).
        measures: the measures to record (both by default).

    Returns:
        Columns layer, stage, measure, stat, value; per layer the :data:`MASS_STATS` of each
        measure, then the :data:`SHARED_STATS` (measure ``any``).
    """
    kernels = list(kernels)
    if not kernels:
        return pd.DataFrame(columns=COLUMNS)
    rows: dict[str, list] = {lk.name: [] for lk in kernels}
    for measure in measures:
        m = (mass or {}).get(check_measure(measure))
        m = kernel_mass(kernels, measure) if m is None else m
        summ = mass_summary(m)
        sizes = effective_sizes(m, quantiles=(0.5, 0.9))
        for lk in kernels:
            vals: dict[str, float] = {}
            ls = summ[summ["layer"] == lk.name]
            vals["mass1_mean"] = _mass_at(ls, 1)[0]
            for s in WINDOWS:
                vals[f"mass{s}_mean"], vals[f"mass{s}_std"] = _mass_at(ls, s)
            sz = sizes[sizes["layer"] == lk.name]
            for q in (50, 90):
                vals[f"k{q}_mean"] = float(sz[f"size_{q}"].mean())
                vals[f"k{q}_median"] = float(sz[f"size_{q}"].median())
            rows[lk.name] += [(lk.name, lk.stage, measure, k, vals[k]) for k in MASS_STATS]
    fits = gaussian_fit(subsample(kernels, gaussian_max_kernels))
    for lk in kernels:
        vals = {}
        f = fits[fits["layer"] == lk.name]
        ok = f[f["success"].astype(bool)]
        vals["sigma_x_median"] = float(ok["sigma_x"].median()) if len(ok) else float("nan")
        vals["sigma_y_median"] = float(ok["sigma_y"].median()) if len(ok) else float("nan")
        vals["sigma_ratio_mean"] = float(ok["sigma_ratio"].mean()) if len(ok) else float("nan")
        vals["sigma_ratio_median"] = float(ok["sigma_ratio"].median()) if len(ok) else float("nan")
        vals["gauss_ok"] = len(ok) / len(f) if len(f) else float("nan")
        vals["gauss_n"] = float(len(f))
        vals["n_kernels"] = float(lk.flat.shape[0])
        rows[lk.name] += [(lk.name, lk.stage, ANY, k, vals[k]) for k in SHARED_STATS]
    return pd.DataFrame([r for layer_rows in rows.values() for r in layer_rows], columns=COLUMNS)


def stats_csv(history: pd.DataFrame) -> str:
    """``kernel_stats.csv`` text of a history table (full float precision, so it round-trips)."""
    return history[HISTORY_COLUMNS].to_csv(index=False, float_format="%.17g")


def read_kernel_stats(path: str | os.PathLike) -> pd.DataFrame:
    """A run's (or checkpoint's) kernel statistics: ``kernel_stats.csv`` in a folder, or the file.

    A file written before the measure was recorded (no ``measure`` column) gets one by
    :func:`measure_of`: its mass ratios and sizes are ``l1``, the rest ``any``.

    Returns:
        Columns epoch, step, layer, stage, measure, stat, value.

    Raises:
        FileNotFoundError: there is no such file.
        ValueError: the file is not a kernel-statistics table, holds a non-numeric epoch, step or
            value, or is truncated (a cut row, or a last record with fewer rows than the others);
            the message names the file and the row.
    """
    path = Path(path)
    if path.is_dir():
        path = path / FILE_NAME
    try:
        df = pd.read_csv(path, dtype={"layer": str, "stage": str, "stat": str, MEASURE: str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a kernel-statistics table ({' '.join(str(exc).split())})") from None
    if MEASURE not in df.columns and "stat" in df.columns:  # written before both measures were recorded
        df.insert(
            int(df.columns.get_loc("stat")),
            MEASURE,
            df["stat"].map(lambda s: measure_of(s) if isinstance(s, str) else np.nan),
        )
    missing = [c for c in HISTORY_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: not a kernel-statistics table (missing column {missing[0]!r})")
    df = df[HISTORY_COLUMNS]
    for col in (EPOCH, STEP, "value"):  # a hand edit or a foreign file: never a TypeError later
        numeric = pd.to_numeric(df[col], errors="coerce")
        bad = numeric.isna() & df[col].notna()
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise ValueError(f"{path}: row {i + 2} has a non-numeric {col} {df[col].iloc[i]!r}")
        df[col] = numeric
    with open(path, "rb") as f:  # the writer ends every row with a newline; a cut file does not
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(size - 1, 0))
        ends_cut = size > 0 and f.read(1) != b"\n"
    if ends_cut:
        raise ValueError(f"{path}: the last row is cut off (a truncated file)")
    cut = df[[EPOCH, STEP, LAYER, "stat"]].isna().any(axis=1)
    if cut.any():
        i = int(np.flatnonzero(cut.to_numpy())[0])
        raise ValueError(f"{path}: row {i + 2} is incomplete (a truncated or hand-edited file)")
    sizes = df.groupby(STEP, sort=False).size()
    if len(sizes) > 1 and sizes.iloc[-1] < sizes.iloc[:-1].max():
        raise ValueError(
            f"{path}: the record at step {int(sizes.index[-1])} has {int(sizes.iloc[-1])} rows, the "
            f"others {int(sizes.iloc[:-1].max())} (a truncated file)"
        )
    return df


def history_table(history: pd.DataFrame, stats: Sequence[str] = STATS, measure: str = "l1") -> pd.DataFrame:
    """The long history as a table for people: one row per (checkpoint, measure, epoch, step,
    layer), one column per statistic in ``stats`` (in that order); the counts
    (:data:`COUNT_STATS`) as integers.

    Args:
        history: :func:`read_kernel_stats` rows (with a leading ``checkpoint`` column, maybe).
            Columns ``lo``, ``hi`` (an interval over seeds) become ``<stat>_lo``, ``<stat>_hi``.
        stats: the statistics to show.
        measure: ``l1``, ``energy`` or ``both``: the mass statistics of that measure (one block
            of rows per measure for ``both``) beside the measure-free ones, which repeat.
    """
    measures = MEASURES if measure == "both" else (check_measure(measure),)
    values = ["value"] + [c for c in ("lo", "hi") if c in history.columns]
    if MEASURE not in history.columns:
        history = history.assign(**{MEASURE: history["stat"].map(measure_of)})
    frames = []
    for m in measures:
        part = history[history[MEASURE].isin([m, ANY])]
        by = [c for c in keys(part, EPOCH, STEP, LAYER) if c != MEASURE]
        wide = part.pivot_table(index=by, columns="stat", values=values, sort=False)
        cols = {}
        for s in stats:
            for v in values:
                if (v, s) in wide.columns:
                    cols[s if v == "value" else f"{s}_{v}"] = wide[(v, s)]
        out = pd.DataFrame(cols).reset_index()
        out.insert(1 if CHECKPOINT in out.columns else 0, MEASURE, m)
        frames.append(out)
    out = pd.concat(frames, ignore_index=True)
    out.columns.name = None
    for col in [c for s in COUNT_STATS for c in (s, f"{s}_lo", f"{s}_hi") if c in out.columns]:
        # The long form holds every value as a float; a count reads 64, not 64.0 (a mean over
        # seeds that is no whole number stays a float).
        known = out[col].dropna()
        if (known == known.round()).all():
            out[col] = out[col].round().astype("Int64")
    return out


def counts_as_integers(long: pd.DataFrame) -> pd.DataFrame:
    """The long form of recorded statistics with each count (:data:`COUNT_STATS`) a whole number
    as an integer, so csv and json write 64, not 64.0; the other values stay floats (as does a
    mean count over seeds that is no whole number)."""
    out = long.copy()
    counts = out["stat"].isin(COUNT_STATS)
    for col in [c for c in ("value", "lo", "hi") if c in out.columns]:
        whole = counts & out[col].notna() & (out[col] == out[col].round())
        if whole.any():
            values = out[col].astype(object)
            values[whole] = [int(round(v)) for v in out.loc[whole, col]]
            out[col] = values
    return out


#: Per-stage statistics of :func:`stage_stats`: the mean mass ratio at s = 1 (the centre pixel's
#: share: 1 for a delta), 3 and 9, and the mean and median 50 / 90 % sizes.
STAGE_STATS = ("mass1_mean", "mass3_mean", "mass9_mean", "k50_mean", "k90_mean", "k90_median")


def stage_stats(kernels: Sequence[LayerKernels], measures: Sequence[str] = MEASURES) -> pd.DataFrame:
    """:data:`STAGE_STATS` per stage, pooled over every kernel of the stage's layers, under each
    measure (a layer without a stage is a stage of its own).

    A window at least as large as a kernel covers all of it (ratio 1).

    Returns:
        Columns stage, measure, stat, value; plus n_kernels as a stat of measure ``"any"``.
    """
    rows = []
    for measure in measures:
        mass = kernel_mass(kernels, measure)
        mass = mass.assign(stage=mass["stage"].fillna(mass["layer"]))
        sizes = effective_sizes(mass, quantiles=(0.5, 0.9))
        for stage, m in mass.groupby("stage", sort=False):
            vals = {}
            for w in (1, 3, 9):
                # Per kernel: the ratio at the largest window <= w (the whole kernel if smaller).
                at = m[m["window"] <= w].groupby(["layer", "channel"], sort=False)["mass_ratio"].last()
                vals[f"mass{w}_mean"] = float(at.mean())
            sz = sizes[sizes["stage"] == stage]
            vals["k50_mean"] = float(sz["size_50"].mean())
            vals["k90_mean"] = float(sz["size_90"].mean())
            vals["k90_median"] = float(sz["size_90"].median())
            rows += [(stage, measure, k, vals[k]) for k in STAGE_STATS]
            if measure == measures[0]:
                rows.append((stage, "any", "n_kernels", float(len(sz))))
    return pd.DataFrame(rows, columns=[STAGE, "measure", "stat", "value"])
