"""Small things a new user hits (issue 14, "the list"): each through the CLI."""

from __future__ import annotations

import pandas as pd
from click.testing import CliRunner

from helpers import FMNIST, load_weights
from niff_analysis.cli import main

TINY = [
    "--data-dir",
    str(FMNIST),
    "--epochs",
    "1",
    "--batch-size",
    "8",
    "--train-subset",
    "8",
    "--test-subset",
    "8",
    "--threads",
    "1",
    "--device",
    "cpu",
    "--quiet",
    "--no-kernel-stats",
]


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_train_refuses_an_out_folder_holding_another_run(tmp_path):
    out = tmp_path / "run"
    assert _run("train", "--model", "resnet18_niff", *TINY, "--out", out).exit_code == 0
    before = load_weights(out)
    res = _run("train", "--model", "resnet18", *TINY, "--out", out)
    assert res.exit_code == 2 and "holds another run (made with model='resnet18_niff'" in res.output
    res = _run("train", "--model", "resnet18_niff", *TINY, "--out", out)
    assert res.exit_code == 2 and "--resume continues it" in res.output
    after = load_weights(out)
    assert all((before[k] == after[k]).all() for k in before)  # nothing was replaced
    res = _run("train", "--model", "resnet18", *TINY, "--out", out, "--overwrite")
    assert res.exit_code == 0, res.output
    assert "fc.weight" in load_weights(out) and "conv1.weight" in load_weights(out / "init")
    assert not any(".real." in k for k in load_weights(out / "init"))  # init/ is the new model's


def test_train_refuses_settings_that_would_be_ignored_or_are_unknown(tmp_path):
    res = _run("train", "--model", "resnet18", "--mlp", "16,64", *TINY, "--out", tmp_path / "a")
    assert res.exit_code == 2 and "resnet18 has no NIFF layers" in res.output
    res = _run("train", "--model", "resnet18_niff", "--mlp", "bogus", *TINY, "--out", tmp_path / "b")
    assert res.exit_code == 2 and "unknown MLP preset 'bogus'" in res.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_mass_table_windows_beyond_the_map_are_the_whole_kernel():
    res = _run("mass", "--layers", "layer1.0.conv1,layer4.1.*", "--bootstrap", "0", "-q")  # no "v [lo, hi]" cells
    assert res.exit_code == 0, res.output
    lines = res.stdout.strip().splitlines()
    assert "the window covers all of it" in lines[-1]
    table = pd.DataFrame([ln.split() for ln in lines[1:-1]], columns=lines[0].split())
    table[["fmap_h", "mass_w5", "mass_w9"]] = table[["fmap_h", "mass_w5", "mass_w9"]].astype(float)
    assert list(table["layer"]) == ["layer1.0.conv1", "layer4.1.conv1", "layer4.1.conv2"]  # a comma list
    small = table[table["fmap_h"] == 4]
    assert (small["mass_w5"] == 1.0).all() and (small["mass_w9"] == 1.0).all()
    assert table["mass_w9"].notna().all()


def test_max_kernels_samples_every_layer_and_is_recorded(tmp_path):
    import json

    out = tmp_path / "g.csv"
    res = _run("gaussian", "--layers", "layer4.1.*", "--max-kernels", "16", "-q", "-o", out)
    assert res.exit_code == 0, res.output
    fits = pd.read_csv(out)
    assert fits.groupby("layer").size().tolist() == [16, 16]
    assert json.loads((tmp_path / "meta.json").read_text())["outputs"]["g.csv"]["parameters"]["max_kernels"] == 16
    res = _run("gaussian", "--layers", "layer4.1.*", "--max-kernels", "16", "-q", "--format", "csv")
    assert pd.read_csv(__import__("io").StringIO(res.stdout)).equals(fits)  # the same sample every run


def test_a_hand_edited_config_names_the_wrong_field(tmp_path):
    import json
    import shutil

    from niff_analysis.checkpoint import DEFAULT_CHECKPOINT

    ck = tmp_path / "ck"
    shutil.copytree(DEFAULT_CHECKPOINT, ck)
    cfg = json.loads((ck / "config.json").read_text())
    for field, value, shown in (("input_size", "32", "'32'"), ("num_classes", 10.5, "10.5")):
        bad = dict(cfg, model_kwargs=dict(cfg["model_kwargs"], **{field: value}))
        (ck / "config.json").write_text(json.dumps(bad))
        res = _run("mass", ck)
        assert res.exit_code == 2, res.output
        assert f"config field model_kwargs.{field} must be" in res.output and shown in res.output
