"""`niff-analyze kernels|mass|pca|gaussian` through CliRunner and the installed entry point."""

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from niff_analysis import __version__
from niff_analysis.checkpoint import DEFAULT_CHECKPOINT, Checkpoint
from niff_analysis.cli import main
from niff_analysis.io import file_sha256

ENTRY = Path(sys.executable).parent / "niff-analyze"
SMALL = "layer4.1.conv2"  # a 4×4 layer keeps every command fast
COLUMNS = {
    "kernels": ["checkpoint", "layer", "stage", "kind", "fmap_h", "fmap_w"],
    "mass": ["checkpoint", "measure", "layer", "stage", "fmap_h", "fmap_w", "channel", "window", "mass_ratio"],
    "pca": ["checkpoint", "layer", "stage", "fmap_h", "fmap_w", "component", "explained_variance_ratio"],
    "gaussian": [
        "checkpoint",
        "layer",
        "stage",
        "fmap_h",
        "fmap_w",
        "channel",
        "sigma_x",
        "sigma_y",
        "sigma_major",
        "sigma_minor",
        "theta",
        "x0",
        "y0",
        "amplitude",
        "offset",
        "r2",
        "success",
    ],
}


@pytest.fixture(scope="module", autouse=True)
def cached_checkpoints():
    """Load each checkpoint's model once for the CliRunner tests (the subprocess tests load for
    real): every command loads through Checkpoint.model."""
    cache = {}
    real = Checkpoint.model

    def model(self, device="cpu", allow_non_finite=False):
        key = (str(self.path), self.config.sha256, str(device), allow_non_finite, self.factory)
        if key not in cache:
            cache[key] = real(self, device, allow_non_finite)
        return cache[key]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Checkpoint, "model", model)
        yield


def invoke(*args):
    result = CliRunner().invoke(main, list(args))
    return result


@pytest.mark.parametrize("command", ["kernels", "mass", "pca", "gaussian"])
@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
def test_commands_and_formats(command, fmt):
    res = invoke(command, "--layers", SMALL, "--format", fmt, "--device", "cpu")
    assert res.exit_code == 0, res.stderr
    out = res.stdout
    if fmt == "csv":
        df = pd.read_csv(io.StringIO(out))
    elif fmt == "json":
        rows = json.loads(out)
        assert isinstance(rows, list) and isinstance(rows[0], dict)
        df = pd.DataFrame(rows)
    else:
        assert SMALL in out and "resnet18_niff_fmnist" in out
        return
    assert list(df.columns[: len(COLUMNS[command])]) == COLUMNS[command]
    assert set(df.checkpoint) == {"resnet18_niff_fmnist"} and set(df.layer) == {SMALL}
    if command == "mass":
        assert len(df) == 512 * 3 and set(df.window) == {1, 3, 4}
    if command == "pca":
        assert df.component.tolist() == list(range(6))
    if command == "gaussian":
        assert len(df) == 512 and df.success.dtype == bool
    assert "kernels" in res.stderr  # the log line went to stderr, not into the data


def test_mass_views_and_quiet():
    summ = pd.read_csv(
        io.StringIO(invoke("mass", "--layers", SMALL, "--format", "csv", "--view", "summary", "-q").stdout)
    )
    # the 4×4 kernels' windows, then 5 and 9 (windows every layer reports), which cover all of it
    assert summ.window.tolist() == [1, 3, 4, 5, 9] and (summ.n == 512).all()
    assert summ.beyond_kernel.tolist() == [False, False, False, True, True]
    assert (summ["mean"].iloc[2:] == 1.0).all() and (summ["std"].iloc[2:] == 0).all()
    assert (summ[["delta", "noise", "init"]].iloc[2:] == 1.0).all().all()  # so are the references'
    res = invoke("mass", "--layers", SMALL, "--format", "csv", "--view", "sizes", "--quiet")
    sizes = pd.read_csv(io.StringIO(res.stdout))
    assert list(sizes.columns[-3:]) == ["size_50", "size_90", "size_95"] and len(sizes) == 512
    assert res.stderr == ""


def test_pca_components_and_weights():
    df = pd.read_csv(io.StringIO(invoke("pca", "--layers", "layer4.*", "-k", "3", "--format", "csv").stdout))
    assert df.groupby("layer").component.max().eq(2).all() and df.layer.nunique() == 3
    w = pd.read_csv(io.StringIO(invoke("pca", "--layers", SMALL, "--weights", "--format", "csv").stdout))
    assert sorted(set(w.part)) == ["imag", "real"] and len(w) == 12 and set(w.response) == {"raw"}
    h = pd.read_csv(
        io.StringIO(invoke("pca", "--layers", SMALL, "--weights", "--response", "hermitian", "--format", "csv").stdout)
    )
    assert set(h.response) == {"hermitian"} and len(h) == 12
    res = invoke("pca", "--layers", SMALL, "--response", "hermitian")
    assert res.exit_code == 2 and "--response applies to --weights only" in res.output
    res = invoke("pca", "-k", "0")
    assert res.exit_code != 0


def test_pca_components_beyond_the_rank_are_capped_with_a_warning_and_no_empty_columns():
    """A 4×4 layer has rank 16, a 32×32 layer of 64 kernels rank 64: asking for 10,000 keeps
    what each has, says so, and the table shows only the components every layer has."""
    res = invoke("pca", "--layers", f"{SMALL},layer1.0.conv1", "-k", "10000")
    assert res.exit_code == 0, res.stderr
    assert "2 of 2 layers have fewer than 10000 components" in res.stderr and "kept 16-64" in res.stderr
    assert "NaN" not in res.stdout and "nan" not in res.stdout
    header = res.stdout.splitlines()[0].split()
    assert [c for c in header if c.startswith("evr_")][-2:] == ["evr_15", "evr_total"]
    long = pd.read_csv(
        io.StringIO(
            invoke("pca", "--layers", f"{SMALL},layer1.0.conv1", "-k", "10000", "--format", "csv", "--quiet").stdout
        )
    )
    assert long.groupby("layer").size().to_dict() == {SMALL: 16, "layer1.0.conv1": 64}
    assert long.explained_variance_ratio.notna().all()
    quiet = invoke("pca", "--layers", SMALL, "-k", "6", "--quiet")
    assert quiet.stderr == ""  # no warning where nothing was capped


def test_gaussian_summary_view():
    df = pd.read_json(
        io.StringIO(invoke("gaussian", "--layers", SMALL, "--format", "json", "--view", "summary").stdout)
    )
    assert {"sigma_x_mean", "sigma_x_std", "sigma_y_mean", "sigma_y_std", "n_ok"} <= set(df.columns)
    fits = pd.read_csv(io.StringIO(invoke("gaussian", "--layers", SMALL, "--format", "csv", "-q").stdout))
    ok = fits[fits.success]
    row = df.iloc[0]
    # σx/σy three ways: the paper's mean, the median and the geometric mean of per-kernel ratios
    assert row.sigma_ratio_mean == pytest.approx(ok.sigma_ratio.mean(), rel=1e-9)
    assert row.sigma_ratio_median == pytest.approx(ok.sigma_ratio.median(), rel=1e-9)
    assert row.sigma_ratio_gmean == pytest.approx(np.exp(np.log(ok.sigma_ratio).mean()), rel=1e-9)
    for stat in (
        "sigma_x_mean",
        "sigma_x_median",
        "sigma_y_median",
        "sigma_ratio_mean",
        "sigma_ratio_median",
        "sigma_ratio_gmean",
        "sigma_x_moment_median",
    ):
        assert row[f"{stat}_lo"] < row[stat] < row[f"{stat}_hi"], stat
    from niff_analysis.analysis.uncertainty import bootstrap_interval

    assert (row.sigma_x_median_lo, row.sigma_x_median_hi) == pytest.approx(bootstrap_interval(ok.sigma_x, "median"))
    table = invoke("gaussian", "--layers", SMALL, "-q").stdout
    assert "sigma_ratio_median" in table and f"{row.sigma_x_median:.3g} [{row.sigma_x_median_lo:.3g}, " in table
    assert (
        "sigma_x_median_lo"
        not in pd.read_json(
            io.StringIO(
                invoke(
                    "gaussian", "--layers", SMALL, "--format", "json", "--view", "summary", "--bootstrap", "0"
                ).stdout
            )
        ).columns
    )


def test_mass_energy_equals_an_independent_k2_computation_on_the_exported_kernels(tmp_path):
    """Done criterion of issue 26: `mass --measure energy --format csv` on the bundled default
    equals k² ratios recomputed with numpy from `kernels --output` (1e-6)."""
    npz = tmp_path / "kernels.npz"
    assert invoke("kernels", "-q", "-o", str(npz)).exit_code == 0
    res = invoke("mass", "--measure", "energy", "--format", "csv", "-q")
    assert res.exit_code == 0, res.stderr
    got = pd.read_csv(io.StringIO(res.stdout))
    assert set(got.measure) == {"energy"} and got.layer.nunique() == 13
    with np.load(npz) as arrays:
        for layer, part in got.groupby("layer", sort=False):
            k = arrays[layer].astype(np.float64)
            k = k.reshape(-1, *k.shape[-2:])
            n, h, w = k.shape
            e = k**2
            cy, cx = h // 2, w // 2
            expect = []
            for c in range(n):
                total, s = e[c].sum(), 1
                while True:
                    r = (s - 1) // 2
                    win = e[c, max(cy - r, 0) : cy + r + 1, max(cx - r, 0) : cx + r + 1]
                    expect.append((c, s if win.size < h * w else max(h, w), win.sum() / total))
                    if win.size == h * w:
                        break
                    s += 2
            ref = pd.DataFrame(expect, columns=["channel", "window", "ratio"])
            assert part[["channel", "window"]].values.tolist() == ref[["channel", "window"]].values.tolist()
            np.testing.assert_allclose(part.mass_ratio.to_numpy(), ref.ratio.to_numpy(), rtol=0, atol=1e-6)


def test_mass_summary_carries_interval_and_scale():
    summ = pd.read_csv(
        io.StringIO(
            invoke(
                "mass", "--layers", "layer4.*", "--measure", "both", "--view", "summary", "--format", "csv", "-q"
            ).stdout
        )
    )
    assert list(summ.columns) == [
        "checkpoint",
        "measure",
        "layer",
        "stage",
        "fmap_h",
        "fmap_w",
        "window",
        "mean",
        "mean_lo",
        "mean_hi",
        "std",
        "n",
        "beyond_kernel",
        "delta",
        "noise",
        "init",
    ]
    assert set(summ.measure) == {"l1", "energy"} and (summ.delta == 1.0).all()
    inner = summ[summ.window < 4]
    assert ((inner.mean_lo < inner["mean"]) & (inner["mean"] < inner.mean_hi)).all()
    # white noise on 4×4: s²/16 at s = 1, 3, within sampling error of the seeded 512 kernels
    for s in (1, 3):
        assert summ[summ.window == s].noise.sub(s * s / 16).abs().max() < 0.03
    # the initialisation is the bundled run's, rebuilt from its seed: as the history's step 0
    from niff_analysis.analysis.stats import read_kernel_stats

    hist = read_kernel_stats(DEFAULT_CHECKPOINT)
    step0 = hist[(hist.step == 0) & (hist.stat == "mass3_mean") & (hist.layer == SMALL)].value.iloc[0]
    got = summ[(summ.layer == SMALL) & (summ.window == 3) & (summ.measure == "l1")].init.iloc[0]
    assert got == pytest.approx(step0, rel=1e-9)
    table = invoke("mass", "--layers", SMALL, "--view", "summary", "-q").stdout
    assert table.splitlines()[0].split() == [
        "checkpoint",
        "measure",
        "layer",
        "stage",
        "fmap_h",
        "fmap_w",
        "window",
        "mean",
        "n",
        "beyond_kernel",
        "delta",
        "noise",
        "init",
    ]
    assert "[" in table.splitlines()[1]
    per_layer = invoke("mass", "--layers", SMALL, "--measure", "energy", "-q").stdout
    assert per_layer.splitlines()[1].split()[1] == "energy" and "mass_w1" in per_layer


def test_output_files_and_meta(tmp_path):
    out = tmp_path / "res" / "mass.csv"
    res = invoke("mass", "--layers", SMALL, "--output", str(out))
    assert res.exit_code == 0, res.stderr
    assert res.stdout == ""
    df = pd.read_csv(out)
    assert list(df.columns) == COLUMNS["mass"]
    res = invoke("kernels", "--layers", "layer4.*", "--output", str(out.parent / "kernels.npz"), "--responses")
    assert res.exit_code == 0, res.stderr
    with np.load(out.parent / "kernels.npz") as arrays:
        assert sorted(arrays.files) == sorted(
            [f"layer4.{b}.conv{c}{s}" for b, c in [(0, 2), (1, 1), (1, 2)] for s in ("", "@real", "@imag")]
        )
        assert arrays["layer4.1.conv2"].shape == (512, 4, 4)
    invoke("pca", "--layers", SMALL, "-o", str(out.parent / "pca.npz"))
    with np.load(out.parent / "pca.npz") as arrays:
        assert arrays[SMALL].shape == (6, 4, 4)
    meta = json.loads((out.parent / "meta.json").read_text())
    assert set(meta["outputs"]) == {"mass.csv", "kernels.npz", "pca.npz"}
    m = meta["outputs"]["mass.csv"]
    assert m["versions"]["niff_analysis"] == __version__ and m["command"] == "mass"
    assert m["parameters"]["layers"] == SMALL and m["rows"] == len(df)
    assert m["checkpoints"][0]["sha256"] == file_sha256(DEFAULT_CHECKPOINT / "model.safetensors")
    assert m["sha256"] == file_sha256(out)
    # Suffix decides the format; a contradicting --format or unknown suffix is refused.
    invoke("gaussian", "--layers", SMALL, "-o", str(tmp_path / "g.json"))
    assert isinstance(json.loads((tmp_path / "g.json").read_text()), list)
    assert invoke("mass", "--format", "json", "-o", str(tmp_path / "m.csv")).exit_code != 0
    assert invoke("mass", "-o", str(tmp_path / "m.xlsx")).exit_code != 0
    assert invoke("mass", "-o", str(tmp_path / "m.npz")).exit_code != 0
    assert not (tmp_path / "m.csv").exists() and not (tmp_path / "m.xlsx").exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "meta.json").write_text("not ours")
    res = invoke("mass", "--layers", SMALL, "-o", str(tmp_path / "other" / "m.csv"))
    assert res.exit_code != 0 and not (tmp_path / "other" / "m.csv").exists()


def test_several_checkpoints_and_folders(tmp_path, baseline_checkpoint):
    folder = tmp_path / "ckpts"
    folder.mkdir()
    for src in (DEFAULT_CHECKPOINT, baseline_checkpoint):
        shutil.copytree(src, folder / src.name)
    res = invoke("mass", str(folder), "--layers", SMALL, "--format", "csv", "--view", "summary", "-q")
    assert res.exit_code == 0, res.stderr
    df = pd.read_csv(io.StringIO(res.stdout))
    assert df.columns[0] == "checkpoint"
    # windows 1, 3, 4 of the 4×4 kernels and 5, 9 beyond them
    assert df.checkpoint.tolist() == ["resnet18_fmnist"] * 5 + ["resnet18_niff_fmnist"] * 5
    assert df.n.tolist() == [512 * 512] * 5 + [512] * 5  # baseline: one kernel per (out, in) pair
    res = invoke(
        "pca", str(DEFAULT_CHECKPOINT), str(folder / DEFAULT_CHECKPOINT.name), "--layers", SMALL, "--format", "csv"
    )
    labels = set(pd.read_csv(io.StringIO(res.stdout)).checkpoint)
    assert len(labels) == 2  # same folder names: labelled by full path


def test_baseline_uses_plain_convs_but_weight_pca_needs_niff(baseline_checkpoint):
    res = invoke("gaussian", str(baseline_checkpoint), "--layers", "conv1", "--format", "csv")
    assert res.exit_code == 0, res.stderr
    assert "no NIFF layers" in res.stderr
    df = pd.read_csv(io.StringIO(res.stdout))
    assert len(df) == 64 and df.layer.eq("conv1").all()
    res = invoke("pca", str(baseline_checkpoint), "--weights", "--layers", "conv1")
    assert res.exit_code != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "no NIFF layers" in lines[0] and "conv1" in lines[0], res.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("mass", "--layers", "nothing*"),
        ("gaussian", "/no/such/checkpoint"),
        ("kernels", str(DEFAULT_CHECKPOINT.parent.parent)),  # a folder holding no checkpoint
    ],
)
def test_errors_are_one_line(args):
    res = invoke(*args)
    assert res.exit_code != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert res.stdout == ""
    if "nothing*" in args:
        assert "layer1.0.conv1" in lines[0]


# ---------------------------------------------------------------- the installed entry point
def run_entry(*args, cwd=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([str(ENTRY), *args], capture_output=True, text=True, timeout=300, env=env, cwd=cwd)


@pytest.mark.slow  # fresh interpreters
@pytest.mark.parametrize("command,fmt", [("kernels", "npz"), ("mass", "csv"), ("pca", "table"), ("gaussian", "json")])
def test_entry_point(command, fmt, tmp_path):
    # Every command and every format once (startup dominates: CliRunner covers the full matrix).
    if fmt == "npz":
        proc = run_entry(command, "--layers", "layer4.*", "-o", str(tmp_path / "k.npz"), "--quiet")
        assert proc.returncode == 0 and proc.stderr == "" and proc.stdout == "", proc.stderr
        with np.load(tmp_path / "k.npz") as arrays:
            assert set(arrays.files) == {"layer4.0.conv2", "layer4.1.conv1", "layer4.1.conv2"}
        assert json.loads((tmp_path / "meta.json").read_text())["outputs"]["k.npz"]["command"] == "kernels"
        return
    proc = run_entry(command, "--layers", SMALL, "--format", fmt)
    assert proc.returncode == 0, proc.stderr
    if fmt == "csv":
        df = pd.read_csv(io.StringIO(proc.stdout))
    elif fmt == "json":
        df = pd.DataFrame(json.loads(proc.stdout))
    else:
        assert SMALL in proc.stdout and "evr_0" in proc.stdout
        return
    assert list(df.columns[: len(COLUMNS[command])]) == COLUMNS[command]


@pytest.mark.slow  # a fresh interpreter
def test_entry_point_error():
    proc = run_entry("gaussian", "--layers", "no-such-layer")
    assert proc.returncode != 0 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "available layers" in proc.stderr


@pytest.mark.slow  # several full analyses
def test_one_label_rule_and_duplicates_analysed_once(tmp_path):
    """The analysis commands and the figures label same-name checkpoints alike (by path), and
    the same checkpoint given twice is analysed once."""
    from niff_analysis.checkpoint import DEFAULT_CHECKPOINT
    from niff_analysis.pipeline import analyse, find_checkpoints

    for d in ("a", "b"):
        shutil.copytree(DEFAULT_CHECKPOINT, tmp_path / d / "x")
    a, b = tmp_path / "a" / "x", tmp_path / "b" / "x"
    assert [label for label, _ in find_checkpoints([a, b])] == [str(a), str(b)]
    assert len(find_checkpoints([a, a, tmp_path / "a" / ".." / "a" / "x"])) == 1
    res = CliRunner().invoke(main, ["mass", str(a), str(b), "--layers", "layer4.1.conv2", "--format", "csv", "-q"])
    assert res.exit_code == 0, res.output
    mass = pd.read_csv(io.StringIO(res.stdout))
    assert list(mass["checkpoint"].unique()) == [str(a), str(b)]
    data = analyse([a, b], layers="layer4.1.conv2", max_kernels=8, cost_sizes=())
    assert data.labels == [str(a), str(b)]
    res = CliRunner().invoke(main, ["mass", str(a), str(a), "--layers", "layer4.1.conv2", "--format", "csv", "-q"])
    once = pd.read_csv(io.StringIO(res.stdout))
    assert list(once["checkpoint"].unique()) == ["x"] and len(once) == len(mass) // 2
