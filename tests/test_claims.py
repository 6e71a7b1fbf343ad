"""The paper-claims table on toy layers whose answers are known by construction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from niff_analysis.analysis import LayerKernels, paper_claims
from niff_analysis.cli import main


def _gaussians(n: int, size: int, sx: float, sy: float, seed: int = 0) -> torch.Tensor:
    """n centred 2-D Gaussians (σx, σy) on a size×size grid, amplitudes 1…2."""
    c = size // 2
    y, x = torch.meshgrid(torch.arange(size) - c, torch.arange(size) - c, indexing="ij")
    g = torch.exp(-(x.double() ** 2) / (2 * sx ** 2) - (y.double() ** 2) / (2 * sy ** 2))
    amp = 1 + torch.rand(n, 1, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (amp * g).float()


def _layer(name: str, stage: str, k: torch.Tensor) -> LayerKernels:
    return LayerKernels(name, "conv", tuple(k.shape[-2:]), stage, k, None, k.shape[0], k.shape[0])


def _rows(table, stage, statistic):
    hit = table[(table["stage"] == stage) & (table["statistic"].str.startswith(statistic))]
    assert len(hit) == 1, (stage, statistic, table)
    return hit.iloc[0]


def test_claims_hold_on_small_square_kernels_and_fail_on_wide_ones():
    small = [_layer(f"layer1.{i}", "layer1", _gaussians(32, 32, 1.2, 1.2, i)) for i in range(2)]
    # second stage: 3 of 40 kernels are wide (k90 > 3), the rest a single pixel
    delta = torch.zeros(40, 16, 16)
    delta[:, 8, 8] = 1.0
    delta[:3] = _gaussians(3, 16, 2.5, 2.5)
    second = [_layer("layer2.0", "layer2", delta)]
    wide = [_layer("layer3.0", "layer3", _gaussians(16, 16, 5.0, 2.0))]  # elongated and large
    t = paper_claims(small + second + wide)
    assert list(t.columns) == ["claim", "stage", "statistic", "value", "criterion", "agrees"]
    # mass inside 9×9 of a σ = 1.2 Gaussian: (erf(4.5 / (1.2 √2)))² ≈ 1 → holds
    r = _rows(t, "layer1", "mass inside 9×9")
    assert r.value > 0.99 and r.agrees
    assert _rows(t, "layer1", "k90 of the first principal component").agrees
    r = _rows(t, "layer2", "share of kernels with k90 > 3")
    assert r.value == pytest.approx(3 / 40) and r.agrees
    # the last stage here is layer3: σx = 5 px is far from 3×3 and from square
    assert not _rows(t, "layer3", "mass inside 3×3").agrees
    assert not _rows(t, "layer3", "k90 (mean").agrees
    r = _rows(t, "layer3", "per-layer mean σx/σy, largest")
    assert r.value == pytest.approx(2.5, rel=1e-3) and not r.agrees
    r = _rows(t, "layer1", "per-layer mean σx/σy, largest")
    assert r.value == pytest.approx(1.0, rel=1e-3) and r.agrees


def test_claims_command_on_the_bundled_checkpoint_with_its_initialisation(tmp_path):
    out = tmp_path / "claims.csv"
    res = CliRunner().invoke(main, ["claims", "--untrained", "-q", "-o", str(out)])
    assert res.exit_code == 0, res.output
    import pandas as pd

    df = pd.read_csv(out)
    labels = list(dict.fromkeys(df["checkpoint"]))
    assert labels == ["resnet18_niff_fmnist", "resnet18_niff_fmnist@init"]
    assert set(df["stage"]) == {"layer1", "layer2", "layer3", "layer4"}
    assert np.isfinite(df["value"]).all()
    # the 8×8 and 4×4 layers hold all their mass inside 9×9 by construction
    m9 = df[(df["statistic"] == "mass inside 9×9 (mean)") & df["stage"].isin(["layer3", "layer4"])]
    assert np.allclose(m9["value"], 1.0)
