"""Benchmark 8 (an accuracy check, not a timing): the moment σ and the fitted σ of
:mod:`niff_analysis.analysis.gaussian` on synthetic Gaussians with known σ (0.3–4 px), sub-pixel
offsets (0–0.5 px) and additive noise (0–5 % of the peak); see
:mod:`niff_analysis.analysis.sigma_validation`. Prints the Markdown tables of
docs/gaussian_validation.md.
"""

from __future__ import annotations

import pandas as pd
import torch

from niff_analysis.analysis.sigma_validation import error_table, sigma_errors

TITLES = {
    "moment": "Moment σ (deweighted adaptive moments: sigma_x_moment, sigma_y_moment)",
    "fit": "Levenberg–Marquardt fit (sigma_x, sigma_y of the successful fits; the `gaussian` command)",
    "start": "The fit's start (moments of max(|k| − b₀, 0)², the moment σ of earlier versions)",
}


def run(quick: bool = False, device: torch.device = torch.device("cpu")) -> pd.DataFrame:
    repeats = 4 if quick else 20
    errors = sigma_errors(repeats=repeats)
    print(
        f"\n== σ recovery on synthetic 32×32 Gaussians, {repeats} noisy draws per cell (seed 0); "
        "cells: median relative error % (90th percentile of |error| %)"
    )
    for method, title in TITLES.items():
        print(f"\n### {title}\n")
        print(error_table(errors, method))
    return errors
