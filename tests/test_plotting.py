"""Figures: every kind renders from real analysis output without warnings, writes PDF and PNG,
leaks no figure and no rcParams; PDFs embed TrueType and are byte-reproducible; the CLI writes
the full set."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from matplotlib.text import Text

from niff_analysis.analysis import (
    effective_sizes,
    extract_kernels,
    gaussian_fit,
    gaussian_summary,
    kernel_mass,
    mass_summary,
    pca_eigenkernels,
    subsample,
    weight_pca,
)
from niff_analysis.analysis.cost import cost_table
from niff_analysis.checkpoint import BUNDLED_DIR
from niff_analysis.cli import main
from niff_analysis.errors import SelectionError
from niff_analysis.plotting import (
    OKABE_ITO,
    centre_crop,
    layer_colors,
    plot_cost,
    plot_effective_size,
    plot_eigenkernels,
    plot_erf,
    plot_frequency,
    plot_kernel_magnitude,
    plot_mass_ratio,
    plot_raw_kernels,
    plot_sigma,
    plot_weight_pca,
    sample_channels,
    save_figure,
    signed_norm,
    stage_color,
)

LAYERS = ["layer2.1.conv1", "layer3.1.conv2", "layer4.1.*"]


@pytest.fixture(scope="module")
def real():
    """Small real analysis output of the bundled checkpoint (four layers, ≤ 48 kernels each)."""
    torch.set_num_threads(1)
    lks = subsample(extract_kernels(None, layers=LAYERS), 48)
    m = kernel_mass(lks)
    g = gaussian_fit(lks)
    return dict(
        kernels=lks,
        mass=mass_summary(m),
        sizes=effective_sizes(m),
        gauss=gaussian_summary(g),
        pca=pca_eigenkernels(lks, n_components=4),
        wpca=weight_pca(lks, n_components=3),
        cost=cost_table(sizes=(4, 8), channels=4, measure=True, repeats=1),
    )


KINDS = {
    "mass_ratio": lambda r: plot_mass_ratio(r["mass"]),
    "effective_size": lambda r: plot_effective_size(r["sizes"]),
    "sigma": lambda r: plot_sigma(r["gauss"]),
    "cost": lambda r: plot_cost(r["cost"]),
    "eigenkernels": lambda r: plot_eigenkernels(r["pca"].table, r["pca"].components),
    "eigenkernels_zoom": lambda r: plot_eigenkernels(r["pca"].table, r["pca"].components, zoom=5),
    "weight_pca": lambda r: plot_weight_pca(r["wpca"].table, r["wpca"].components),
    "raw_kernels": lambda r: plot_raw_kernels(r["kernels"], n_channels=4),
    "kernel_magnitude": lambda r: plot_kernel_magnitude(r["kernels"]),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_renders_writes_and_closes(kind, real, tmp_path):
    rc_before = dict(matplotlib.rcParams)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig, ax = KINDS[kind](real)
        paths = save_figure(fig, tmp_path / kind, ("pdf", "png"))
    assert [p.suffix for p in paths] == [".pdf", ".png"]
    assert paths[0].read_bytes().startswith(b"%PDF")
    assert paths[1].read_bytes().startswith(b"\x89PNG")
    assert ax is not None and fig.axes
    assert plt.get_fignums() == []  # nothing registered with pyplot, nothing left open
    assert dict(matplotlib.rcParams) == rc_before  # the style is a context, not a global change


def test_mass_curves_draw_the_table_not_a_recomputation(real):
    summary = real["mass"]
    fig, ax = plot_mass_ratio(summary)
    lines = [ln for ln in ax.get_lines() if ln.get_label() in set(summary["layer"])]
    assert len(lines) == summary["layer"].nunique()
    assert summary["beyond_kernel"].any()  # rows for windows larger than a kernel: a table's, not a curve's
    for ln in lines:
        d = summary[(summary["layer"] == ln.get_label()) & ~summary["beyond_kernel"]].sort_values("window")
        np.testing.assert_allclose(ln.get_xdata(), d["window"])
        np.testing.assert_allclose(ln.get_ydata(), d["mean"])
    # reference lines at 3×3 and 9×9
    assert {3.0, 9.0} <= {ln.get_xdata()[0] for ln in ax.get_lines() if ln.get_linestyle() == ":"}


def test_mass_ratio_one_panel_per_checkpoint_or_overlaid(real):
    two = pd.concat([real["mass"].assign(checkpoint="a"), real["mass"].assign(checkpoint="b")])
    fig, axes = plot_mass_ratio(two)
    assert len(axes) == 2 and [a.get_title() for a in axes] == ["a", "b"]
    fig, ax = plot_mass_ratio(two, overlay=True)
    styles = {ln.get_linestyle() for ln in ax.get_lines() if ln.get_label().startswith("b:")}
    assert styles == {"--"}


def test_draws_into_given_axes(real):
    fig, axes = plt.subplots(1, 2)
    try:
        f, a = plot_cost(real["cost"], ax=axes)
        assert f is fig and list(a) == list(axes) and axes[0].get_lines()
    finally:
        plt.close(fig)


def test_colours_are_one_per_stage_and_colour_blind_safe(real):
    assert stage_color("layer2") == OKABE_ITO[2] and stage_color(None) == OKABE_ITO[0]
    colors = layer_colors(["layer4.1.conv1", "layer4.1.conv2", "layer2.1.conv1"], ["layer4", "layer4", "layer2"])
    assert colors["layer4.1.conv1"] == stage_color("layer4").lower()
    assert colors["layer4.1.conv2"] != colors["layer4.1.conv1"]  # a lighter shade of the family
    # the same layer gets the same colour whichever figure asks
    fig, ax = plot_mass_ratio(real["mass"])
    line = next(ln for ln in ax.get_lines() if ln.get_label() == "layer2.1.conv1")
    assert matplotlib.colors.to_hex(line.get_color()) == stage_color("layer2").lower()


def test_signed_norm_is_centred_and_symmetric():
    norm = signed_norm(np.array([[-0.5, 2.0]]))
    assert norm(0.0) == pytest.approx(0.5)
    assert norm.vmin == -2.0 and norm.vmax == 2.0
    assert signed_norm(np.zeros((2, 2)))(0.0) == pytest.approx(0.5)  # no crash on all-zero


def test_eigenkernel_images_show_the_components(real):
    pca = real["pca"]
    fig, ax = plot_eigenkernels(pca.table, pca.components, zoom=3)
    layer = next(iter(pca.components))
    shown = ax.get_images()[0].get_array()
    comp = centre_crop(pca.components[layer][0], 3)
    np.testing.assert_allclose(shown, comp / np.abs(comp).max(), rtol=1e-6)
    ev = pca.table.iloc[0]["explained_variance_ratio"]
    assert f"{100 * ev:.1f} %" in {t.get_text() for t in ax.texts}


def test_centre_crop_keeps_the_origin_in_the_middle():
    img = np.arange(64).reshape(8, 8)
    crop = centre_crop(img, 3)
    assert crop.shape == (3, 3) and crop[1, 1] == img[4, 4]
    assert centre_crop(img, 9).shape == (8, 8)  # larger than the kernel: the whole kernel
    assert list(sample_channels(10, 4)) == [0, 3, 6, 9]


def test_missing_columns_or_empty_tables_are_clear_errors(real):
    with pytest.raises(SelectionError, match="columns"):
        plot_mass_ratio(real["mass"].drop(columns="std"))
    with pytest.raises(SelectionError, match="empty"):
        plot_sigma(real["gauss"].iloc[:0])


def test_pdf_embeds_truetype_and_bytes_are_reproducible(real, tmp_path, monkeypatch):
    pdfs = []
    for i, epoch in enumerate(("0", "1700000000")):
        monkeypatch.setenv("SOURCE_DATE_EPOCH", epoch)
        fig, _ = plot_sigma(real["gauss"])  # a fresh figure each time
        pdfs.append(save_figure(fig, tmp_path / f"run{i}" / "sigma", ("pdf", "png")))
    a, b = (p[0].read_bytes() for p in pdfs)
    assert a == b and pdfs[0][1].read_bytes() == pdfs[1][1].read_bytes()
    assert b"/FontFile2" in a and b"/Type3" not in a  # TrueType (fonttype 42), not Type 3
    assert b"CreationDate" not in a


# --------------------------------------------------------------------------- CLI
EXPECTED = [
    "mass_ratio",
    "effective_size",
    "gaussian_sigma",
    "cost",
    "eigenkernels",
    "eigenkernels_zoom9",
    "weight_pca",
    "raw_kernels",
    "kernel_magnitude",
    "erf",
    "frequency",
    "kernel_history",
]  # the bundled default carries its run's kernel_stats.csv
TABLES = [
    "mass_summary",
    "mass_summary_untrained",
    "effective_sizes",
    "gaussian_fits",
    "gaussian_summary",
    "cost",
    "eigenkernels",
    "eigenkernel_components",
    "weight_pca",
    "weight_pca_components",
    "raw_kernels_sample",
    "erf_area_ratios",
    "frequency_profile",
    "frequency_profile_untrained",
    "kernel_history",
    "mass_scale",
]
FAST = [
    "--layers",
    "layer3.1.conv2,layer4.1.conv1",
    "--max-kernels",
    "16",
    "--erf-images",
    "4",
    "--cost-sizes",
    "4,8",
    "--no-timing",
    "--device",
    "cpu",
]


@pytest.mark.slow  # full figure sets
def test_cli_writes_the_full_set_reproducibly(tmp_path):
    runs = []
    for name, fmt in (("a", "pdf,png"), ("b", "pdf")):  # the second run only to compare bytes
        res = CliRunner().invoke(main, ["figures", "--out", str(tmp_path / name), "--quiet", "--format", fmt, *FAST])
        assert res.exit_code == 0, res.output
        runs.append(tmp_path / name)
        listed = [Path(p) for p in res.stdout.splitlines()]
        assert sorted(listed) == sorted((tmp_path / name).iterdir())
    names = {p.name for p in runs[0].iterdir()}
    assert names == (
        {f"{f}.{e}" for f in EXPECTED for e in ("pdf", "png")} | {f"{t}.csv" for t in TABLES} | {"meta.json"}
    )
    second = {p.name for p in runs[1].iterdir()}
    assert second == {n for n in names if not n.endswith(".png")}
    for n in sorted(second - {"meta.json"}):  # meta.json records the formats, which differ
        assert (runs[0] / n).read_bytes() == (runs[1] / n).read_bytes(), n
    meta = json.loads((runs[0] / "meta.json").read_text())
    assert sorted(meta["files"]) == sorted(names - {"meta.json"})
    assert meta["checkpoints"][0]["label"] == "resnet18_niff_fmnist" and len(meta["checkpoints"][0]["sha256"]) == 64
    summary = pd.read_csv(runs[0] / "mass_summary.csv")
    assert set(summary["layer"]) == {"layer3.1.conv2", "layer4.1.conv1"}
    assert set(summary["checkpoint"]) == {"resnet18_niff_fmnist"}
    assert meta["parameters"]["measure"] == "l1" and set(summary["measure"]) == {"l1"}
    assert {"mean_lo", "mean_hi"} <= set(summary.columns)
    scale = pd.read_csv(runs[0] / "mass_scale.csv")
    assert list(scale.columns) == ["checkpoint", "measure", "layer", "window", "delta", "noise", "init"]
    assert (scale["delta"] == 1.0).all() and scale["init"].notna().all()
    res = CliRunner().invoke(
        main, ["figures", "--out", str(tmp_path / "both"), "--quiet", "--format", "png", "--measure", "both", *FAST]
    )
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "both" / "meta.json").read_text())["parameters"]["measure"] == "both"
    both = pd.read_csv(tmp_path / "both" / "mass_summary.csv")
    assert set(both["measure"]) == {"l1", "energy"} and set(
        pd.read_csv(tmp_path / "both" / "mass_scale.csv")["measure"]
    ) == {"l1", "energy"}
    pd.testing.assert_frame_equal(both[both.measure == "l1"].reset_index(drop=True), summary)


@pytest.mark.slow  # full figure sets
def test_cli_compares_niff_with_baseline(tmp_path, baseline_checkpoint):
    out = tmp_path / "cmp"
    res = CliRunner().invoke(
        main,
        [
            "figures",
            str(BUNDLED_DIR / "resnet18_niff_fmnist"),
            str(baseline_checkpoint),
            "--out",
            str(out),
            "--format",
            "png",
            *FAST[:6],
            "--cost-sizes",
            "none",
        ],
    )
    assert res.exit_code == 0, res.output
    names = {p.name for p in out.iterdir()}
    for label in ("resnet18_niff_fmnist", "resnet18_fmnist"):
        assert f"eigenkernels_{label}.png" in names and f"raw_kernels_{label}.png" in names
    assert "weight_pca_resnet18_niff_fmnist.png" in names
    assert "weight_pca_resnet18_fmnist.png" not in names  # plain convs have no frequency weights
    assert "cost.png" not in names and not any(n.endswith(".pdf") for n in names)
    summary = pd.read_csv(out / "mass_summary.csv")
    assert set(summary["checkpoint"]) == {"resnet18_niff_fmnist", "resnet18_fmnist"}
    # a 3×3 baseline kernel holds all its mass in the 3×3 window
    base = summary[(summary["checkpoint"] == "resnet18_fmnist") & (summary["window"] == 3)]
    np.testing.assert_allclose(base["mean"], 1.0)


@pytest.mark.slow  # the figures command
@pytest.mark.parametrize(
    "args, message",
    [
        (["--format", "gif"], "unknown --format gif"),
        (["--layers", "nope*"], "no layer matches"),
        (["/no/such/checkpoint"], "no such file"),
        (["--max-kernels", "0"], "positive"),
    ],
)
def test_cli_bad_input_is_one_line(args, message, tmp_path):
    res = CliRunner().invoke(main, ["figures", "--out", str(tmp_path / "x"), "--quiet", "--cost-sizes", "none", *args])
    assert res.exit_code != 0
    assert message in res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


@pytest.mark.slow  # full figure sets
def test_figures_are_written_as_a_unit(tmp_path, monkeypatch):
    """An interrupted run leaves the folder as it was; a later run replaces only what an earlier
    run's manifest lists; an unwritable target is refused before any analysis."""
    from niff_analysis.plotting import report

    out = tmp_path / "figs"
    args = ["figures", "--out", str(out), "--quiet", *FAST[:6], "--cost-sizes", "none"]
    res = CliRunner().invoke(main, [*args, "--format", "pdf,png"])
    assert res.exit_code == 0, res.output
    (out / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    real = report.iter_figures

    def interrupted(data, *a, **k):
        gen = real(data, *a, **k)
        yield next(gen)
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "iter_figures", interrupted)
    res = CliRunner().invoke(main, [*args, "--format", "svg"])
    assert res.exit_code == 130 and "interrupted" in res.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
    monkeypatch.setattr(report, "iter_figures", real)

    res = CliRunner().invoke(main, [*args, "--format", "pdf"])
    assert res.exit_code == 0, res.output
    left = {p.name for p in out.iterdir()}
    assert not any(n.endswith(".png") for n in left)  # listed by the first run, not written now
    assert "notes.txt" in left and (out / "notes.txt").read_text() == "mine"

    res = CliRunner().invoke(main, ["figures", "--out", "/proc/self/niff-figures", "--cost-sizes", "none"])
    assert res.exit_code == 2 and "/proc/self/niff-figures: cannot write there" in res.output


# --------------------------------------------------------------------------- readable figures
# Small synthetic tables, so each check knows exactly what the figure must show.
def _mass_table(stages=("layer1", "layer2", "layer3"), per_stage=4, checkpoint=None) -> pd.DataFrame:
    """Mass ratios that reach ~1 by the 5×5 window, where the old in-axes window labels sat."""
    rows = []
    for s_i, st in enumerate(stages):
        for j in range(per_stage):
            for w in range(1, 16, 2):
                rows.append(
                    dict(
                        layer=f"{st}.{j // 2}.conv{j % 2 + 1}",
                        stage=st,
                        window=w,
                        mean=1 - np.exp(-w / (1.2 + s_i + 0.3 * j)),
                        std=0.05,
                        n=16,
                    )
                )
    df = pd.DataFrame(rows)
    return df if checkpoint is None else df.assign(checkpoint=checkpoint)


def _drawn(fig):
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def test_mass_ratio_legend_has_one_entry_per_stage():
    summary = _mass_table()
    stages = ["layer1", "layer2", "layer3"]
    fig, ax = plot_mass_ratio(summary, untrained=summary.assign(mean=summary["mean"] * 0.8))
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(texts) <= len(stages) + 1  # the stages and "at initialisation"
    assert [sum(st in t for t in texts) for st in stages] == [1, 1, 1]
    assert any("initialisation" in t for t in texts)
    for ln in ax.get_lines():  # every layer's curve in its stage's colour
        if ln.get_label() in set(summary["layer"]):
            st = ln.get_label().split(".")[0]
            assert matplotlib.colors.to_hex(ln.get_color()) == stage_color(st).lower()
    # overlaid models add one entry per model (line style), not one per layer and model
    two = pd.concat([_mass_table(checkpoint="a"), _mass_table(checkpoint="b")])
    fig, ax = plot_mass_ratio(two, overlay=True)
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(texts) <= len(stages) + 2 and {"a", "b"} <= set(texts)


def test_mass_ratio_window_labels_sit_outside_the_data_area():
    fig, ax = plot_mass_ratio(_mass_table())
    r = _drawn(fig)
    labels = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip() in ("3×3", "9×9")]
    assert sorted(t.get_text().strip() for t in labels) == ["3×3", "9×9"]
    points = np.concatenate(
        [
            ln.get_transform().transform(np.column_stack([ln.get_xdata(), ln.get_ydata()]))
            for ln in ax.get_lines()
            if len(ln.get_xdata())
        ]
    )
    for t in labels:
        box = t.get_window_extent(r)
        assert box.y0 >= ax.bbox.y1 - 0.5, t.get_text()  # above the axes, where no curve can be
        inside = (
            (points[:, 0] >= box.x0) & (points[:, 0] <= box.x1) & (points[:, 1] >= box.y0) & (points[:, 1] <= box.y1)
        )
        assert not inside.any(), t.get_text()
        # and still over its reference line
        w = float(t.get_text().split("×")[0])
        assert box.x0 <= ax.transData.transform((w, 0))[0] <= box.x1


def test_effective_size_models_side_by_side_on_a_fraction_axis():
    # both models have kernels at s = 3: their bars must share that slot, not cover each other
    sizes = pd.concat(
        [
            pd.DataFrame(
                {
                    "checkpoint": "niff",
                    "layer": ["layer4.1.conv1"] * 4 + ["layer3.1.conv1"] * 2,
                    "stage": ["layer4"] * 4 + ["layer3"] * 2,
                    "size_90": [3, 3, 5, 7, 9, 3],
                }
            ),
            pd.DataFrame(
                {
                    "checkpoint": "baseline",
                    "layer": ["layer4.1.conv1"] * 2 + ["layer3.1.conv1"] * 2,
                    "stage": ["layer4"] * 2 + ["layer3"] * 2,
                    "size_90": [3, 1, 3, 3],
                }
            ),
        ]
    )
    fig, ax = plot_effective_size(sizes)
    axes = list(np.atleast_1d(ax))
    r = _drawn(fig)
    for a in axes:
        boxes = [p.get_window_extent(r) for p in a.patches if p.get_visible()]
        assert len(boxes) >= 2
        for i, b in enumerate(boxes):
            for c in boxes[i + 1 :]:
                overlap_x = min(b.x1, c.x1) - max(b.x0, c.x0)
                overlap_y = min(b.y1, c.y1) - max(b.y0, c.y0)
                assert overlap_x <= 0.5 or overlap_y <= 0.5  # touching is fine, covering is not
        assert a.get_ylim() == (0.0, 1.0)
    # bar heights are the fractions of each layer's kernels, per model
    heights = sorted(round(p.get_height(), 6) for p in axes[0].patches)
    assert heights == [0.25, 0.25, 0.5, 0.5, 0.5]  # NIFF 3, 5, 7: ½ ¼ ¼; baseline 1, 3: ½ ½
    assert any("fraction" in a.get_ylabel() for a in axes)


def test_sigma_of_one_layer_keeps_both_markers_inside_and_the_legend_off_them():
    summary = pd.DataFrame(
        [
            dict(
                layer="layer4.1.conv1",
                stage="layer4",
                sigma_x_median=0.6,
                sigma_x_q25=0.5,
                sigma_x_q75=0.8,
                sigma_y_median=0.7,
                sigma_y_q25=0.55,
                sigma_y_q75=0.9,
                sigma_x_moment_median=0.65,
                sigma_y_moment_median=0.72,
                n=32,
                n_ok=30,
                n_censored=2,
            )
        ]
    )
    fig, ax = plot_sigma(summary)
    r = _drawn(fig)
    markers = [ln for ln in ax.get_lines() if ln.get_marker() in ("o", "s") and len(ln.get_xdata())]
    assert len(markers) == 2
    xy = np.array([ln.get_transform().transform((ln.get_xdata()[0], ln.get_ydata()[0])) for ln in markers])
    box, width = ax.bbox, ax.bbox.width
    assert ((xy[:, 0] > box.x0 + 0.15 * width) & (xy[:, 0] < box.x1 - 0.15 * width)).all()
    assert abs(xy[0, 0] - xy[1, 0]) > 0.1 * width
    legend = ax.get_legend().get_window_extent(r)
    for ln in markers:
        assert not legend.overlaps(ln.get_window_extent(r))
    bars = ax.transData.transform(np.concatenate([seg for c in ax.collections for seg in c.get_segments()]))
    assert not legend.count_contains(bars)  # nor on the error bars' ends


def _layer(name: str, n: int = 6, size: int = 8, response: bool = False):
    from niff_analysis.analysis.kernels import LayerKernels

    g = torch.Generator().manual_seed(0)
    k = torch.randn(n, size, size, generator=g)
    return LayerKernels(
        name=name,
        kind="depthwise",
        fmap=(size, size),
        stage=name.split(".")[0],
        kernels=k,
        response=torch.fft.fftshift(torch.fft.fft2(k)) if response else None,
    )


def _small_figure(kind: str):
    """Each image figure at its smallest: one layer (one row of images)."""
    from niff_analysis.analysis import erf_area_ratios, frequency_profile

    lks = [_layer("layer4.1.conv1", response=True)]
    if kind in ("eigenkernels", "weight_pca"):
        pca = (pca_eigenkernels if kind == "eigenkernels" else weight_pca)(lks, n_components=2)
        fn = plot_eigenkernels if kind == "eigenkernels" else plot_weight_pca
        return fn(pca.table, pca.components)
    if kind == "raw_kernels":
        return plot_raw_kernels(lks, n_channels=2)
    if kind == "kernel_magnitude":
        return plot_kernel_magnitude(lks)
    if kind == "frequency":
        profile = frequency_profile(lks)
        return plot_frequency(lks, profile, untrained=profile.assign(mean=profile["mean"] / 2))
    yy, xx = np.mgrid[-7:8, -7:8]
    maps = {"a": {st: np.exp(-(xx**2 + yy**2) / (2 * s**2)) for st, s in (("layer1", 1), ("layer2", 3))}}
    protocol = "replknet" if kind == "erf_replknet" else "luo"
    ratios = erf_area_ratios(maps["a"], protocol=protocol).assign(checkpoint="a")
    return plot_erf(maps, ratios)


def test_erf_figure_names_its_protocol():
    from niff_analysis.analysis import erf_area_ratios

    for kind, words in (("erf", "protocol luo"), ("erf_replknet", "protocol replknet")):
        fig, _ = _small_figure(kind)
        assert words in fig._suptitle.get_text()
    yy, xx = np.mgrid[-3:4, -3:4]
    maps = {"a": {"layer1": np.exp(-(xx**2 + yy**2) / 2.0)}}
    mixed = pd.concat([erf_area_ratios(maps["a"], protocol=p).assign(checkpoint="a") for p in ("luo", "replknet")])
    with pytest.raises(SelectionError, match="mix protocols"):
        plot_erf(maps, mixed)


@pytest.mark.parametrize(
    "kind", ["eigenkernels", "weight_pca", "raw_kernels", "kernel_magnitude", "erf", "erf_replknet", "frequency"]
)
def test_labels_of_small_image_figures_are_not_cut(kind):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # constrained layout giving up is a warning
        fig, _ = _small_figure(kind)
        r = _drawn(fig)
    frame = fig.bbox
    labels = [t for a in fig.axes for t in (a.yaxis.label, a.xaxis.label, a.title) if t.get_text()]
    assert labels
    for t in labels:  # the colour-bar labels among them
        box = t.get_window_extent(r)
        assert (
            box.x0 >= frame.x0 - 0.5
            and box.y0 >= frame.y0 - 0.5
            and box.x1 <= frame.x1 + 0.5
            and box.y1 <= frame.y1 + 0.5
        ), (t.get_text(), box.extents, frame.extents)
    tight = fig.get_tightbbox(r)  # inches, everything drawn
    size = fig.get_size_inches()
    assert tight.x0 >= -0.01 and tight.y0 >= -0.01
    assert tight.x1 <= size[0] + 0.01 and tight.y1 <= size[1] + 0.01


def _sweep_table(epochs_tested):
    """A tidy sweep table: two arms, two layers of two stages, records at steps 0, 5, 10."""
    rows = []
    for a, arm in enumerate(["spec", "mlp_weight_decay=0.1"]):
        for step, epoch in [(0, 0.0), (5, 0.5), (10, 1.0), (15, 1.5), (20, 2.0)][: 3 if epochs_tested == 1 else 5]:
            for layer, stage in [("layer1.0.conv1", "layer1"), ("layer2.0.conv1", "layer2")]:
                for stat in ("mass3_mean", "mass9_mean", "k90_mean"):
                    acc = 0.7 + 0.1 * a + 0.01 * epoch if epoch == int(epoch) and epoch > 0 else np.nan
                    rows.append((arm, epoch, step, layer, stage, stat, 0.5 + 0.2 * a * epoch, acc))
    return pd.DataFrame(rows, columns=["arm", "epoch", "step", "layer", "stage", "stat", "value", "test_acc"])


def test_sweep_figure_draws_its_table():
    from niff_analysis.plotting import plot_sweep

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig, axes = plot_sweep(_sweep_table(epochs_tested=1))
    grid = np.asarray(axes).reshape(3, 3)  # mass3, mass9, k90 × (layer1, layer2, accuracy)
    mass3 = grid[0, 0].get_lines()
    assert [list(line.get_xdata()) for line in mass3] == [[0.0, 0.5, 1.0]] * 2
    assert list(mass3[1].get_ydata()) == pytest.approx([0.5, 0.6, 0.7])
    bars = grid[0, 2].patches  # one test per arm: labelled bars, in arm order
    assert [b.get_width() for b in bars] == pytest.approx([0.71, 0.81])
    assert [t.get_text() for t in grid[0, 2].get_yticklabels()] == ["spec", "mlp_weight_decay=0.1"]
    plt.close(fig)
    fig, axes = plot_sweep(_sweep_table(epochs_tested=2))  # tested after each epoch: curves
    acc = np.asarray(axes).reshape(3, 3)[0, 2]
    assert not acc.patches
    assert [list(line.get_ydata()) for line in acc.get_lines()] == [
        pytest.approx([0.71, 0.72]),
        pytest.approx([0.81, 0.82]),
    ]
    plt.close(fig)


def test_mass_ratio_one_row_per_measure_with_the_noise_and_delta_scale(real):
    from niff_analysis.analysis.references import mass_scale
    from niff_analysis.plotting.curves import MEASURE_LABELS

    lks = real["kernels"]
    summary = pd.concat([mass_summary(kernel_mass(lks, m)) for m in ("l1", "energy")], ignore_index=True)
    scale = pd.concat([mass_scale(lks, m).assign(measure=m) for m in ("l1", "energy")], ignore_index=True)
    two = pd.concat([summary.assign(checkpoint="a"), summary.assign(checkpoint="b")], ignore_index=True)
    scales = pd.concat([scale.assign(checkpoint="a"), scale.assign(checkpoint="b")], ignore_index=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig, axes = plot_mass_ratio(two, scale=scales)
    assert len(axes) == 4  # 2 measures × 2 models, a row per measure
    assert [a.get_ylabel() for a in axes[::2]] == [MEASURE_LABELS["l1"], MEASURE_LABELS["energy"]]
    assert [a.get_title() for a in axes[:2]] == ["a", "b"]
    stages = summary.drop_duplicates("stage")
    for i, measure in enumerate(("l1", "energy")):
        a = axes[2 * i]
        noise = [ln for ln in a.get_lines() if ln.get_linestyle() == "-."]
        assert len(noise) == len(stages)  # one white-noise curve per stage (map size)
        for ln in noise:
            layer = summary[summary.stage == ln.get_label()[1:].split(" ")[0]].layer.iloc[0]
            own = summary[(summary.layer == layer) & ~summary.beyond_kernel].window  # the curve ends at the kernel
            d = scale[(scale.measure == measure) & (scale.layer == layer) & scale.window.isin(own)].sort_values(
                "window"
            )
            np.testing.assert_allclose(ln.get_ydata(), d["noise"])
        curves = [ln for ln in a.get_lines() if ln.get_label() == "layer4.1.conv2"]
        want = summary[
            (summary.measure == measure) & (summary.layer == "layer4.1.conv2") & ~summary.beyond_kernel
        ].sort_values("window")
        np.testing.assert_allclose(curves[0].get_ydata(), want["mean"])
        assert any(
            ln.get_ydata()[0] == 1.0
            and ln.get_ydata()[-1] == 1.0
            and ln.get_linestyle() == "-"
            and tuple(ln.get_xdata()) == (0, 1)
            for ln in a.get_lines()
        )  # the delta line
    texts = [t.get_text() for t in axes[1].get_legend().get_texts()]
    assert "white noise, same map" in texts and any(t.startswith("delta") for t in texts)


def test_history_figure_rows_per_measure():
    from niff_analysis.analysis.stats import read_kernel_stats
    from niff_analysis.plotting import plot_kernel_history

    old = read_kernel_stats(BUNDLED_DIR / "resnet18_niff_fmnist")
    old = old[old.step <= 468]
    new = pd.concat([old, old[old.measure == "l1"].assign(measure="energy", value=lambda d: d.value * 0.5)])
    fig, axes = plot_kernel_history(new, measures=("l1", "energy"))
    assert len(axes) == 4 and [a.get_ylabel().split("\n")[-1] for a in axes] == ["[l1]", "[l1]", "[energy]", "[energy]"]
    ln = [ln for ln in axes[2].get_lines() if ln.get_label() == "layer1.0.conv1"][0]
    want = new[(new.measure == "energy") & (new.stat == "mass9_mean") & (new.layer == "layer1.0.conv1")]
    np.testing.assert_allclose(ln.get_ydata(), want.sort_values("epoch").value)
    # a file recorded before both measures has no energy rows: they are left out, not drawn empty
    fig, axes = plot_kernel_history(old, measures=("l1", "energy"))
    assert len(axes) == 2


def test_plot_study_draws_each_arm_with_its_interval_and_the_initialisation_in_grey():
    from niff_analysis.plotting import plot_study
    from niff_analysis.train.sweep import seed_summary

    rows = []
    for arm, base in (("spec", 0.6), ("init", 0.5), ("decay", 0.9)):
        for seed in (0, 1, 2):
            acc = float("nan") if arm == "init" else 0.9 + 0.01 * seed
            for stage in ("layer1", "layer2"):
                for measure in ("l1", "energy"):
                    rows.append((arm, seed, 15, stage, measure, "mass9_mean", base + 0.01 * seed, acc))
    final = pd.DataFrame(rows, columns=["arm", "seed", "epoch", "stage", "measure", "stat", "value", "test_acc"])
    fig, axes = plot_study(seed_summary(final), stats=("mass9_mean",))
    panel = axes[0]  # mass inside 9x9 under l1
    lines = {c.get_label(): c for c in panel.containers}
    assert set(lines) == {"spec", "decay", "init"}
    spec_means = lines["spec"].lines[0].get_ydata()
    assert np.allclose(spec_means, 0.61)  # mean over seeds 0.60, 0.61, 0.62
    from scipy import stats

    half = stats.t.ppf(0.975, 2) * 0.01 / np.sqrt(3)  # the 95 % t-interval over three seeds, sd 0.01
    low_caps, high_caps = lines["spec"].lines[1]
    assert np.allclose(low_caps.get_ydata(), 0.61 - half) and np.allclose(high_caps.get_ydata(), 0.61 + half)
    assert matplotlib.colors.to_hex(lines["init"].lines[0].get_color()) == "#999999"  # grey reference
    assert lines["init"].lines[0].get_marker() == "s" and lines["spec"].lines[0].get_marker() == "o"
    plt.close(fig)


def test_plot_decay_response_puts_each_arm_at_its_decay_and_the_scale_ends_as_lines():
    from niff_analysis.plotting import plot_decay_response

    rows = []
    for arm, v in (("spec", 0.2), ("strong", 0.9), ("half", 0.25), ("init", 0.1)):
        for seed in (0, 1, 2):
            rows.append((arm, seed, "layer1", "l1", "mass1_mean", v + 0.01 * seed))
    rows += [("delta", -1, "layer1", "l1", "mass1_mean", 1.0), ("white noise", -1, "layer1", "l1", "mass1_mean", 0.001)]
    final = pd.DataFrame(rows, columns=["arm", "seed", "stage", "measure", "stat", "value"])
    decay = pd.Series({"spec": 1.4, "strong": 70.0, "half": float("nan")})
    fig, ax = plot_decay_response(
        final, decay, twins={"half": "spec"}, twin_label="half-size content", panels_=[("l1", "mass1_mean")]
    )
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "half-size content" in legend and "full-size content" in legend
    bars = {c.get_label(): c for c in ax.containers}
    assert set(bars) == {"spec", "strong", "half", "init"}
    x, y = (np.asarray(v) for v in bars["strong"].lines[0].get_data())
    assert x[0] == 70.0 and np.isclose(y[0], 0.91)  # mean over seeds 0.90, 0.91, 0.92
    x, _ = bars["half"].lines[0].get_data()
    assert x[0] == pytest.approx(1.25 * 1.4)  # the twin beside the arm it repeats
    assert bars["half"].lines[0].get_markerfacecolor() == "white"
    assert bars["init"].lines[0].get_xdata()[0] == 0.0 and ax.get_xscale() == "symlog"
    levels = sorted(
        float(line.get_ydata()[0]) for line in ax.get_lines() if line.get_label() in ("delta", "white noise")
    )
    assert levels == [0.001, 1.0]
    with pytest.raises(SelectionError, match="no arm of the table has an integrated decay"):
        plot_decay_response(final, pd.Series({"other": 1.0}))
    plt.close(fig)
