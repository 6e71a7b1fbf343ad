"""The paper's claims about the kernels of its CIFAR-10 NIFF models, checked on any model.

The paper states them in words (its sizes were lost in the text extraction; SPEC §4 restates
the measures), so each claim is made measurable here with a stated criterion:

* §5 / Fig. 5, *all layers learn well-localized, small kernels that barely exceed 9×9*: per
  stage, the mean mass ratio (Eq. 6) inside 9×9 (criterion ≥ 0.9) and the mean per-kernel k90
  (smallest odd window holding 90 % of the mass; criterion ≤ 9).
* §6 / Fig. 7, *the dominant eigenkernels of the first layer are small*: k90 of the first
  principal component of each layer of the first stage, averaged (criterion ≤ 9).
* Fig. 7, *in the second layer a few kernels are larger than 3×3*: the share of the second
  stage's kernels with k90 > 3 (criterion: some, but a minority: 0 < share < 0.5).
* Fig. 7, *in the last layer the kernels do not exceed 3×3*: the last stage's mean mass inside
  3×3 (criterion ≥ 0.9) and the k90 of its first principal components (criterion ≤ 3).
* App. A / Fig. A3, *σx/σy is near 1 in every layer*: the smallest and largest per-layer mean
  σx/σy of the successful Gaussian fits, per stage (criterion: within 0.8 … 1.25).

"Stage" is the group of layers the paper calls a layer (``layer1`` … ``layer4`` of a ResNet).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch

from .kernels import LayerKernels
from .mass import effective_sizes, kernel_mass, mass_ratios
from .pca import pca_eigenkernels
from .schema import LAYER, STAGE
from .stats import kernel_stats

COLUMNS = ["claim", "stage", "statistic", "value", "criterion", "agrees"]
MASS_MIN, SIZE_MAX, LAST_SIZE_MAX, SHARE_MAX, RATIO_RANGE = 0.9, 9, 3, 0.5, (0.8, 1.25)


def _k90(image: np.ndarray) -> float:
    """Smallest odd window holding 90 % of the L1 mass of one centred image."""
    windows, ratios = mass_ratios(torch.as_tensor(np.abs(image))[None])
    hit = np.flatnonzero(ratios[0] >= 0.9 - 1e-12)
    return float(windows[hit[0]]) if len(hit) else float("nan")


def paper_claims(kernels: Sequence[LayerKernels], device: str = "cpu") -> pd.DataFrame:
    """One row per (claim, stage, statistic): the measured value, the criterion and whether it
    holds (module docstring).

    Args:
        kernels: a model's layers (:func:`~niff_analysis.analysis.extract_kernels`); layers
            without a stage are grouped under their own names.
        device: where the Gaussian fits run.
    """
    kernels = list(kernels)
    stage = {lk.name: lk.stage or lk.name for lk in kernels}
    mass = kernel_mass(kernels)
    stats = kernel_stats(kernels, device=device, mass=mass)
    wide = stats.pivot_table(index=LAYER, columns="stat", values="value", sort=False).reset_index()
    wide[STAGE] = wide[LAYER].map(stage)
    sizes = effective_sizes(mass, quantiles=(0.9,))
    sizes[STAGE] = sizes[LAYER].map(stage)
    pca = pca_eigenkernels(kernels, n_components=1)
    first_pc = {name: _k90(comp[0]) for name, comp in pca.components.items()}
    stages = list(dict.fromkeys(stage.values()))
    rows = []

    def add(claim, stage, statistic, value, criterion, ok):
        rows.append((claim, stage, statistic, float(value), criterion, bool(ok) if np.isfinite(value) else None))

    local = "§5: well-localized, barely beyond 9×9"
    for st in stages:
        w = wide[wide[STAGE] == st]
        m9, k90 = w["mass9_mean"].mean(), w["k90_mean"].mean()
        add(local, st, "mass inside 9×9 (mean)", m9, f"≥ {MASS_MIN}", m9 >= MASS_MIN)
        add(local, st, "k90 (mean, px)", k90, f"≤ {SIZE_MAX}", k90 <= SIZE_MAX)
    first, last = stages[0], stages[-1]
    pcs = [first_pc[n] for n in wide.loc[wide[STAGE] == first, LAYER]]
    add("Fig. 7: dominant eigenkernels of the first layer small", first,
        "k90 of the first principal component (mean over layers, px)", np.mean(pcs), f"≤ {SIZE_MAX}",
        np.mean(pcs) <= SIZE_MAX)
    if len(stages) > 1:
        second = stages[1]
        share = float((sizes.loc[sizes[STAGE] == second, "size_90"] > 3).mean())
        add("Fig. 7: a few kernels of the second layer larger than 3×3", second,
            "share of kernels with k90 > 3", share, f"0 < share < {SHARE_MAX}", 0 < share < SHARE_MAX)
    w = wide[wide[STAGE] == last]
    m3 = w["mass3_mean"].mean()
    pcs = [first_pc[n] for n in w[LAYER]]
    within = "Fig. 7: the last layer within 3×3"
    add(within, last, "mass inside 3×3 (mean)", m3, f"≥ {MASS_MIN}", m3 >= MASS_MIN)
    add(within, last, "k90 of the first principal component (max over layers, px)", max(pcs),
        f"≤ {LAST_SIZE_MAX}", max(pcs) <= LAST_SIZE_MAX)
    lo, hi = RATIO_RANGE
    for st in stages:
        r = wide.loc[wide[STAGE] == st, "sigma_ratio_mean"]
        add("App. A: σx/σy near 1 in every layer", st, "per-layer mean σx/σy, smallest", r.min(),
            f"≥ {lo}", r.min() >= lo)
        add("App. A: σx/σy near 1 in every layer", st, "per-layer mean σx/σy, largest", r.max(),
            f"≤ {hi}", r.max() <= hi)
    return pd.DataFrame(rows, columns=COLUMNS)
