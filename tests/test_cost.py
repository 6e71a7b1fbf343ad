"""FLOP formulas and timing helpers of niff_analysis.analysis.cost (no test asserts a time)."""

import math
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from niff_analysis.analysis.cost import (
    circular_same_conv,
    cost_table,
    fft_flops,
    median_ms,
    mlp_flops,
    niff_flops,
    product_flops,
    spatial_flops,
    time_interleaved,
)
from niff_analysis.layers import DepthwiseNIFF, frequency_grid


# --------------------------------------------------------------------------- formulas, by hand
def test_fft_flops_hand_checked():
    assert fft_flops(2, real=False) == 5 * 4 * 2  # N = 4 points, log2 N = 2
    assert fft_flops(2) == 20
    assert fft_flops(4) == 160  # N = 16: 5·16·4 / 2
    assert fft_flops((2, 8)) == 160  # only N = H·W matters
    assert fft_flops((3, 5)) == pytest.approx(2.5 * 15 * math.log2(15))
    assert fft_flops(1) == 0


def test_product_niff_and_spatial_flops_hand_checked():
    assert product_flops(4) == 6 * 4 * 3  # half-spectrum 4×3 bins
    assert product_flops((2, 8)) == 6 * 2 * 5
    assert product_flops((5, 7)) == 6 * 5 * 4
    assert niff_flops(4) == 2 * 160 + 72
    assert spatial_flops(4) == 2 * 16 * 16
    assert spatial_flops(4, kernel=3) == 2 * 16 * 9
    assert spatial_flops((2, 3)) == 2 * 6 * 6


def test_mlp_flops_hand_checked():
    # cifar MLP 2 → 32 → C with C = 4: 2·(2·32 + 32·4) = 384 flops per point and MLP.
    assert mlp_flops(2, channels=4, mlp="cifar") == 2 * 384 * 4


def test_bad_size_is_a_clear_error():
    with pytest.raises(ValueError, match="positive"):
        fft_flops(0)
    with pytest.raises(ValueError, match="positive"):
        cost_table(sizes=(4,), channels=0, measure=False)


# --------------------------------------------------------------------------- against torch's counter
@pytest.mark.parametrize("size", [(5, 5), (6, 4)])
def test_spatial_flops_match_torch_flop_counter(size):
    c, b = 3, 2
    x, k = torch.randn(b, c, *size), torch.randn(c, 1, *size)
    with FlopCounterMode(display=False) as counter:
        circular_same_conv(x, k)
    assert counter.get_total_flops() == b * c * spatial_flops(size)


def test_mlp_flops_match_torch_flop_counter():
    layer = DepthwiseNIFF(6, mlp="big")
    grid = frequency_grid(5, 7)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        layer.real(grid), layer.imag(grid)
    assert counter.get_total_flops() == mlp_flops((5, 7), channels=6, mlp="big")


# --------------------------------------------------------------------------- helpers
@pytest.mark.parametrize("size", [(6, 6), (5, 7)])
def test_circular_same_conv_is_the_circular_convolution(size):
    """conv2d path equals the convolution theorem with the kernel origin at its centre."""
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    k = torch.randn(3, 1, *size, dtype=torch.float64)
    k0 = torch.fft.ifftshift(k[:, 0], dim=(-2, -1))  # centre → index 0
    ref = torch.fft.irfft2(torch.fft.rfft2(x) * torch.fft.rfft2(k0), s=size)
    torch.testing.assert_close(circular_same_conv(x, k), ref)


def test_circular_same_conv_matches_niff_layer():
    layer = DepthwiseNIFF(3, mlp="cifar").double()
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    k = layer.spatial_kernels((6, 5))[:, None]
    torch.testing.assert_close(circular_same_conv(x, k), layer(x).detach())


def test_time_interleaved_rounds_and_budget():
    calls = {"fast": 0, "slow": 0}

    def fast():
        calls["fast"] += 1

    def slow():
        calls["slow"] += 1
        time.sleep(0.02)

    times = time_interleaved({"fast": fast, "slow": slow}, repeats=4, warmup=1, max_seconds=0.01)
    assert len(times["fast"]) == 4 and calls["fast"] == 5
    assert len(times["slow"]) == 1 and calls["slow"] == 2  # budget spent after one timed call
    assert all(t >= 0 for t in times["fast"])
    assert median_ms([0.001, 0.003, 0.002]) == pytest.approx(2.0)
    assert math.isnan(median_ms([]))
    with pytest.raises(ValueError):
        time_interleaved({"fast": fast}, repeats=0)


# --------------------------------------------------------------------------- table
def test_cost_table_without_measuring_times_nothing_and_is_nan(monkeypatch):
    import niff_analysis.analysis.cost as cost

    def no_timing(*args, **kwargs):
        raise AssertionError("measure=False must not time anything")

    monkeypatch.setattr(cost, "_measure", no_timing)
    df = cost_table(measure=False)
    assert list(df["size"]) == [7, 14, 28, 56, 112]
    for col in ("size", "niff_flops", "spatial_flops", "niff_ms", "spatial_ms", "conv3x3_ms"):
        assert col in df.columns
    assert df[["niff_ms", "spatial_ms", "conv3x3_ms", "niff_ms_q25"]].isna().all().all()
    assert (df["niff_calls"] == 0).all() and (df["threads"] == torch.get_num_threads()).all()
    row = df[df["size"] == 56].iloc[0]
    assert row.niff_flops == 64 * (5 * 56 * 56 * math.log2(56 * 56) + 6 * 56 * 29)
    assert row.spatial_flops == 64 * 2 * 56**4
    assert row.conv3x3_flops == 64 * 2 * 9 * 56 * 56
    assert row.niff_train_flops == row.niff_flops + row.mlp_flops
    # Fig. 8's point: the spatial/NIFF FLOP ratio grows with the map size.
    assert np.all(np.diff(df["flop_ratio"]) > 0) and df["flop_ratio"].iloc[0] > 1


def test_mlp_flops_dominate_small_maps_as_documented():
    """The module docstring's numbers: at 7×7 and 64 channels the MLPs cost 2× the FFT-and-
    product FLOPs of a batch of 8 and 16× those of one image."""
    one, eight = (cost_table(sizes=(7,), channels=64, batch=b, measure=False).iloc[0] for b in (1, 8))
    assert one.mlp_flops == eight.mlp_flops
    assert round(eight.mlp_flops / eight.niff_flops) == 2 and int(one.mlp_flops / one.niff_flops) == 16


def test_cost_table_interleaves_every_size_and_contender(monkeypatch):
    """One round-robin over all (contender, size) pairs, so that a load change hits them alike."""
    import niff_analysis.analysis.cost as cost

    calls = []
    real = cost.time_interleaved

    def spy(fns, **kwargs):
        calls.append(list(fns))
        return real(fns, **kwargs)

    monkeypatch.setattr(cost, "time_interleaved", spy)
    df = cost_table(sizes=(4, 6), channels=2, batch=1, repeats=3, measure=True)
    assert len(calls) == 1 and set(calls[0]) == {(c, s) for c in cost.CONTENDERS for s in (4, 6)}
    assert (df["niff_calls"] == 3).all()
    assert (df["niff_ms_q25"] <= df["niff_ms"]).all() and (df["niff_ms"] <= df["niff_ms_q75"]).all()


def test_cost_table_scales_with_batch_and_channels():
    a = cost_table(sizes=(8,), channels=2, batch=1, measure=False)
    b = cost_table(sizes=(8,), channels=6, batch=5, measure=False)
    for col in ("niff_flops", "spatial_flops", "conv3x3_flops"):
        assert b[col].iloc[0] == 15 * a[col].iloc[0]
    assert b["mlp_flops"].iloc[0] == mlp_flops(8, 6)  # once per call, not per image


def test_cost_table_measures_small_sizes():
    df = cost_table(sizes=(5, 8), channels=4, batch=1, repeats=1, measure=True)
    times = df[["niff_ms", "spatial_ms", "conv3x3_ms"]].to_numpy()
    assert np.isfinite(times).all() and (times > 0).all()


# --------------------------------------------------------------------------- benchmark contenders
def test_layer_benchmark_contenders_compute_the_same_filter():
    """The reference formulation and the fmap-sized conv in benchmarks/layer.py are the same
    operation as DepthwiseNIFF (so the benchmark compares like with like)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/ is not installed
    from benchmarks.layer import FmapConv, contenders

    torch.manual_seed(0)
    layers = contenders(channels=3, size=6, device=torch.device("cpu"))
    x = torch.randn(2, 3, 6, 6)
    ours = layers["ours"](x)
    torch.testing.assert_close(layers["reference"](x), ours, atol=1e-5, rtol=1e-4)
    fmap = FmapConv(3, 6)
    with torch.no_grad():
        fmap.weight.copy_(layers["ours"].spatial_kernels((6, 6))[:, None])
    torch.testing.assert_close(fmap(x), ours, atol=1e-5, rtol=1e-4)


def test_cost_figure_shows_mlp_flops_spread_threads_and_load():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.collections import PolyCollection

    from niff_analysis.plotting import plot_cost

    df = cost_table(sizes=(4, 8), channels=2, batch=8, repeats=3, measure=True)
    fig, axes = plot_cost(df)
    labels = [line.get_label() for line in axes[0].get_lines()]
    assert "NIFF + MLPs (training step), batch 8" in labels and "NIFF + MLPs (training step), 1 image" in labels
    mlp_line = axes[0].get_lines()[labels.index("NIFF + MLPs (training step), batch 8")]
    np.testing.assert_allclose(mlp_line.get_ydata(), df.niff_flops + df.mlp_flops)
    assert sum(isinstance(c, PolyCollection) for c in axes[1].collections) == 3  # one IQR band each
    assert f"{torch.get_num_threads()} threads" in axes[1].get_title()
