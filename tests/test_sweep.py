"""``niff-analyze sweep``: recipe arms from one seed, resumable, with their statistics joined."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from conftest import FMNIST, load_weights
from niff_analysis.cli import main
from niff_analysis.errors import NiffError
from niff_analysis.train.sweep import collect, parse_arm

pytestmark = pytest.mark.slow  # training sweeps: not in `make test-fast`

ARGS = ["--model", "resnet18_niff", "--data-dir", str(FMNIST), "--epochs", "1", "--batch-size", "8",
        "--train-subset", "16", "--test-subset", "16", "--threads", "1", "--device", "cpu", "--quiet"]


def test_parse_arm():
    assert parse_arm("spec") == ("spec", {})
    assert parse_arm("mlp_weight_decay=0.05,mlp-lr-scale=10") == (
        "mlp_weight_decay=0.05_mlp_lr_scale=10", {"mlp_weight_decay": 0.05, "mlp_lr_scale": 10.0})
    for bad, msg in (("seed=3", "keys from"), ("lr=fast", "lr takes a number"), ("lr", "keys from")):
        with pytest.raises(NiffError, match=msg):
            parse_arm(bad)


def test_sweep_trains_each_arm_from_the_same_start_and_resumes(tmp_path, fmnist_dir):
    out = tmp_path / "sweep"
    arms = ["--arm", "spec", "--arm", "mlp_weight_decay=0.5,mlp_lr_scale=10"]
    res = CliRunner().invoke(main, ["sweep", *ARGS, *arms, "--out", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    names = ["spec", "mlp_weight_decay=0.5_mlp_lr_scale=10"]
    for f in ("sweep.csv", "sweep.png", "sweep.pdf", "sweep.json"):
        assert (out / f).is_file()
    a, b = (load_weights(out / n / "init") for n in names)
    assert all(torch.equal(a[k], b[k]) for k in a)  # same seed, same initialisation
    fa, fb = (load_weights(out / n) for n in names)
    assert not torch.equal(fa["layer1.0.conv1.real.0.weight"], fb["layer1.0.conv1.real.0.weight"])
    table = pd.read_csv(out / "sweep.csv")
    assert list(table["arm"].unique()) == names and set(table["step"]) == {0, 2}
    assert table[table["step"] == 2]["test_acc"].notna().all() and table[table["step"] == 0]["test_acc"].isna().all()
    pd.testing.assert_frame_equal(collect(out), table, check_dtype=False)
    # Rerunning skips the finished arms (their checkpoints are not rewritten).
    stamp = (out / names[0] / "model.safetensors").stat().st_mtime_ns
    res = CliRunner().invoke(main, ["sweep", *ARGS, *arms, "--out", str(out)], catch_exceptions=False)
    assert res.exit_code == 0 and (out / names[0] / "model.safetensors").stat().st_mtime_ns == stamp


def test_sweep_bad_arms_are_one_line(tmp_path):
    for arms, msg in ((["spec", "spec"], "two arms have the same settings"),
                      (["momentum=x"], "momentum takes a number")):
        res = CliRunner().invoke(main, ["sweep", *ARGS, *sum((["--arm", a] for a in arms), []),
                                        "--out", str(tmp_path / "s")])
        assert res.exit_code == 2 and msg in res.output and "Traceback" not in res.output
        assert not (tmp_path / "s").exists()
