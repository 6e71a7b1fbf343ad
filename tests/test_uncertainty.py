"""Bootstrap intervals over kernels and t-intervals over seeds, against scipy; the delta and
white-noise references against their known answers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from niff_analysis.analysis import LayerKernels, kernel_mass, mass_summary
from niff_analysis.analysis.references import (
    NOISE_KERNELS,
    delta_kernels,
    expected_noise_ratio,
    mass_scale,
    reference_layers,
    white_noise_kernels,
)
from niff_analysis.analysis.uncertainty import (
    RESAMPLES,
    add_intervals,
    bootstrap_interval,
    interval_text,
    seed_interval,
    with_interval_text,
)

B = 20_000  # enough resamples that both Monte-Carlo intervals sit within a few % of their width


def _scipy(x, f, seed=1):
    ci = stats.bootstrap(
        (x,), f, n_resamples=B, method="percentile", random_state=seed, vectorized=True, axis=-1
    ).confidence_interval
    return ci.low, ci.high


@pytest.mark.parametrize("n", [301, 1000, 4096])  # odd and even; > 256 distinct values: explicit resampling
@pytest.mark.parametrize("statistic,f", [("mean", np.mean), ("median", np.median)])
def test_continuous_values_match_scipy(n, statistic, f):
    x = np.random.default_rng(n).lognormal(size=n)
    lo, hi = bootstrap_interval(x, statistic, resamples=B)
    slo, shi = _scipy(x, f)
    width = shi - slo
    assert lo == pytest.approx(slo, abs=0.05 * width) and hi == pytest.approx(shi, abs=0.05 * width)
    assert lo < f(x) < hi


@pytest.mark.parametrize("statistic,f", [("mean", np.mean), ("median", np.median)])
def test_few_distinct_values_match_scipy(statistic, f):
    # Effective sizes: a handful of odd windows. Resampled through their counts.
    x = np.random.default_rng(7).choice([1.0, 3.0, 5.0, 7.0, 9.0], size=800, p=[0.1, 0.2, 0.4, 0.2, 0.1])
    lo, hi = bootstrap_interval(x, statistic, resamples=B)
    slo, shi = _scipy(x, f)
    if statistic == "median":  # a median of odd windows is a window (or the mean of two)
        assert (lo, hi) == (slo, shi)
    else:
        width = shi - slo
        assert lo == pytest.approx(slo, abs=0.05 * width) and hi == pytest.approx(shi, abs=0.05 * width)


def test_share_and_geometric_mean():
    share = (np.random.default_rng(3).random(500) < 0.12).astype(float)
    lo, hi = bootstrap_interval(share, "mean", resamples=B)
    slo, shi = _scipy(share, np.mean)
    assert lo == pytest.approx(slo, abs=0.01) and hi == pytest.approx(shi, abs=0.01)
    r = np.random.default_rng(4).lognormal(0.1, 0.5, size=400)
    lo, hi = bootstrap_interval(r, "gmean", resamples=B)
    slo, shi = _scipy(r, lambda v, axis=-1: stats.gmean(v, axis=axis))
    width = shi - slo
    assert lo == pytest.approx(slo, abs=0.05 * width) and hi == pytest.approx(shi, abs=0.05 * width)
    # The geometric mean of the inverted ratios is the inverse: symmetric about 1.
    ilo, ihi = bootstrap_interval(1 / r, "gmean", resamples=B)
    assert ilo == pytest.approx(1 / hi, rel=0.02) and ihi == pytest.approx(1 / lo, rel=0.02)
    with pytest.raises(ValueError, match="positive"):
        bootstrap_interval([1.0, -1.0], "gmean")


def test_seeded_degenerate_and_missing():
    x = np.random.default_rng(0).normal(size=300)
    assert bootstrap_interval(x) == bootstrap_interval(x)  # the same seed, the same interval
    assert bootstrap_interval(x, seed=1) != bootstrap_interval(x)
    assert bootstrap_interval([2.5] * 40) == (2.5, 2.5)
    assert bootstrap_interval([4.0]) == (4.0, 4.0)
    assert all(math.isnan(v) for v in bootstrap_interval([]))
    assert all(math.isnan(v) for v in bootstrap_interval(x, resamples=0))
    assert bootstrap_interval(np.r_[x, np.nan, np.nan]) == bootstrap_interval(x)  # NaN left out
    with pytest.raises(ValueError, match="unknown statistic"):
        bootstrap_interval(x, "mode")


def test_seed_interval_is_the_t_interval():
    v = [0.61, 0.58, 0.66]
    mean, lo, hi = seed_interval(v)
    t = stats.t.interval(0.95, 2, loc=np.mean(v), scale=stats.sem(v))
    assert mean == pytest.approx(np.mean(v)) and (lo, hi) == pytest.approx(t, rel=1e-12)
    assert seed_interval([0.5]) == (0.5, 0.5, 0.5)


def test_add_intervals_finds_groups_without_a_stage_and_text():
    data = pd.DataFrame(
        dict(layer=["a"] * 50 + ["b"] * 50, stage=[None] * 50 + ["s"] * 50, v=np.r_[np.arange(50.0), np.full(50, 2.0)])
    )
    table = data.groupby(["layer", "stage"], dropna=False, sort=False)["v"].mean().reset_index()
    out = add_intervals(table, data, ["layer", "stage"], {"v": ("v", "mean")})
    assert list(out.columns) == ["layer", "stage", "v", "v_lo", "v_hi"]
    assert out.loc[0, "v_lo"] < 24.5 < out.loc[0, "v_hi"] and out.loc[1, ["v_lo", "v_hi"]].tolist() == [2.0, 2.0]
    text = with_interval_text(out)
    assert list(text.columns) == ["layer", "stage", "v"] and text.loc[1, "v"] == "2 [2, 2]"


def test_interval_text_rounds_by_significant_places_or_decimals_and_drops_unknown_bounds():
    assert interval_text(0.123456, 0.1, 0.15) == "0.123 [0.1, 0.15]"
    assert interval_text(0.123456, 0.1, 0.15, decimals=3) == "0.123 [0.100, 0.150]"
    assert interval_text(91.7, decimals=2) == "91.70"
    assert interval_text(2.0, float("nan"), float("nan")) == "2"
    assert interval_text(float("nan"), 1.0, 2.0) == "nan [1, 2]"


def test_cli_defaults_match_the_library():
    from niff_analysis.analysis.mass import MEASURES
    from niff_analysis.cli import common

    assert common.BOOTSTRAP == RESAMPLES == 1000 and common.MEASURES == MEASURES


# ------------------------------------------------------------------------------ references
@pytest.mark.parametrize("h,w", [(32, 32), (16, 16), (8, 8), (4, 4), (7, 12)])
@pytest.mark.parametrize("measure", ["l1", "energy"])
def test_white_noise_mass_is_the_window_area_over_the_map(h, w, measure):
    k = white_noise_kernels(h, w)
    assert torch.equal(k, white_noise_kernels(h, w)) and k.shape == (NOISE_KERNELS, h, w)
    lk = LayerKernels("noise", "depthwise", (h, w), None, k)
    m = kernel_mass([lk], measure)
    emp = m.groupby("window")["mass_ratio"].agg(["mean", "std"])
    windows, expected = expected_noise_ratio(h, w)
    assert list(emp.index) == list(windows)
    # s²/(H·W) for a window inside the kernel: independent of the measure
    inside = windows <= min(h, w)
    np.testing.assert_allclose(expected[inside], windows[inside] ** 2 / (h * w))
    se = emp["std"].to_numpy() / math.sqrt(NOISE_KERNELS)
    assert (np.abs(emp["mean"].to_numpy() - expected) <= 4 * se + 1e-12).all()


def test_delta_and_mass_scale():
    k = delta_kernels(9, 9, 3)
    assert k.sum() == 3 and (k[:, 4, 4] == 1).all()
    rng = np.random.default_rng(0)
    layers = [
        LayerKernels("a", "depthwise", (16, 16), "s1", torch.from_numpy(rng.normal(size=(5, 16, 16))).float()),
        LayerKernels("b", "depthwise", (4, 4), "s2", torch.from_numpy(rng.normal(size=(5, 4, 4))).float()),
    ]
    init = [
        LayerKernels(lk.name, lk.kind, lk.fmap, lk.stage, lk.kernels * 0 + delta_kernels(*lk.fmap)) for lk in layers
    ]
    scale = mass_scale(layers, "energy", init=init)
    assert list(scale.columns) == ["layer", "window", "delta", "noise", "init"]
    assert (scale["delta"] == 1.0).all() and (scale["init"] == 1.0).all()
    # windows 1…15, 16; 1, 3, 4 and 5, 9 (reported for every layer; they cover the 4×4 kernel)
    assert scale.groupby("layer", sort=False).size().tolist() == [9, 5]
    ref = reference_layers(layers, "noise")
    assert [r.name for r in ref] == ["a", "b"] and ref[0].fmap == (16, 16)
    noise = mass_summary(kernel_mass(ref[:1], "energy"))
    np.testing.assert_allclose(scale.loc[scale.layer == "a", "noise"], noise["mean"])
    assert "init" not in mass_scale(layers, "l1").columns
