"""Uncertainty of the numbers the analyses print: seeded percentile-bootstrap intervals over kernels.

A statistic over a layer's (or stage's) kernels, such as the mean mass ratio or the median σx,
gets a 95 % interval from a **percentile bootstrap**: the kernels are resampled with replacement
:data:`RESAMPLES` (1,000) times with a fixed seed (:data:`SEED`), the statistic is computed on
every resample, and the interval is the 2.5th and 97.5th percentile of those values (linear
interpolation, as ``numpy.percentile`` and ``scipy.stats.bootstrap(method="percentile")``). The
same seed gives the same interval on every run and machine. The interval says how precisely the
layer's kernels determine the statistic; it says nothing about another training run (for that,
several seeds: :func:`seed_interval`).

The resamples are drawn so that large layers (a baseline layer has up to 262,144 kernels) stay
cheap, without changing what is computed:

* values that are all equal have a degenerate interval (every resample gives that value);
* a column with few distinct values (effective sizes, shares, masses of kernels smaller than the
  window) is resampled through its value counts: the counts of a resample are multinomial;
* the median of a resample of sorted values is an order statistic of uniformly drawn positions,
  whose position is drawn directly (the r-th of n uniform variates follows Beta(r, n − r + 1));
* otherwise the resample indices are drawn explicitly, in chunks.

Each is the same distribution as resampling the kernels one by one; ``tests/test_uncertainty.py``
compares the intervals with ``scipy.stats.bootstrap``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

RESAMPLES = 1000  #: bootstrap resamples per interval
SEED = 0  #: seed of every bootstrap
LEVEL = 0.95  #: confidence level of every interval
STATISTICS = ("mean", "median", "gmean")
_FEW = 256  # at most this many distinct values: resample the value counts
_CHUNK = 2**24  # resample indices drawn at a time (64 MiB of int32)


def _percentiles(boot: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.percentile(boot, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def _median_positions(rng: np.random.Generator, n: int, resamples: int) -> tuple[np.ndarray, np.ndarray]:
    """0-based positions in the sorted sample of the two middle order statistics of each
    resample of size n (the same position twice for odd n).

    A resample draws n positions floor(n·u) from uniform u; flooring keeps their order, so its
    r-th smallest is floor(n·u_(r)), and u_(r) ~ Beta(r, n − r + 1). For even n the next one is
    the smallest of the n − r variates above u_(r): u_(r) + (1 − u_(r))·Beta(1, n − r).
    """
    r = (n + 1) // 2
    u = rng.beta(r, n - r + 1, size=resamples)
    first = np.minimum((n * u).astype(np.int64), n - 1)
    if n % 2:
        return first, first
    v = u + (1 - u) * rng.beta(1, n - r, size=resamples)
    return first, np.minimum((n * v).astype(np.int64), n - 1)


def bootstrap_interval(
    values, statistic: str = "mean", resamples: int = RESAMPLES, level: float = LEVEL, seed: int = SEED
) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``statistic`` over ``values`` (NaN left out).

    Args:
        values: one value per kernel.
        statistic: ``"mean"``, ``"median"`` or ``"gmean"`` (geometric mean: exp of the mean of
            the logs; values must be positive).
        resamples: bootstrap resamples (module docstring); 0 gives no interval (NaN, NaN).
        level: confidence level.
        seed: the generator's seed.

    Returns:
        (lo, hi); (NaN, NaN) without values, (v, v) for a single value or equal values.
    """
    if statistic not in STATISTICS:
        raise ValueError(f"unknown statistic {statistic!r}; choose from {', '.join(STATISTICS)}")
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[~np.isnan(x)]
    if statistic == "gmean":
        if (x <= 0).any():
            raise ValueError("a geometric mean needs positive values")
        lo, hi = bootstrap_interval(np.log(x), "mean", resamples, level, seed)
        return math.exp(lo), math.exp(hi)
    n = len(x)
    if resamples <= 0 or n == 0:
        return math.nan, math.nan
    if x.min() == x.max():
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    if statistic == "median":
        s = np.sort(x)
        a, b = _median_positions(rng, n, resamples)
        return _percentiles((s[a] + s[b]) / 2, level)
    uniq, counts = np.unique(x, return_counts=True)
    if len(uniq) <= _FEW:
        m = rng.multinomial(n, counts / n, size=resamples)
        return _percentiles(m @ uniq / n, level)
    boot = np.empty(resamples)
    step = max(1, _CHUNK // n)
    for start in range(0, resamples, step):
        stop = min(resamples, start + step)
        idx = rng.integers(0, n, size=(stop - start, n), dtype=np.int64 if n >= 2**31 else np.int32)
        boot[start:stop] = x[idx].mean(axis=1)
    return _percentiles(boot, level)


def _key(values) -> tuple:
    """A group key that finds itself: None and NaN (a layer without a stage) compare equal."""
    return tuple("\0missing" if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in values)


def add_intervals(
    table: pd.DataFrame,
    data: pd.DataFrame,
    by: Sequence[str],
    columns: dict[str, tuple[str, str]],
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = SEED,
) -> pd.DataFrame:
    """``table`` with ``<name>_lo`` and ``<name>_hi`` after each named statistic.

    Args:
        table: one row per group of ``data`` (its ``by`` columns identify the group).
        data: one row per kernel.
        by: the group columns, in both tables.
        columns: name of the statistic in ``table`` → (column of ``data``, statistic).
        resamples, level, seed: see :func:`bootstrap_interval`.
    """
    out = table.copy()
    if resamples <= 0 or out.empty:
        return out
    groups = {_key(k if isinstance(k, tuple) else (k,)): g for k, g in data.groupby(list(by), sort=False, dropna=False)}
    for name, (col, stat) in columns.items():
        lo, hi = [], []
        for key in out[list(by)].itertuples(index=False, name=None):
            g = groups.get(_key(key))
            a, b = (math.nan, math.nan) if g is None else bootstrap_interval(g[col], stat, resamples, level, seed)
            lo.append(a)
            hi.append(b)
        at = out.columns.get_loc(name) + 1
        out.insert(at, f"{name}_lo", lo)
        out.insert(at + 1, f"{name}_hi", hi)
    return out


def seed_interval(values, level: float = LEVEL) -> tuple[float, float, float]:
    """Mean over seeds and its ``level`` t-interval (the convention of
    :func:`niff_analysis.train.sweep.seed_summary`): (mean, lo, hi); lo = hi = mean for one seed."""
    from scipy import stats as sps

    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if not len(v):
        return math.nan, math.nan, math.nan
    mean = float(v.mean())
    if len(v) < 2:
        return mean, mean, mean
    half = float(sps.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return mean, mean - half, mean + half


def proportion_interval(successes: int, trials: int, level: float = LEVEL) -> tuple[float, float]:
    """The Wilson score ``level`` interval of a proportion (e.g. a test accuracy: the
    uncertainty from the finite test set, not from the seed); (nan, nan) for no trials."""
    from scipy import stats as sps

    if trials <= 0:
        return math.nan, math.nan
    ci = sps.binomtest(int(successes), int(trials)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def interval_text(
    value: float, lo: float = math.nan, hi: float = math.nan, digits: int = 3, decimals: int | None = None
) -> str:
    """``"value [lo, hi]"`` for people, or ``"value"`` where the interval is unknown (NaN bounds);
    rounded to ``digits`` significant places, or to ``decimals`` places after the point."""

    def fmt(v) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "nan"
        return f"{v:.{decimals}f}" if decimals is not None else f"{v:.{digits}g}"

    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return fmt(value)
    return f"{fmt(value)} [{fmt(lo)}, {fmt(hi)}]"


def with_interval_text(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """For people: every ``X`` with ``X_lo``/``X_hi`` beside it becomes the text
    ``"value [lo, hi]"`` (:func:`interval_text`, ``digits`` significant places) and the bounds
    are dropped."""
    out = table.copy()
    for col in list(out.columns):
        if f"{col}_lo" in out.columns and f"{col}_hi" in out.columns:
            out[col] = [
                interval_text(v, a, b, digits)
                for v, a, b in zip(
                    out[col].astype(float), out[f"{col}_lo"].astype(float), out[f"{col}_hi"].astype(float)
                )
            ]
            out = out.drop(columns=[f"{col}_lo", f"{col}_hi"])
    return out
