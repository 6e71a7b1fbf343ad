"""Side-by-side benchmarks of the speed claims. Run ``python -m benchmarks --help``.

Every benchmark times its contenders round-robin in one run (see
:func:`niff_analysis.analysis.cost.time_interleaved`) and reports ratios, which stay meaningful
on a loaded machine; absolute times do not. Each module has ``run(quick, device) -> DataFrame``
and prints its own table; nothing here asserts a time.
"""

from __future__ import annotations

import pandas as pd

BENCHMARKS = (
    "layer",
    "train_step",
    "train_loop",
    "analysis",
    "cost",
    "kernel_stats",
    "startup",
    "erf",
    "precision",
    "sigma_accuracy",
)
"""Benchmark module names, in the order ``python -m benchmarks`` runs them."""


def show(title: str, frame: pd.DataFrame, floatfmt: str = "{:.3g}") -> None:
    """Print a titled table (floats to 3 significant digits)."""
    print(f"\n== {title}")
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(frame.to_string(index=False, float_format=floatfmt.format))


def verdict(value: float, target: float, lower_is_better: bool = True) -> str:
    """'met' or 'MISSED by x%' for a ratio against its target."""
    ok = value <= target if lower_is_better else value >= target
    if ok:
        return "met"
    miss = (value / target - 1) if lower_is_better else (target / value - 1)
    return f"MISSED by {100 * miss:.0f}%"
