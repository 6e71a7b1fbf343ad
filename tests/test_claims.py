"""The paper-claims table on toy layers whose answers are known by construction, and on the
bundled checkpoint through the CLI."""

from __future__ import annotations

import io
import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from scipy import stats

from niff_analysis.analysis import LayerKernels, paper_claims
from niff_analysis.analysis.claims import COLUMNS, CRITERIA, pool_seeds, stages, verdict
from niff_analysis.cli import main


def _gaussians(n: int, size: int, sx: float, sy: float, seed: int = 0) -> torch.Tensor:
    """n centred 2-D Gaussians (σx, σy) on a size×size grid, amplitudes 1…2."""
    c = size // 2
    y, x = torch.meshgrid(torch.arange(size) - c, torch.arange(size) - c, indexing="ij")
    g = torch.exp(-(x.double() ** 2) / (2 * sx**2) - (y.double() ** 2) / (2 * sy**2))
    amp = 1 + torch.rand(n, 1, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (amp * g).float()


def _layer(name: str, stage: str, k: torch.Tensor, kind="depthwise", extra=None) -> LayerKernels:
    return LayerKernels(name, kind, tuple(k.shape[-2:]), stage, k, None, k.shape[0], k.shape[0], extra or {})


def _row(table, stage, statistic, measure="l1"):
    hit = table[(table["stage"] == stage) & (table["statistic"] == statistic) & (table["measure"] == measure)]
    assert len(hit) == 1, (stage, statistic, measure, table)
    return hit.iloc[0]


MASS9 = "mass inside 9×9, mean over kernels (no margin)"
MASS11 = "mass inside 11×11 (9×9 and a 1-px margin), mean over kernels"
K90 = "k90, median over kernels (px)"
SHARE = "share of kernels with k90 > 3"
MEDIAN_RATIO = "σx/σy, median over the stage's fits"
MEAN_RATIO = "σx/σy, mean over the stage's fits (the paper's statistic)"


@pytest.fixture(scope="module")
def toy():
    small = [_layer(f"layer1.{i}", "layer1", _gaussians(32, 32, 1.2, 1.2, i)) for i in range(2)]
    # second stage: 6 of 60 kernels are wide (k90 > 3), the rest a single pixel
    delta = torch.zeros(60, 16, 16)
    delta[:, 8, 8] = 1.0
    delta[:6] = _gaussians(6, 16, 2.5, 2.5)
    second = [_layer("layer2.0", "layer2", delta)]
    wide = [_layer("layer3.0", "layer3", _gaussians(16, 8, 3.0, 1.2))]  # elongated, larger than 3×3
    kernels = small + second + wide
    init = [
        _layer(lk.name, lk.stage, torch.randn(lk.kernels.shape, generator=torch.Generator().manual_seed(5)))
        for lk in kernels
    ]
    return kernels, paper_claims(kernels, init=init, resamples=300)


def test_columns_stages_and_measures(toy):
    kernels, t = toy
    assert list(t.columns) == COLUMNS
    assert [s.name for s in stages(kernels)] == ["32×32", "16×16", "8×8"]
    assert list(dict.fromkeys(t.stage)) == ["32×32", "16×16", "8×8"]
    assert dict(zip(t.stage, t.layers)) == {"32×32": "layer1", "16×16": "layer2", "8×8": "layer3"}
    assert set(t.measure) == {"l1", "energy", "any"}
    assert set(t[t.measure == "any"].statistic) == {MEDIAN_RATIO, MEAN_RATIO}
    assert set(t.verdict) <= {"agrees", "disagrees", "borderline", "not testable", "no data"}
    assert (t.criterion == t.statistic.map(lambda s: CRITERIA[s].text)).all()


def test_small_square_kernels_agree_both_ways(toy):
    _, t = toy
    for m in ("l1", "energy"):
        # mass inside 9×9 of a σ = 1.2 Gaussian: (erf(4.5 / (1.2 √2)))² ≈ 1
        r = _row(t, "32×32", MASS9, m)
        assert r.value > 0.99 and r.lo <= r.value <= r.hi and r.verdict == "agrees"
        assert _row(t, "32×32", K90, m).verdict == "agrees"
        for how in ("pooled over the stage's kernels", "median over the stage's layers"):
            r = _row(t, "32×32", f"PC1 k90, {how} (px)", m)
            assert r.value <= 9 and r.verdict == "agrees" and math.isnan(r.lo)
        r = _row(t, "16×16", SHARE, m)
        assert r.value == pytest.approx(6 / 60) and 0 < r.lo < r.value < r.hi < 0.5 and r.verdict == "agrees"
        # delta and white-noise references of the same statistic
        assert _row(t, "32×32", MASS9, m).delta == 1.0 and _row(t, "16×16", SHARE, m).delta == 0.0
        assert _row(t, "32×32", MASS9, m).noise == pytest.approx(81 / 1024, abs=0.01)
        assert _row(t, "16×16", SHARE, m).noise == 1.0
        assert _row(t, "32×32", MASS9, m).init == pytest.approx(81 / 1024, abs=0.02)  # the toy init is noise
    r = _row(t, "32×32", MEDIAN_RATIO, "any")
    assert r.value == pytest.approx(1.0, rel=1e-3) and r.verdict == "agrees" and math.isnan(r.delta)


def test_elongated_last_stage_and_not_testable_windows(toy):
    _, t = toy
    # the last stage runs at 8×8: every kernel fits inside 9×9 and 11×11 by construction
    for stat in (MASS9, MASS11, K90):
        assert _row(t, "8×8", stat).verdict == "not testable"
    r = _row(t, "8×8", "mass inside 3×3, mean over kernels")
    assert r.value < 0.9 and r.verdict == "disagrees"
    r = _row(t, "8×8", MEDIAN_RATIO, "any")
    assert r.value == pytest.approx(2.5, rel=1e-3) and r.verdict == "disagrees"
    # the paper's mean is its own row
    assert _row(t, "8×8", MEAN_RATIO, "any").value == pytest.approx(2.5, rel=1e-3)


def test_plain_3x3_kernels_are_not_testable_where_they_cannot_exceed_the_window():
    rng = torch.Generator().manual_seed(0)
    layers = []
    for name, size in (("layer1.0.conv1", 32), ("layer2.0.conv2", 16), ("layer4.0.conv2", 4)):
        k = torch.zeros(20, size, size)
        c = size // 2
        k[:, c - 1 : c + 2, c - 1 : c + 2] = torch.randn(20, 3, 3, generator=rng)
        layers.append(_layer(name, name.split(".")[0], k, kind="conv", extra=dict(kernel_size=(3, 3), dilation=(1, 1))))
    t = paper_claims(layers, resamples=0)
    sized = t[t.measure != "any"]
    assert (sized.verdict == "not testable").all(), sized[["stage", "statistic", "verdict"]]
    assert (t[t.measure == "any"].verdict != "not testable").all()
    # a dilated 3×3 reaches 2 px from the centre: its "last layer within 3×3" is testable
    layers[-1].extra["dilation"] = (2, 2)
    assert stages(layers)[-1].support == 4
    t = paper_claims(layers, resamples=0)
    assert _row(t, "4×4", "mass inside 3×3, mean over kernels").verdict != "not testable"


def test_verdicts_are_two_sided_and_honest_about_intervals():
    # A ratio of 1.69 is as far from square as 0.59: it disagrees (the old "smallest ≥ 0.8" agreed).
    assert verdict(MEDIAN_RATIO, 1.69) == "disagrees" and verdict(MEDIAN_RATIO, 0.59) == "disagrees"
    assert verdict(MEDIAN_RATIO, 1.02, 0.95, 1.1) == "agrees"
    assert verdict(MEDIAN_RATIO, 1.2, 1.1, 1.3) == "borderline"
    assert verdict(MEDIAN_RATIO, 1.0, 0.7, 1.4) == "borderline"  # straddles both bounds
    assert verdict(MASS9, 0.91, 0.88, 0.93) == "borderline"
    assert verdict(SHARE, 0.0) == "disagrees" and verdict(SHARE, 0.5) == "disagrees"
    assert verdict(MASS9, float("nan")) == "no data" and verdict(MASS9, 0.2, testable=False) == "not testable"


def test_pool_seeds_is_the_mean_and_t_interval(toy):
    _, t = toy
    other = t.assign(value=t["value"] * 0.9)
    third = t.assign(value=t["value"] * 1.05)
    pooled = pool_seeds([t, other, third])
    assert list(pooled.columns) == COLUMNS[:-1] + ["n_seeds", "verdict"]
    r = pooled[(pooled.stage == "32×32") & (pooled.statistic == MASS9) & (pooled.measure == "l1")].iloc[0]
    v = np.array([1.0, 0.9, 1.05]) * _row(t, "32×32", MASS9).value
    lo, hi = stats.t.interval(0.95, 2, loc=v.mean(), scale=stats.sem(v))
    assert r.value == pytest.approx(v.mean()) and (r.lo, r.hi) == pytest.approx((lo, hi)) and r.n_seeds == 3
    assert r.verdict == verdict(MASS9, r.value, r.lo, r.hi)
    assert (
        pooled[pooled.stage == "8×8"].statistic.isin([MASS9, MASS11, K90])
        <= (pooled[pooled.stage == "8×8"].verdict == "not testable")
    ).all()


@pytest.mark.slow  # the claims on the bundled checkpoint
def test_claims_command_on_the_bundled_checkpoint_with_its_initialisation(tmp_path):
    out = tmp_path / "claims.csv"
    res = CliRunner().invoke(main, ["claims", "--untrained", "-q", "-o", str(out)])
    assert res.exit_code == 0, res.output
    df = pd.read_csv(out)
    labels = list(dict.fromkeys(df["checkpoint"]))
    assert labels == ["resnet18_niff_fmnist", "resnet18_niff_fmnist@init"]
    assert set(df["stage"]) == {"32×32", "16×16", "8×8", "4×4"}
    assert set(df["measure"]) == {"l1", "energy", "any"}
    assert np.isfinite(df["value"]).all()
    trained = df[df.checkpoint == "resnet18_niff_fmnist"]
    init = df[df.checkpoint == "resnet18_niff_fmnist@init"].set_index(["stage", "measure", "statistic"])
    # the init column of the trained rows is the initialisation's own value
    for r in trained.itertuples():
        assert r.init == pytest.approx(init.loc[(r.stage, r.measure, r.statistic), "value"], rel=1e-9, nan_ok=True)
    # the 8×8 and 4×4 layers hold all their mass inside 9×9 by construction: not testable
    m9 = trained[(trained.statistic == MASS9) & trained.stage.isin(["8×8", "4×4"])]
    assert np.allclose(m9["value"], 1.0) and (m9.verdict == "not testable").all()
    meta = json.loads((tmp_path / "meta.json").read_text())["outputs"]["claims.csv"]
    assert meta["parameters"]["measure"] == "both" and meta["parameters"]["bootstrap"] == 1000
    res = CliRunner().invoke(main, ["claims", "--measure", "energy", "--bootstrap", "50", "--format", "csv", "-q"])
    assert res.exit_code == 0, res.output
    energy = pd.read_csv(io.StringIO(res.stdout))
    assert set(energy.measure) == {"energy", "any"}
    mine = energy[energy.measure == "energy"].set_index(["stage", "statistic"])["value"]
    both = trained[trained.measure == "energy"].set_index(["stage", "statistic"])["value"]
    pd.testing.assert_series_equal(mine.sort_index(), both.sort_index(), check_names=False)


@pytest.mark.slow  # the claims of several checkpoints
def test_claims_pool_checkpoints_of_one_recipe_over_seeds(tmp_path):
    """Three untrained models of one recipe (seeds 0, 1, 2) in a sweep layout: one pooled row per
    statistic, the mean and t-interval of the three runs' values."""
    from niff_analysis.checkpoint import save_checkpoint
    from niff_analysis.train.trainer import initial_model

    kwargs = dict(num_classes=10, in_chans=1, stem="cifar", input_size=[32, 32])
    arm = tmp_path / "study" / "spec"
    for seed in range(3):
        folder = arm / f"seed={seed}"
        save_checkpoint(initial_model("resnet18_niff", kwargs, seed), folder, dataset="fashion-mnist", seed=seed)
        (folder / "train_config.json").write_text(
            json.dumps(dict(model="resnet18_niff", model_kwargs=kwargs, dataset="fashion-mnist", epochs=1, seed=seed))
        )
    (tmp_path / "study" / "sweep.json").write_text(json.dumps(dict(arms={"spec": {}}, seeds=[0, 1, 2])))
    res = CliRunner().invoke(
        main,
        [
            "claims",
            str(tmp_path / "study"),
            "--per-seed",
            "--bootstrap",
            "0",
            "--measure",
            "l1",
            "--format",
            "csv",
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    df = pd.read_csv(io.StringIO(res.stdout))
    runs = [f"spec/seed={s}" for s in range(3)]
    assert list(dict.fromkeys(df.checkpoint)) == runs + ["spec"]
    pooled = df[df.checkpoint == "spec"].set_index(["stage", "measure", "statistic"])
    assert (pooled.n_seeds == 3).all()
    key = ("32×32", "l1", MASS9)
    v = np.array(
        [df[(df.checkpoint == r)].set_index(["stage", "measure", "statistic"]).loc[key, "value"] for r in runs]
    )
    lo, hi = stats.t.interval(0.95, 2, loc=v.mean(), scale=stats.sem(v))
    assert pooled.loc[key, "value"] == pytest.approx(v.mean()) and pooled.loc[key, "lo"] == pytest.approx(lo)
    assert pooled.loc[key, "hi"] == pytest.approx(hi) and len(set(v)) == 3
    # without --per-seed only the pooled rows are shown
    res = CliRunner().invoke(main, ["claims", str(arm), "--bootstrap", "0", "--measure", "l1", "--format", "csv", "-q"])
    assert set(pd.read_csv(io.StringIO(res.stdout)).checkpoint) == {"spec"}
    shutil.rmtree(tmp_path / "study")
