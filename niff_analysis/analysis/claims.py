"""The paper's claims about the kernels of its CIFAR-10 NIFF models, measured on any model, both ways.

The paper states its findings in words (the sizes in its sentences were lost in the text
extraction; SPEC §4 restates the measures). Each sentence is made measurable here with a stated
criterion, under both measures of a pixel's mass (``l1`` = |k|, Eq. 6 as the paper's code
computes it; ``energy`` = k²), because the two can read one kernel oppositely: a delta-like centre
with faint tails along the axes has a small energy footprint and a large L1 one. The sentences,
quoted from the paper, and what reads them:

* §5, on Fig. 5: *"For all models, we see a clear trend. They learn in all layers well-localized,
  small kernels. Similar to the ResNet trained on ImageNet-1k, the learned kernels barely exceed
  the size of [9×9]."* Per stage: the mean mass ratio inside 9×9 (criterion ≥ 0.9, no margin);
  "barely exceed" allows a margin of :data:`MARGIN` px, one ring of pixels: the mean mass inside
  11×11 (≥ 0.9) and the median per-kernel k90, the smallest odd window holding 90 % of a
  kernel's mass (≤ 11 px).
* §6, on Fig. 7: *"There the dominant basis vectors for the first layer learned by our NIFF
  kernels do not exceed a size of [lost] in the spatial domain."* The k90 of the first principal
  component of the first stage's kernels (≤ 9 px: the size was lost, §5's 9×9 stands in for it),
  computed two ways: pooled over all the stage's kernels, as the authors' notebook does, and per
  layer (the median over the stage's layers).
* §6, on Fig. 7: *"However, in the second layer, a few kernels ([lost]) are larger than [3×3]
  mostly [lost]."* The share of the second stage's kernels with k90 > 3 px (criterion: some, a
  minority: 0 < share < 0.5).
* §6, on Fig. 7: *"In the last layer, the kernels again do not exceed the standard size of
  [3×3]."* The last stage's mean mass inside 3×3 (≥ 0.9) and its first principal component's
  k90 (≤ 3 px), pooled and per layer (median over layers).
* App. A, on Fig. A3: *"The mean over all kernels within a layer is near to a ratio of one
  indicating that most kernels exhibit square-shapes."* σx/σy of the successful 2-D Gaussian fits
  (to |k|: the fits do not depend on the measure; measure ``any``), pooled per stage: their median
  (criterion 0.8 ≤ value ≤ 1.25, two-sided: a ratio of 1.7 is as far from square as 0.6) and,
  as its own row, their mean, the paper's statistic, which a few large ratios pull above 1
  whichever way round the ratio is taken.

**Stages are named by the feature-map size their layers run at** (``32×32``, ``16×16``, …),
the same for a NIFF model and its baseline, so rows of the two compare the same stage; the
column ``layers`` names the modules (``layer1``). "First", "second" and "last" stage are the
largest, second largest and smallest map.

**Every row carries a scale and an interval.** ``lo``/``hi``: the seeded percentile-bootstrap 95 %
interval over the stage's kernels (:mod:`~niff_analysis.analysis.uncertainty`) of a mean, median
or share; principal-component sizes have none (a PCA is not a mean over kernels), nor do
medians over layers. ``delta``, ``noise``, ``init``: the same statistic for a single-pixel kernel,
for seeded i.i.d. white noise on the same maps (:mod:`~niff_analysis.analysis.references`) and
for the model's initialisation, where given (σ rows have no delta or noise value: a delta is no
Gaussian and noise has no shape).

**Verdicts**: ``agrees`` / ``disagrees`` when the value and both ends of its interval fall on the
same side of the criterion; ``borderline`` when the interval straddles a bound; ``not testable``
when no kernel of the stage could exceed the window the criterion is about (an 8×8 map and a
9×9 window, or a baseline's 3×3 kernels: it holds by construction and says nothing); ``no data``
when nothing was measured (no successful Gaussian fit, a PCA without variance).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .gaussian import gaussian_fit
from .kernels import LayerKernels, subsample
from .mass import MEASURES, effective_sizes, kernel_mass, mass_ratios
from .pca import pca
from .references import reference_layers
from .schema import CHANNEL, LAYER, WINDOW
from .uncertainty import RESAMPLES, bootstrap_interval

COLUMNS = [
    "claim",
    "stage",
    "layers",
    "measure",
    "statistic",
    "value",
    "lo",
    "hi",
    "delta",
    "noise",
    "init",
    "criterion",
    "verdict",
]
VERDICTS = ("agrees", "disagrees", "borderline", "not testable", "no data")
MARGIN = 2  #: px that "barely exceed 9×9" allows: one ring of pixels (11×11)
GAUSS_MAX_KERNELS = 1024  #: Gaussian fits per layer at most (evenly spaced; NIFF layers are fitted whole)

LOCAL = "§5: all layers well-localized, barely beyond 9×9"
FIRST_PC = "Fig. 7: first layer's dominant eigenkernels small"
FEW = "Fig. 7: a few second-layer kernels larger than 3×3"
LAST = "Fig. 7: last layer within 3×3"
SQUARE = "App. A: σx/σy near 1 (square kernels)"


@dataclass(frozen=True)
class Criterion:
    """``low ≤ value ≤ high`` (``low < value`` where ``strict_low``); ``window``: the side of the
    centred window the claim is about (a stage whose kernels cannot exceed it cannot test it)."""

    text: str
    low: float = -math.inf
    high: float = math.inf
    strict_low: bool = False
    window: int | None = None

    def holds(self, v: float) -> bool:
        return (v > self.low if self.strict_low else v >= self.low) and v <= self.high


SIZE, LAST_SIZE = 9, 3
#: statistic → its criterion (the statistic names the claim's reading; see the module docstring).
CRITERIA = {
    "mass inside 9×9, mean over kernels (no margin)": Criterion("≥ 0.9", low=0.9, window=SIZE),
    f"mass inside {SIZE + MARGIN}×{SIZE + MARGIN} (9×9 and a 1-px margin), mean over kernels": Criterion(
        "≥ 0.9", low=0.9, window=SIZE + MARGIN
    ),
    "k90, median over kernels (px)": Criterion(f"≤ {SIZE + MARGIN}", high=SIZE + MARGIN, window=SIZE + MARGIN),
    "PC1 k90, pooled over the stage's kernels (px)": Criterion(f"≤ {SIZE}", high=SIZE, window=SIZE),
    "PC1 k90, median over the stage's layers (px)": Criterion(f"≤ {SIZE}", high=SIZE, window=SIZE),
    "share of kernels with k90 > 3": Criterion(
        "0 < share < 0.5", low=0.0, high=0.5 - 1e-12, strict_low=True, window=LAST_SIZE
    ),
    "mass inside 3×3, mean over kernels": Criterion("≥ 0.9", low=0.9, window=LAST_SIZE),
    "last-stage PC1 k90, pooled over the stage's kernels (px)": Criterion(
        f"≤ {LAST_SIZE}", high=LAST_SIZE, window=LAST_SIZE
    ),
    "last-stage PC1 k90, median over the stage's layers (px)": Criterion(
        f"≤ {LAST_SIZE}", high=LAST_SIZE, window=LAST_SIZE
    ),
    "σx/σy, median over the stage's fits": Criterion("0.8 … 1.25", low=0.8, high=1.25),
    "σx/σy, mean over the stage's fits (the paper's statistic)": Criterion("0.8 … 1.25", low=0.8, high=1.25),
}


@dataclass
class Stage:
    """The layers that run at one feature-map size.

    Attributes:
        name: ``"H×W"`` of the map.
        layers: the layers.
        modules: the module stages they belong to (``"layer1"``), or their names.
        support: the largest centred window any of their kernels can fill: the map's larger side
            for a NIFF layer, the (dilated) kernel's for a plain convolution.
    """

    name: str
    layers: list[LayerKernels]
    modules: str
    support: int


def _support(lk: LayerKernels) -> int:
    h, w = lk.size
    if lk.kind != "conv" or "kernel_size" not in lk.extra:
        return max(h, w)
    dil = lk.extra.get("dilation", (1, 1))
    reach = max((k // 2) * d for k, d in zip(lk.extra["kernel_size"], dil))
    return min(2 * reach + 1, max(h, w))


def stages(kernels: Sequence[LayerKernels]) -> list[Stage]:
    """The layers grouped by feature-map size, largest map first (the paper's "first layer")."""
    by: dict = {}
    for lk in kernels:
        by.setdefault(tuple(lk.size), []).append(lk)
    out = []
    for (h, w), lks in sorted(by.items(), key=lambda kv: -kv[0][0] * kv[0][1]):
        mods = list(dict.fromkeys(lk.stage or lk.name for lk in lks))
        out.append(Stage(f"{h}×{w}", lks, ",".join(mods), max(_support(lk) for lk in lks)))
    return out


def _k90(image: np.ndarray, measure: str) -> float:
    """Smallest odd window holding 90 % of one centred image's mass under ``measure``."""
    if not np.any(image):
        return math.nan
    windows, ratios = mass_ratios(torch.as_tensor(image)[None], measure)
    hit = np.flatnonzero(ratios[0] >= 0.9 - 1e-12)
    return float(windows[hit[0]]) if len(hit) else math.nan


def _pc1(flat: np.ndarray, h: int, w: int) -> np.ndarray:
    comps, _, _, _ = pca(flat.reshape(len(flat), -1), 1)
    return comps[0].reshape(h, w) if len(comps) else np.zeros((h, w))


def _at_window(mass: pd.DataFrame, s: int) -> np.ndarray:
    """Per kernel, the mass ratio at window s (the whole kernel where it is smaller)."""
    return mass[mass[WINDOW] <= s].groupby([LAYER, CHANNEL], sort=False)["mass_ratio"].last().to_numpy()


def _rows(
    kernels: Sequence[LayerKernels], measures: Sequence[str], resamples: int, fits: pd.DataFrame | None
) -> list[tuple]:
    """(claim, stage, layers, measure, statistic, value, lo, hi) of every claim's statistics."""
    st = stages(kernels)
    rows = []

    def add(claim, s: Stage, measure, statistic, values=None, how="mean", value=None):
        if values is not None:
            v = np.asarray(values, dtype=float)
            v = v[~np.isnan(v)]
            value = (float(v.mean()) if how == "mean" else float(np.median(v))) if len(v) else math.nan
            lo, hi = bootstrap_interval(v, how, resamples)
        else:
            lo = hi = math.nan
        rows.append((claim, s.name, s.modules, measure, statistic, value, lo, hi))

    for measure in measures:
        pcs = {}
        for i, s in enumerate(st):
            mass = kernel_mass(s.layers, measure)
            sizes = effective_sizes(mass, quantiles=(0.9,))["size_90"].to_numpy()
            add(LOCAL, s, measure, "mass inside 9×9, mean over kernels (no margin)", _at_window(mass, SIZE))
            add(
                LOCAL,
                s,
                measure,
                f"mass inside {SIZE + MARGIN}×{SIZE + MARGIN} (9×9 and a 1-px margin), mean over kernels",
                _at_window(mass, SIZE + MARGIN),
            )
            add(LOCAL, s, measure, "k90, median over kernels (px)", sizes, how="median")
            first, last = i == 0, i == len(st) - 1
            if first or last:
                h, w = s.layers[0].size
                pooled = _k90(_pc1(np.concatenate([lk.flat.double().numpy() for lk in s.layers]), h, w), measure)
                per = [_k90(_pc1(lk.flat.double().numpy(), h, w), measure) for lk in s.layers]
                per_layer = float(np.nanmedian(per)) if np.isfinite(per).any() else math.nan
                pcs[s.name] = (pooled, per_layer)
            if first:
                add(FIRST_PC, s, measure, "PC1 k90, pooled over the stage's kernels (px)", value=pcs[s.name][0])
                add(FIRST_PC, s, measure, "PC1 k90, median over the stage's layers (px)", value=pcs[s.name][1])
            if i == 1:
                add(FEW, s, measure, "share of kernels with k90 > 3", np.where(np.isnan(sizes), np.nan, sizes > 3))
            if last and len(st) > 1:
                add(LAST, s, measure, "mass inside 3×3, mean over kernels", _at_window(mass, LAST_SIZE))
                add(LAST, s, measure, "last-stage PC1 k90, pooled over the stage's kernels (px)", value=pcs[s.name][0])
                add(LAST, s, measure, "last-stage PC1 k90, median over the stage's layers (px)", value=pcs[s.name][1])
    for s in st:
        names = {lk.name for lk in s.layers}
        if fits is None:
            ratio = np.array([])
        else:
            f = fits[fits[LAYER].isin(names) & fits["success"].astype(bool)]
            ratio = f["sigma_ratio"].to_numpy(float)
        add(SQUARE, s, "any", "σx/σy, median over the stage's fits", ratio, how="median")
        add(SQUARE, s, "any", "σx/σy, mean over the stage's fits (the paper's statistic)", ratio)
    return rows


def verdict(statistic: str, value: float, lo: float = math.nan, hi: float = math.nan, testable: bool = True) -> str:
    """The verdict of one row (module docstring) from its statistic's :data:`CRITERIA`."""
    if not testable:
        return "not testable"
    if value is None or not np.isfinite(value):
        return "no data"
    c = CRITERIA[statistic]
    ends = [c.holds(x) for x in (lo, value, hi) if x is not None and np.isfinite(x)]
    if len(set(ends)) > 1:
        return "borderline"
    return "agrees" if ends[0] else "disagrees"


def paper_claims(
    kernels: Sequence[LayerKernels],
    init: Sequence[LayerKernels] | None = None,
    measures: Sequence[str] = MEASURES,
    resamples: int = RESAMPLES,
    device: str = "cpu",
    fits: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per (claim, stage, measure, statistic): the value, its interval, the scale
    (delta, white noise, initialisation), the criterion and the verdict (module docstring).

    Args:
        kernels: a model's layers (:func:`~niff_analysis.analysis.extract_kernels`).
        init: the same layers at initialisation (the ``init`` column; NaN without).
        measures: the measures of the mass and size statistics (σ rows are measure ``any``).
        resamples: bootstrap resamples of the intervals (0: none).
        device: deprecated and ignored: the Gaussian fits run on the CPU whatever the device
            (:func:`~niff_analysis.analysis.gaussian.gaussian_fit`).
        fits: :func:`~niff_analysis.analysis.gaussian_fit` of ``kernels`` if the caller has it
            (otherwise at most :data:`GAUSS_MAX_KERNELS` evenly spaced kernels per layer are fitted).

    Returns:
        Columns :data:`COLUMNS`.
    """
    kernels = list(kernels)
    if fits is None:
        fits = gaussian_fit(subsample(kernels, GAUSS_MAX_KERNELS))
    table = pd.DataFrame(_rows(kernels, measures, resamples, fits), columns=COLUMNS[:8])
    key = ["claim", "stage", "measure", "statistic"]
    refs = {kind: _rows(reference_layers(kernels, kind), measures, 0, None) for kind in ("delta", "noise")}
    if init is not None:
        names = {lk.name for lk in kernels}
        init = [lk for lk in init if lk.name in names]
        refs["init"] = _rows(init, measures, 0, gaussian_fit(subsample(init, GAUSS_MAX_KERNELS)))
    for kind in ("delta", "noise", "init"):
        ref = pd.DataFrame(refs.get(kind, []), columns=COLUMNS[:8])[key + ["value"]].rename(columns={"value": kind})
        table = table.merge(ref, on=key, how="left")
    table.loc[table["claim"] == SQUARE, ["delta", "noise"]] = math.nan  # no Gaussian shape to speak of
    support = {s.name: s.support for s in stages(kernels)}
    table["criterion"] = table["statistic"].map(lambda s: CRITERIA[s].text)
    table["verdict"] = [
        verdict(
            r.statistic,
            r.value,
            r.lo,
            r.hi,
            (window := CRITERIA[r.statistic].window) is None or support[r.stage] > window,
        )
        for r in table.itertuples()
    ]
    return table[COLUMNS]


def pool_seeds(tables: Sequence[pd.DataFrame], level: float = 0.95) -> pd.DataFrame:
    """Claims of several runs of one recipe (one :func:`paper_claims` table per seed) as one:
    ``value`` the mean over seeds, ``lo``/``hi`` its ``level`` t-interval across seeds
    (:func:`~niff_analysis.analysis.uncertainty.seed_interval`), ``n_seeds``, the references
    (``init`` averaged over seeds), and the verdict of the mean and that interval."""
    from .uncertainty import seed_interval

    key = ["claim", "stage", "layers", "measure", "statistic", "criterion"]
    both = pd.concat(tables, ignore_index=True)
    rows = []
    for k, g in both.groupby(key, sort=False, dropna=False):
        mean, lo, hi = seed_interval(g["value"], level)
        testable = not (g["verdict"] == "not testable").any()
        rows.append(
            dict(
                zip(key, k),
                value=mean,
                lo=lo,
                hi=hi,
                delta=g["delta"].iloc[0],
                noise=g["noise"].iloc[0],
                init=g["init"].mean(),
                n_seeds=int(g["value"].notna().sum()),
                verdict=verdict(k[4], mean, lo, hi, testable),
            )
        )
    return pd.DataFrame(rows)[COLUMNS[:-1] + ["n_seeds", "verdict"]]
