"""Kernel statistics recorded during training (``kernel_stats.csv``), the ``init/`` checkpoint,
``--epochs 0`` and the frequency-MLP optimiser groups."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from helpers import load_weights, tiny_config
from niff_analysis.analysis import extract_kernels
from niff_analysis.analysis.stats import MASS_STATS, SHARED_STATS, kernel_stats, read_kernel_stats
from niff_analysis.checkpoint import load_checkpoint
from niff_analysis.cli import main
from niff_analysis.errors import NiffError
from niff_analysis.layers.niff import NIFFLayer
from niff_analysis.models import create_model, niff_layers
from niff_analysis.train import trainer

pytestmark = pytest.mark.slow  # training runs with kernel statistics: not in `make test-fast`


def _cli_csv(*args) -> pd.DataFrame:
    res = CliRunner().invoke(main, [*map(str, args), "--format", "csv", "--quiet"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return pd.read_csv(io.StringIO(res.stdout))


def _wide(stats: pd.DataFrame, measure: str = "l1") -> pd.DataFrame:
    """One row per layer: the statistics of ``measure`` and the measure-free ones."""
    part = stats[stats["measure"].isin([measure, "any"])]
    return part.pivot_table(index="layer", columns="stat", values="value", sort=False)


def test_recorded_at_init_and_after_every_epoch(reference_run):
    hist = read_kernel_stats(reference_run["out"])
    # 4 steps per epoch, 2 epochs: init, after epoch 1, after epoch 2.
    assert sorted(hist["step"].unique()) == [0, 4, 8]
    assert sorted(hist["epoch"].unique()) == [0.0, 1.0, 2.0]
    assert list(hist.columns) == ["epoch", "step", "layer", "stage", "measure", "stat", "value"]
    model = load_checkpoint(reference_run["out"])
    names = [n for n, _ in niff_layers(model)]
    expected = (
        [("l1", s) for s in MASS_STATS] + [("energy", s) for s in MASS_STATS] + [("any", s) for s in SHARED_STATS]
    )
    for _, block in hist.groupby("step"):
        assert list(dict.fromkeys(block["layer"])) == names
        for _, rows in block.groupby("layer", sort=False):
            assert list(zip(rows["measure"], rows["stat"])) == expected
    # Training moves the kernels: the statistics of the first and last record differ.
    first, last = (_wide(hist[hist["step"] == s]) for s in (0, 8))
    assert not np.allclose(first["mass3_mean"], last["mass3_mean"])
    # Both measures, and they differ: k² weighs the centre more than |k| does.
    l1, energy = _wide(hist[hist["step"] == 8]), _wide(hist[hist["step"] == 8], "energy")
    assert (energy["mass1_mean"] > l1["mass1_mean"]).all() and (energy["k90_mean"] <= l1["k90_mean"]).all()


def test_last_record_equals_what_the_analysis_commands_print(reference_run):
    out = reference_run["out"]
    hist = read_kernel_stats(out)
    last = _wide(hist[hist["step"] == hist["step"].max()])
    fits = _cli_csv("gaussian", out)
    gsum = _cli_csv("gaussian", out, "--view", "summary")
    for measure in ("l1", "energy"):
        summary = _cli_csv("mass", out, "--view", "summary", "--measure", measure, "--bootstrap", "0")
        sizes = _cli_csv("mass", out, "--view", "sizes", "--measure", measure)
        assert set(summary["measure"]) == set(sizes["measure"]) == {measure}
        for layer, row in _wide(hist[hist["step"] == hist["step"].max()], measure).iterrows():
            s = summary[summary["layer"] == layer]
            w = s["window"].to_numpy()
            for win in (1, 3, 5, 9):
                r = s[s["window"] == (win if win in w else w.max())].iloc[0]
                assert row[f"mass{win}_mean"] == pytest.approx(r["mean"], rel=1e-12)
                if win > 1:
                    assert row[f"mass{win}_std"] == pytest.approx(r["std"], rel=1e-9, abs=1e-15)
            z = sizes[sizes["layer"] == layer]
            for q in (50, 90):
                assert row[f"k{q}_mean"] == pytest.approx(z[f"size_{q}"].mean())
                assert row[f"k{q}_median"] == pytest.approx(z[f"size_{q}"].median())
    for layer, row in last.iterrows():
        f = fits[fits["layer"] == layer]
        ok = f[f["success"]]
        assert row["gauss_ok"] == pytest.approx(len(ok) / len(f))
        assert row["gauss_n"] == len(f) == row["n_kernels"]
        if len(ok):
            assert row["sigma_x_median"] == pytest.approx(ok["sigma_x"].median(), rel=1e-9)
            assert row["sigma_y_median"] == pytest.approx(ok["sigma_y"].median(), rel=1e-9)
            g = gsum[gsum["layer"] == layer].iloc[0]
            assert row["sigma_ratio_mean"] == pytest.approx(g["sigma_ratio_mean"], rel=1e-9)
            assert row["sigma_ratio_median"] == pytest.approx(g["sigma_ratio_median"], rel=1e-9)


def test_init_checkpoint_is_the_rebuilt_initialisation(reference_run):
    out, cfg = reference_run["out"], reference_run["cfg"]
    saved = load_weights(out / "init")
    kwargs = json.loads((out / "train_config.json").read_text())["model_kwargs"]  # filled in from the data
    rebuilt = trainer.initial_model(cfg.model, kwargs, cfg.seed).state_dict()
    assert saved.keys() == rebuilt.keys()
    assert all(torch.equal(saved[k], rebuilt[k]) for k in saved)
    init = load_checkpoint(out / "init")
    assert init.niff_checkpoint["epochs"] == 0 and init.niff_checkpoint["seed"] == cfg.seed
    # The step-0 record is the statistics of that checkpoint.
    hist = read_kernel_stats(out)
    first = hist[hist["step"] == 0].reset_index(drop=True)
    again = kernel_stats(extract_kernels(init))
    cols = ["layer", "measure", "stat", "value"]
    pd.testing.assert_frame_equal(first[cols], again[cols], check_exact=False, rtol=1e-12)
    # Building the initialisation leaves the caller's RNG alone.
    before = torch.get_rng_state()
    trainer.initial_model(cfg.model, kwargs, cfg.seed)
    assert torch.equal(before, torch.get_rng_state())


def test_resume_keeps_rows_up_to_the_state_and_rewrites_the_rest(tmp_path, reference_run):
    """A run resumed from a mid-run state, with a stats file that also holds rows recorded
    after that state, writes the same file as the uninterrupted run."""
    out = tmp_path / "run"
    out.mkdir()
    snap = next(p for e, s, p in reference_run["snapshots"] if (e, s) == (1, 2))
    shutil.copy(snap, out / trainer.STATE_NAME)
    text = (reference_run["out"] / "kernel_stats.csv").read_text()
    # Rows after the state (step 6) were recorded with other numbers before the "kill".
    stale = pd.read_csv(io.StringIO(text))
    stale.loc[stale["step"] == 8, "value"] = 0.5
    stale.to_csv(out / "kernel_stats.csv", index=False)
    trainer.train(tiny_config(out), resume=True)
    assert (out / "kernel_stats.csv").read_text() == text


def _old_format(text: str) -> str:
    """A kernel_stats.csv as the code before both measures wrote it: no measure column, l1 only,
    without the statistics added since (mass1_mean, sigma_ratio_median)."""
    df = pd.read_csv(io.StringIO(text))
    df = df[df["measure"].isin(["l1", "any"]) & ~df["stat"].isin(["mass1_mean", "sigma_ratio_median"])]
    return df.drop(columns="measure").to_csv(index=False, float_format="%.17g")


def test_a_run_started_by_the_old_code_resumes_into_one_consistent_file(tmp_path, reference_run):
    """The old rows keep their values and read as l1/any; the rows recorded after the resume hold
    both measures and equal the uninterrupted run's; the file has one header throughout."""
    out = tmp_path / "run"
    out.mkdir()
    snap = next(p for e, s, p in reference_run["snapshots"] if (e, s) == (1, 2))  # global step 6
    shutil.copy(snap, out / trainer.STATE_NAME)
    text = (reference_run["out"] / "kernel_stats.csv").read_text()
    old = _old_format(text)
    (out / "kernel_stats.csv").write_text(old)
    trainer.train(tiny_config(out), resume=True)
    new_text = (out / "kernel_stats.csv").read_text()
    assert new_text.splitlines()[0] == "epoch,step,layer,stage,measure,stat,value"
    got, full = read_kernel_stats(out), read_kernel_stats(reference_run["out"])
    early = got[got["step"] <= 6]
    assert set(early["measure"]) == {"l1", "any"} and "mass1_mean" not in set(early["stat"])
    expect_early = read_kernel_stats(_write(tmp_path / "old.csv", old))
    expect_early = expect_early[expect_early["step"] <= 6].reset_index(drop=True)
    pd.testing.assert_frame_equal(early.reset_index(drop=True), expect_early)
    late = got[got["step"] > 6].reset_index(drop=True)
    assert set(late["step"]) == {8}
    pd.testing.assert_frame_equal(late, full[full["step"] > 6].reset_index(drop=True))
    # it reads back through every consumer
    long = _cli_csv("history", out, "--measure", "both")
    assert set(long["measure"]) == {"l1", "energy", "any"}
    res = CliRunner().invoke(main, ["history", str(out), "--measure", "energy", "--stats", "mass9_mean"])
    assert res.exit_code == 0, res.output
    table = res.stdout.strip().splitlines()
    assert table[0].split() == ["checkpoint", "measure", "epoch", "step", "layer", "mass9_mean"]
    assert len(table) == 1 + 13  # the energy statistic exists from the resumed record on: epoch 2


def _write(path, text):
    path.write_text(text)
    return path


def test_every_n_steps_and_no_kernel_stats(tmp_path, fmnist_dir):
    cfg = tiny_config(tmp_path / "n", epochs=1, train_subset=24, kernel_stats_every_steps=2, save_every_steps=0)
    trainer.train(cfg)
    hist = read_kernel_stats(tmp_path / "n")
    assert sorted(hist["step"].unique()) == [0, 2, 3]  # 3 steps: init, step 2, epoch end
    assert hist[hist["step"] == 2]["epoch"].iloc[0] == pytest.approx(2 / 3)
    trainer.train(tiny_config(tmp_path / "off", epochs=1, train_subset=8, kernel_stats=False))
    assert not (tmp_path / "off" / "kernel_stats.csv").exists()
    assert (tmp_path / "off" / "init" / "config.json").is_file()


def test_epochs_zero_writes_the_initialisation_with_its_accuracy(tmp_path, fmnist_dir):
    out = tmp_path / "zero"
    res = CliRunner().invoke(
        main,
        [
            "train",
            "--model",
            "resnet18_niff",
            "--data-dir",
            str(fmnist_dir),
            "--epochs",
            "0",
            "--train-subset",
            "16",
            "--test-subset",
            "32",
            "--batch-size",
            "8",
            "--threads",
            "1",
            "--device",
            "cpu",
            "--quiet",
            "--out",
            str(out),
        ],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    final, init = load_weights(out), load_weights(out / "init")
    assert all(torch.equal(final[k], init[k]) for k in final)
    cfg = load_checkpoint(out).niff_checkpoint
    assert cfg["epochs"] == 0 and 0 <= cfg["test_acc"] <= 1
    assert list(read_kernel_stats(out)["step"].unique()) == [0]


def test_epoch_checkpoints_are_kept_on_request(tmp_path, fmnist_dir):
    out = tmp_path / "keep"
    trainer.train(tiny_config(out, keep_epoch_checkpoints=True, kernel_stats=False))
    one, two = load_checkpoint(out / "epoch_001"), load_checkpoint(out / "epoch_002")
    assert one.niff_checkpoint["epochs"] == 1 and two.niff_checkpoint["epochs"] == 2
    final = load_weights(out)
    assert all(torch.equal(v, load_weights(out / "epoch_002")[k]) for k, v in final.items())


def test_mlp_groups_reach_the_optimizer(tmp_path, fmnist_dir):
    model = create_model("resnet18_niff", num_classes=10, in_chans=1, stem="cifar")
    cfg = trainer.TrainConfig(mlp_weight_decay=0.05, mlp_lr_scale=0.1)
    groups = {g["name"]: g for g in trainer.param_groups(model, cfg)}
    assert set(groups) == {"decay", "no_decay", "mlp_decay", "mlp_no_decay"}
    mlp = {
        id(p) for m in model.modules() if isinstance(m, NIFFLayer) for p in [*m.real.parameters(), *m.imag.parameters()]
    }
    assert {id(p) for p in groups["mlp_decay"]["params"] + groups["mlp_no_decay"]["params"]} == mlp
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))
    assert groups["mlp_decay"]["weight_decay"] == 0.05 and groups["decay"]["weight_decay"] == 0.002
    assert groups["mlp_no_decay"]["weight_decay"] == 0.0 and groups["mlp_decay"]["lr_scale"] == 0.1
    plain = trainer.param_groups(create_model("resnet18", num_classes=10, in_chans=1, stem="cifar"), cfg)
    assert [g["name"] for g in plain] == ["decay", "no_decay"]
    # End to end: a vanishing MLP lr leaves the MLPs at their initialisation (decay is lr-scaled
    # too), while every other weight trains; the saved optimizer state carries the groups.
    out = tmp_path / "frozen"
    trainer.train(
        tiny_config(out, epochs=1, train_subset=16, mlp_lr_scale=1e-30, mlp_weight_decay=0.1, kernel_stats=False)
    )
    init, final = load_weights(out / "init"), load_weights(out)
    is_mlp = [k for k in final if ".real." in k or ".imag." in k]
    assert is_mlp and all(torch.equal(init[k], final[k]) for k in is_mlp)
    assert not torch.equal(init["fc.weight"], final["fc.weight"])
    st = torch.load(out / trainer.STATE_NAME, weights_only=True)
    saved = {g["name"]: g for g in st["optimizer"]["param_groups"]}
    assert saved["mlp_decay"]["weight_decay"] == 0.1 and saved["mlp_decay"]["lr_scale"] == 1e-30


def test_resume_refuses_changed_mlp_settings(tmp_path, reference_run):
    out = tmp_path / "run"
    out.mkdir()
    snap = next(p for e, s, p in reference_run["snapshots"] if (e, s) == (1, 2))
    shutil.copy(snap, out / trainer.STATE_NAME)
    with pytest.raises(NiffError, match=r"made with mlp_weight_decay=None, this run has mlp_weight_decay=0\.05"):
        trainer.train(tiny_config(out, mlp_weight_decay=0.05), resume=True)
    with pytest.raises(NiffError, match=r"mlp_lr_scale=1\.0, this run has mlp_lr_scale=10"):
        trainer.train(tiny_config(out, mlp_lr_scale=10), resume=True)
    assert not (out / "kernel_stats.csv").exists() and not (out / "init").exists()
    # A state saved before these settings existed was made with their defaults: it resumes.
    st = torch.load(snap, weights_only=True)
    for k in ("mlp_weight_decay", "mlp_lr_scale"):
        st["recipe"].pop(k)
    torch.save(st, out / trainer.STATE_NAME)
    trainer.train(tiny_config(out), resume=True)
    assert all(torch.equal(v, load_weights(reference_run["out"])[k]) for k, v in load_weights(out).items())


def test_baseline_statistics_fit_a_sample_of_dense_layers(baseline_checkpoint):
    lks = extract_kernels(load_checkpoint(baseline_checkpoint), layers="layer3.*")
    stats = _wide(kernel_stats(lks))
    assert (stats["n_kernels"] == 256 * 256).all() and (stats["gauss_n"] == 1024).all()
    # Embedded 3×3 kernels: all mass within 3×3, so every k90 is at most 3.
    assert np.allclose(stats["mass3_mean"], 1.0) and (stats["k90_mean"] <= 3).all()
    small = _wide(kernel_stats(lks[:1], gaussian_max_kernels=None))
    assert small["gauss_n"].iloc[0] == 256 * 256


# ------------------------------------------------------------------------------ reading it back
def test_history_command(reference_run, tmp_path, baseline_checkpoint):
    out = reference_run["out"]
    long = _cli_csv("history", out, "--measure", "both")
    hist = read_kernel_stats(out)
    assert list(long.columns) == ["checkpoint", "epoch", "step", "layer", "stage", "measure", "stat", "value"]
    assert len(long) == len(hist) and set(long["checkpoint"]) == {out.name}
    np.testing.assert_allclose(long["value"].to_numpy(), hist["value"].to_numpy(), rtol=1e-9)
    assert set(_cli_csv("history", out)["measure"]) == {"l1", "any"}  # l1 by default
    res = CliRunner().invoke(main, ["history", str(out), "--stats", "mass9_mean,k90_mean", "--layers", "layer1.*"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.strip().splitlines()
    assert lines[0].split() == ["checkpoint", "measure", "epoch", "step", "layer", "mass9_mean", "k90_mean"]
    assert len(lines) == 1 + 3 * 4  # 3 records × 4 layer1 layers
    res = CliRunner().invoke(
        main, ["history", str(out), "--stats", "mass9_mean", "--layers", "layer1.*", "--measure", "both"]
    )
    assert len(res.stdout.strip().splitlines()) == 1 + 2 * 3 * 4
    for args, message in (
        (["--stats", "nope"], "--stats: unknown statistic 'nope'"),
        (["--layers", "layer9*"], "no layer matches 'layer9*'"),
    ):
        res = CliRunner().invoke(main, ["history", str(out), *args])
        assert res.exit_code == 2 and message in res.output and len(res.output.strip().splitlines()) == 1
    res = CliRunner().invoke(main, ["history", str(baseline_checkpoint)])
    assert res.exit_code == 2 and "no kernel_stats.csv" in res.output
    # A run still in progress (statistics and init/, no final checkpoint yet) is read as well.
    running = tmp_path / "running"
    shutil.copytree(out / "init", running / "init")
    shutil.copy(out / "kernel_stats.csv", running / "kernel_stats.csv")
    assert len(_cli_csv("history", running, "--measure", "both")) == len(hist)


def test_load_initial_finds_or_rebuilds_the_initialisation(reference_run, tmp_path):
    from niff_analysis.checkpoint import load_initial, save_checkpoint

    out = reference_run["out"]
    saved = load_weights(out / "init")

    def same(model):
        return all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())

    assert same(load_initial(out))
    # Without the run folder's init/, it is rebuilt from the recorded architecture and seed.
    alone = tmp_path / "alone"
    alone.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(out / f, alone / f)
    assert same(load_initial(alone))
    assert load_initial(out / "init") is None  # an initialisation has none
    hand = save_checkpoint(create_model("resnet18_niff", num_classes=10, in_chans=1, stem="cifar"), tmp_path / "hand")
    assert load_initial(hand) is None  # saved by hand: no training run recorded


def test_figures_draw_the_untrained_reference_and_the_history(reference_run):
    from niff_analysis.pipeline import analyse
    from niff_analysis.plotting import iter_figures

    data = analyse([reference_run["out"]], layers=["layer1.*"], max_kernels=16, cost_sizes=())
    assert set(data.untrained_mass_summary["layer"]) == {
        "layer1.0.conv1",
        "layer1.0.conv2",
        "layer1.1.conv1",
        "layer1.1.conv2",
    }
    assert not data.history.empty
    figs = {name: (fig, tables) for name, fig, tables in iter_figures(data)}
    fig, tables = figs["mass_ratio"]
    assert "mass_summary_untrained" in tables
    dashed = [ln for ln in fig.axes[0].get_lines() if ln.get_linestyle() == "--" and len(ln.get_xdata())]
    assert len(dashed) == 4
    fig, tables = figs["kernel_history"]
    assert len(fig.axes) >= 2 and tables["kernel_history"]["epoch"].max() == 2
