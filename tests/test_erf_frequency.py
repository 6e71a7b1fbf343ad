"""Effective receptive fields and frequency profiles, checked against answers known in closed
form or computed independently (scipy, the kernels extract_kernels reports)."""

from __future__ import annotations

import io
from collections import OrderedDict

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from scipy.signal import convolve2d
from torch import nn

from niff_analysis.analysis import (effective_receptive_fields, erf_area_ratios, extract_kernels,
                                    frequency_profile)
from niff_analysis.analysis.frequency import radial_bins
from niff_analysis.cli import main
from niff_analysis.layers import DepthwiseNIFF


def test_stacked_box_convs_have_the_binomial_erf():
    """k stacked 3×3 box convs (linear, no bias): the ERF after stage k is the k-fold
    autoconvolution of the box, exactly its (2k+1)×(2k+1) support."""
    convs = OrderedDict()
    for k in (1, 2, 3):
        conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
        nn.init.constant_(conv.weight, 1 / 9)
        convs[f"layer{k}"] = conv
    model = nn.Sequential(convs)
    images = torch.randn(6, 1, 15, 15, generator=torch.Generator().manual_seed(0))
    maps = effective_receptive_fields(model, images, batch_size=4)
    box = np.full((3, 3), 1 / 9)
    expected = np.array([[1.0]])
    for k in (1, 2, 3):
        expected = convolve2d(expected, box)
        full = np.zeros((15, 15))
        r = k  # support radius
        full[7 - r:7 + r + 1, 7 - r:7 + r + 1] = expected
        np.testing.assert_allclose(maps[f"layer{k}"] / len(images), full, atol=1e-12)
    ratios = erf_area_ratios(maps, thresholds=(100,))
    assert list(ratios["side"]) == [3.0, 5.0, 7.0]
    assert ratios["area_ratio"].tolist() == pytest.approx([9 / 225, 25 / 225, 49 / 225])
    assert model.training  # the caller's mode is restored


@pytest.mark.parametrize("size", [(16, 16), (15, 12)])
def test_a_niff_layer_has_its_kernel_flipped_as_erf(size):
    torch.manual_seed(0)
    layer = DepthwiseNIFF(1, mlp="small")
    layer.fmap = size
    model = nn.Sequential(OrderedDict(layer1=layer)).double()
    (lk,) = extract_kernels(model, layers="layer1")
    k = lk.kernels[0].double().numpy()
    h, w = size
    maps = effective_receptive_fields(model, torch.randn(1, 1, h, w, dtype=torch.float64))
    # ∂y[c]/∂x[c - j] = k[j]: the map at pixel i holds the kernel at offset c - i (circularly).
    rows = (2 * (h // 2) - np.arange(h)) % h
    cols = (2 * (w // 2) - np.arange(w)) % w
    np.testing.assert_allclose(maps["layer1"], np.abs(k[np.ix_(rows, cols)]), rtol=1e-5, atol=1e-7)


def test_frequency_profile_of_a_constant_response_is_flat():
    layer = DepthwiseNIFF(3, mlp="small")
    layer.fmap = (9, 12)
    with torch.no_grad():
        for mlp, value in ((layer.real, 0.6), (layer.imag, -0.8)):
            mlp[-1].weight.zero_()
            mlp[-1].bias.fill_(value)
    (lk,) = extract_kernels(nn.Sequential(OrderedDict(layer1=layer)))
    prof = frequency_profile([lk])
    np.testing.assert_allclose(prof[["mean", "q25", "q75"]].to_numpy(), 1.0, rtol=1e-5)  # |0.6 - 0.8i|
    assert prof["radius"].iloc[0] == 0 and prof["radius"].max() == pytest.approx(np.sqrt(2), abs=0.1)
    idx, radius = radial_bins(9, 12)
    assert idx.shape == (108,) and radius[1] == pytest.approx(1 / 6)


def test_erf_command_on_the_bundled_checkpoints():
    res = CliRunner().invoke(main, ["erf", "niff_analysis/checkpoints", "--images", "4", "--untrained",
                                    "--format", "csv", "-q"])
    assert res.exit_code == 0, res.output
    df = pd.read_csv(io.StringIO(res.stdout))
    assert list(df.columns) == ["checkpoint", "stage", "threshold", "side", "area_ratio"]
    assert set(df["checkpoint"]) == {"resnet18_fmnist", "resnet18_fmnist@init", "resnet18_niff_fmnist",
                                     "resnet18_niff_fmnist@init"}
    for _, g in df.groupby(["checkpoint", "stage"]):
        assert g.sort_values("threshold")["side"].is_monotonic_increasing
    assert np.allclose(df["area_ratio"], df["side"] ** 2 / 32 ** 2)
    res = CliRunner().invoke(main, ["erf", "--thresholds", "0,50"])
    assert res.exit_code == 2 and "--thresholds must lie in (0, 100]" in res.output
    res = CliRunner().invoke(main, ["erf", "--layers", "nope*", "--images", "2"])
    assert res.exit_code == 2 and "no module matches" in res.output


def test_kernels_radial_view():
    res = CliRunner().invoke(main, ["kernels", "--view", "radial", "--layers", "layer4.*", "--format", "csv", "-q"])
    assert res.exit_code == 0, res.output
    df = pd.read_csv(io.StringIO(res.stdout))
    assert set(df["layer"]) == {"layer4.0.conv2", "layer4.1.conv1", "layer4.1.conv2"}
    assert (df["q25"] <= df["q75"]).all() and (df["n_channels"] == 512).all()
