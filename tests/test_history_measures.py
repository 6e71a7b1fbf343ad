"""kernel_stats.csv written before the measure was recorded, history under each measure, runs of
one recipe pooled over seeds, and study folders as checkpoint arguments."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy import stats

from niff_analysis.analysis.stats import STATS, history_table, measure_of, read_kernel_stats
from niff_analysis.checkpoint import DEFAULT_CHECKPOINT
from niff_analysis.cli import main
from niff_analysis.pipeline import find_checkpoints, seed_groups


def _csv(*args) -> pd.DataFrame:
    res = CliRunner().invoke(main, [*map(str, args), "--format", "csv", "-q"])
    assert res.exit_code == 0, res.output
    return pd.read_csv(io.StringIO(res.stdout))


def test_a_file_without_measure_column_reads_as_l1():
    """The bundled checkpoints' files (and a study started before this) have no measure column."""
    raw = pd.read_csv(DEFAULT_CHECKPOINT / "kernel_stats.csv")
    assert "measure" not in raw.columns
    hist = read_kernel_stats(DEFAULT_CHECKPOINT)
    assert list(hist.columns) == ["epoch", "step", "layer", "stage", "measure", "stat", "value"]
    assert len(hist) == len(raw) and np.array_equal(hist["value"].to_numpy(), raw["value"].to_numpy())
    by_stat = hist.drop_duplicates("stat").set_index("stat")["measure"]
    assert by_stat["mass9_mean"] == by_stat["k90_median"] == "l1"
    assert by_stat["sigma_x_median"] == by_stat["gauss_ok"] == by_stat["n_kernels"] == "any"
    assert all(measure_of(s) == ("l1" if s.startswith(("mass", "k50", "k90")) else "any") for s in STATS)
    table = history_table(hist, ["mass9_mean", "sigma_x_median"])
    assert list(table.columns) == ["measure", "epoch", "step", "layer", "mass9_mean", "sigma_x_median"]
    assert table["mass9_mean"].notna().all()
    # energy was never recorded there: said so, and its measure-free statistics still show
    res = CliRunner().invoke(main, ["history", "--measure", "energy", "--stats", "mass9_mean,gauss_ok"])
    assert res.exit_code == 0 and "warning: resnet18_niff_fmnist: no energy statistics" in res.stderr
    assert res.stdout.splitlines()[0].split() == ["checkpoint", "measure", "epoch", "step", "layer", "gauss_ok"]
    res = CliRunner().invoke(main, ["history", "--measure", "energy", "--stats", "mass9_mean"])
    assert res.exit_code == 2 and "no statistic mass9_mean under measure energy" in res.stderr


def _run(folder, seed: int, scale: float) -> None:
    """A run in progress (kernel_stats.csv and train_config.json, no checkpoint) of the bundled
    recipe with another seed; its statistics are the bundled ones times ``scale``."""
    folder.mkdir(parents=True)
    df = pd.read_csv(DEFAULT_CHECKPOINT / "kernel_stats.csv")
    df = df[df["step"] <= 234]
    df["value"] = df["value"] * scale
    df.to_csv(folder / "kernel_stats.csv", index=False)
    cfg = json.loads((DEFAULT_CHECKPOINT / "train_config.json").read_text())
    (folder / "train_config.json").write_text(json.dumps(dict(cfg, seed=seed, out=str(folder))))


def test_history_pools_runs_of_one_recipe_over_seeds(tmp_path):
    scales = {0: 1.0, 1: 1.1, 2: 0.95}
    for seed, scale in scales.items():
        _run(tmp_path / "arm" / f"seed={seed}", seed, scale)
    runs = [tmp_path / "arm" / f"seed={s}" for s in scales]
    long = _csv("history", *runs, "--stats", "mass9_mean", "--layers", "layer1.0.conv1")
    assert set(long["checkpoint"]) == {"arm"} and (long["n_seeds"] == 3).all()
    base = read_kernel_stats(DEFAULT_CHECKPOINT)
    base = base[(base["stat"] == "mass9_mean") & (base["layer"] == "layer1.0.conv1") & (base["step"] <= 234)]
    for (_, b), (_, r) in zip(base.iterrows(), long.iterrows()):
        v = b["value"] * np.array(list(scales.values()))
        lo, hi = stats.t.interval(0.95, 2, loc=v.mean(), scale=stats.sem(v))
        assert r["value"] == pytest.approx(v.mean()) and (r["lo"], r["hi"]) == pytest.approx((lo, hi))
    both = _csv("history", *runs, "--stats", "mass9_mean", "--layers", "layer1.0.conv1", "--per-seed")
    assert list(dict.fromkeys(both["checkpoint"])) == ["seed=0", "seed=1", "seed=2", "arm"]
    res = CliRunner().invoke(
        main, ["history", *map(str, runs), "--stats", "mass9_mean", "--layers", "layer1.0.conv1", "-q"]
    )
    first = res.stdout.splitlines()[1]
    assert first.split()[:2] == ["arm", "l1"] and "[" in first  # mean [lo, hi]
    # another recipe is not pooled with them
    other = tmp_path / "other"
    _run(other, 3, 1.0)
    cfg = json.loads((other / "train_config.json").read_text())
    (other / "train_config.json").write_text(json.dumps(dict(cfg, mlp_weight_decay=0.1)))
    groups = seed_groups([(p.name, p) for p in runs] + [("other", other)])
    assert [(g.label, g.members, g.seeds) for g in groups] == [("arm", ["seed=0", "seed=1", "seed=2"], [0, 1, 2])]


def test_a_study_folder_stands_for_its_finished_runs(tmp_path):
    root = tmp_path / "study"
    for arm in ("spec", "mlp_weight_decay=0.1"):
        for seed in (0, 1):
            folder = root / arm / f"seed={seed}"
            folder.mkdir(parents=True)
            if (arm, seed) != ("spec", 1):  # that one is still training
                shutil.copy(DEFAULT_CHECKPOINT / "config.json", folder / "config.json")
    (root / "sweep.json").write_text(json.dumps(dict(arms={"spec": {}, "mlp_weight_decay=0.1": {}}, seeds=[0, 1])))
    found = find_checkpoints([root])
    assert [label for label, _ in found] == [
        "spec/seed=0",
        "mlp_weight_decay=0.1/seed=0",
        "mlp_weight_decay=0.1/seed=1",
    ]
    assert found[0][1] == root / "spec" / "seed=0"
