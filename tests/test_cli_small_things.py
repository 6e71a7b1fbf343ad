"""Small things a user meets: one spelling of the output option, a quiet flag on every command
that prints, outputs for people that read as what they are (integers, a summary line), tables
the API and the CLI agree on, and no empty stage."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import torch
from click.testing import CliRunner

from niff_analysis.cli import main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# --------------------------------------------------------------------------- figures -o/--output
def test_figures_takes_output_like_every_command_and_still_out(tmp_path):
    help_text = invoke("figures", "--help").output
    assert "-o, --output DIR" in help_text
    assert "--out " not in help_text.replace("--output", "")  # the old spelling works, unlisted
    target = tmp_path / "a_file"
    target.write_text("not a folder")
    for option in ("-o", "--output", "--out"):
        res = invoke("figures", option, target, "--cost-sizes", "none", "-q")
        assert res.exit_code == 2 and f"Directory '{target}' is a file" in res.output, (option, res.output)
    res = invoke("figures", "--cost-sizes", "none", "-q")
    assert res.exit_code == 2 and "Missing option '-o' / '--output'" in res.output
    res = invoke("figures", "-o", tmp_path / "x", "--out", tmp_path / "y", "-q")
    assert res.exit_code == 2 and "disagree" in res.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_figures_output_inside_its_input_names_the_option_given(tmp_path):
    import shutil

    from niff_analysis.checkpoint import DEFAULT_CHECKPOINT

    ck = tmp_path / "ck"
    shutil.copytree(DEFAULT_CHECKPOINT, ck)
    for option in ("-o", "--out"):
        res = invoke("figures", ck, option, ck / "figs", "--cost-sizes", "none", "-q")
        spelled = "--output" if option == "-o" else "--out"
        assert res.exit_code == 2 and f"{spelled} {ck / 'figs'} lies inside {ck}" in res.output, res.output
    assert not (ck / "figs").exists()


# --------------------------------------------------------------------------- -q everywhere
def test_import_is_quiet_with_q_and_train_takes_q(tmp_path):
    from niff_analysis.checkpoint import load_checkpoint
    from niff_analysis.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10, in_chans=1, stem="cifar", input_size=16)
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    args = [
        "import",
        tmp_path / "sd.pt",
        "--model",
        "resnet18",
        "--num-classes",
        "10",
        "--in-chans",
        "1",
        "--stem",
        "cifar",
        "--input-size",
        "16",
    ]
    loud = invoke(*args, "--out", tmp_path / "loud")
    assert loud.exit_code == 0 and "checkpoint in" in loud.stdout
    quiet = invoke(*args, "--out", tmp_path / "quiet", "-q")
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stdout == "" and quiet.stderr == ""
    loaded = load_checkpoint(tmp_path / "quiet").state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())  # the import still ran
    for command in ("import", "train", "sweep"):
        assert "-q, --quiet" in invoke(command, "--help").output, command


# --------------------------------------------------------------------------- describe
def test_describe_summarises_the_recorded_epochs():
    from niff_analysis.analysis.stats import read_kernel_stats
    from niff_analysis.checkpoint import DEFAULT_CHECKPOINT

    epochs = sorted(read_kernel_stats(DEFAULT_CHECKPOINT)["epoch"].unique())
    assert len(epochs) == 61 and epochs[-1] == 15  # 4 records per epoch for 15 epochs, and init
    short = invoke("describe").stdout
    line = next(s for s in short.splitlines() if s.strip().startswith("kernel_stats:"))
    assert "61 records, epoch 0 to 15, every 0.25" in line and "14.75" not in short
    full = invoke("describe", "--all-epochs").stdout
    line = next(s for s in full.splitlines() if s.strip().startswith("kernel_stats:"))
    assert line.split("at epochs ")[1].split(" (")[0] == ", ".join(f"{e:g}" for e in epochs)
    assert json.loads(invoke("describe", "--format", "json").stdout)["kernel_stats"]["epochs"] == epochs


# --------------------------------------------------------------------------- history
def test_history_prints_counts_as_integers():
    from niff_analysis.analysis.stats import history_table, read_kernel_stats
    from niff_analysis.checkpoint import DEFAULT_CHECKPOINT

    table = history_table(read_kernel_stats(DEFAULT_CHECKPOINT), ["mass3_mean", "gauss_n", "n_kernels"])
    assert str(table["n_kernels"].dtype) == "Int64" and table["mass3_mean"].dtype == float
    text = invoke("history", "--layers", "layer4.0.conv2", "--stats", "mass3_mean,gauss_n,n_kernels").stdout
    head, *rows = text.splitlines()
    assert head.split()[-2:] == ["gauss_n", "n_kernels"]
    assert len(rows) == 61 and all(r.split()[-2:] == ["512", "512"] for r in rows)  # not 512.0
    assert all("." in r.split()[-3] for r in rows)  # a mean stays a float


def test_history_long_form_writes_counts_as_integers_and_means_as_floats():
    text = invoke("history", "--layers", "layer4.0.conv2", "--stats", "mass3_mean,n_kernels", "--format", "csv").stdout
    rows = pd.read_csv(io.StringIO(text), dtype=str)
    counts, means = rows[rows["stat"] == "n_kernels"], rows[rows["stat"] == "mass3_mean"]
    assert len(counts) == 61 and set(counts["value"]) == {"512"}  # not 512.0
    assert len(means) == 61 and all("." in v for v in means["value"])
    records = json.loads(
        invoke("history", "--layers", "layer4.0.conv2", "--stats", "n_kernels", "--format", "json").stdout
    )
    assert {type(r["value"]) for r in records} == {int}


def test_a_mean_count_over_seeds_that_is_no_whole_number_stays_a_float():
    from niff_analysis.analysis.stats import history_table

    long = pd.DataFrame(
        {
            "epoch": [1.0, 1.0],
            "step": [10, 10],
            "layer": ["a", "b"],
            "stage": ["s", "s"],
            "measure": ["any", "any"],
            "stat": ["gauss_n", "gauss_n"],
            "value": [63.5, 64.0],
        }
    )
    assert history_table(long, ["gauss_n"])["gauss_n"].tolist() == [63.5, 64.0]


# --------------------------------------------------------------------------- mass at window 9
def test_mass_summary_reports_every_layer_at_the_windows_the_cli_shows():
    from niff_analysis.analysis import extract_kernels, kernel_mass, mass_summary, mass_table

    lks = extract_kernels(None)
    mass = kernel_mass(lks)
    summ = mass_summary(mass)
    at9 = summ.query("window == 9")
    assert at9["layer"].tolist() == [lk.name for lk in lks]  # 8×8 and 4×4 layers too, in order
    small = at9[at9["fmap_h"] < 9]
    assert len(small) == 6 and (small["mean"] == 1.0).all() and (small["std"] == 0).all() and small.beyond_kernel.all()
    assert not at9[at9["fmap_h"] >= 9].beyond_kernel.any()
    table = mass_table(mass)
    cli = pd.read_csv(
        io.StringIO(invoke("mass", "--view", "summary", "--format", "csv", "--bootstrap", "0", "-q").stdout)
    )
    for w in (1, 3, 5, 9):
        api = summ[summ.window == w].set_index("layer")["mean"]
        assert len(api) == 13
        np.testing.assert_allclose(api.round(3), table.set_index("layer")[f"mass_w{w}"].loc[api.index])
        np.testing.assert_allclose(cli[cli.window == w].set_index("layer")["mean"].loc[api.index], api, rtol=1e-9)
    # Only the windows a kernel has when asked for them; the whole-kernel row is then the last.
    own = mass_summary(mass, windows=())
    assert not own.beyond_kernel.any()
    assert (own.groupby("layer").window.max() == own.groupby("layer").fmap_h.max()).all()
    pd.testing.assert_frame_equal(summ[~summ.beyond_kernel].reset_index(drop=True), own)


def test_mass_curves_end_at_the_whole_kernel():
    """The rows beyond a kernel are for tables: a figure's curve still ends at the kernel's size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from niff_analysis.analysis import extract_kernels, kernel_mass, mass_summary
    from niff_analysis.plotting.curves import plot_mass_ratio

    summ = mass_summary(kernel_mass(extract_kernels(None, layers="layer[34].0.conv2")))
    assert summ.beyond_kernel.any()
    fig, axes = plot_mass_ratio(summ)
    ends = {
        line.get_label(): max(line.get_xdata())
        for a in np.ravel(axes)
        for line in a.get_lines()
        if line.get_label() in ("layer3.0.conv2", "layer4.0.conv2")
    }
    plt.close(fig)
    assert ends == {"layer3.0.conv2": 8, "layer4.0.conv2": 4}


# --------------------------------------------------------------------------- stage of a factory model
def test_a_factory_model_has_a_stage_in_every_output(tmp_path):
    from niff_analysis.analysis import extract_kernels
    from niff_analysis.checkpoint import load_checkpoint, save_checkpoint
    from niff_analysis.models.build import build_model
    from niff_analysis.plotting.style import palette_stage as figure_stage

    name = "factories:tiny_cnn"
    path = save_checkpoint(build_model(name, dict(width=4), input_size=16, factory=name), tmp_path / "mine")
    lks = extract_kernels(load_checkpoint(path, factory=name))
    assert [(lk.name, lk.stage) for lk in lks] == [("0", "0"), ("2", "2"), ("4", "4")]
    assert all(lk.stage == figure_stage(lk.name, None) for lk in lks)  # as the figures colour them
    res = invoke("mass", path, "--factory", name, "--format", "csv", "-q")
    assert res.exit_code == 0, res.output
    df = pd.read_csv(io.StringIO(res.stdout), dtype={"layer": str, "stage": str})
    assert df["stage"].notna().all() and (df["stage"] == df["layer"]).all()
    # A named stage is kept; a stem conv is a stage of its own.
    named = {lk.name: lk.stage for lk in extract_kernels(None, layers=["conv1", "layer2.0.conv2"], include_conv=True)}
    assert named == {"conv1": "conv1", "layer2.0.conv2": "layer2"}


def test_the_bundled_stem_conv_has_a_stage_in_the_cli():
    res = invoke("mass", "--layers", "conv1,layer1.0.conv1", "--include-conv", "--format", "csv", "-q")
    assert res.exit_code == 0, res.output
    assert pd.read_csv(io.StringIO(res.stdout))["stage"].notna().all()


# --------------------------------------------------------------------------- models, without torch
def test_the_command_lines_static_lists_equal_their_sources():
    """The names the options and `models` list without importing torch (niff_analysis.cli.common)
    are those of the modules that define them."""
    import inspect

    from niff_analysis.analysis.erf import PROTOCOLS
    from niff_analysis.cli import common
    from niff_analysis.layers import CONV_MODES
    from niff_analysis.models import create_model, list_models, parse_name
    from niff_analysis.models.registry import STEMS
    from niff_analysis.pipeline import COST_SIZES
    from niff_analysis.plotting.report import FORMATS
    from niff_analysis.train import DATASETS
    from niff_analysis.train.precision import PRECISIONS

    assert common.MODELS == {n: parse_name(n) for n in list_models()}
    assert common.STEMS == STEMS and common.CONV_MODES == CONV_MODES and common.DATASETS == DATASETS
    assert common.MODE_DEFAULT == inspect.signature(create_model).parameters["mode"].default
    assert common.PRECISIONS == PRECISIONS and common.FIGURE_FORMATS == FORMATS
    assert common.COST_SIZES == COST_SIZES and common.ERF_PROTOCOLS == PROTOCOLS


def test_models_in_every_format_as_a_dataframe_renders():
    from niff_analysis.cli.common import render_frame
    from niff_analysis.models import list_models, parse_name

    names = list_models("resnet*")
    expect = pd.DataFrame([dict(name=n, architecture=parse_name(n)[0], variant=parse_name(n)[1]) for n in names])
    for fmt in ("table", "csv", "json"):
        res = invoke("models", "resnet*", "--format", fmt)
        assert res.exit_code == 0 and res.stdout == render_frame(expect, fmt), fmt
    assert pd.read_csv(io.StringIO(invoke("models", "--format", "csv").stdout))["name"].tolist() == list_models()
    res = invoke("models", "vgg*")
    assert res.exit_code == 2 and "no model matches 'vgg*'" in res.output
