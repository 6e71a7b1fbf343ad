"""Line, error-bar and histogram figures drawn from the analysis tables.

Every function takes the DataFrame an analysis function returned (optionally with an extra
``checkpoint`` column when several checkpoints are compared), never recomputes it, draws into
``ax``/``fig`` when given, and returns ``(fig, ax)`` (``ax`` an array when there are several
panels).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .panels import models_of, of_model, panels, require, ret
from .style import (
    METHOD_COLORS,
    MODEL_LINESTYLES,
    layer_colors,
    new_figure,
    ordered_unique,
    palette_stage,
    stage_color,
    style,
)


def _stage_legend(a, stages: dict, models: Sequence, overlay: bool, untrained: bool, scale: bool = False) -> None:
    """One legend entry per stage (however many layers it has), then one per model line style
    when models are overlaid, then the initialisation and the references; outside the axes, so
    it covers no data."""
    handles = [
        Line2D([], [], color=stage_color(st), lw=2.0 if n > 1 else 1.2, label=f"{st} ({n} layers)" if n > 1 else st)
        for st, n in stages.items()
    ]
    if overlay and len(models) > 1:
        handles += [
            Line2D([], [], color="0.3", ls=MODEL_LINESTYLES[i % len(MODEL_LINESTYLES)], lw=1.2, label=str(model))
            for i, model in enumerate(models)
        ]
    if untrained:
        handles.append(Line2D([], [], color="0.3", ls="--", lw=0.8, label="at initialisation"))
    if scale:
        handles.append(Line2D([], [], color="0.3", ls=NOISE_STYLE, lw=0.8, label="white noise, same map"))
        handles.append(Line2D([], [], color="0.6", lw=0.8, label="delta (1 at every s)"))
    title = "thin: layers, bold: stage median" if any(n > 1 for n in stages.values()) else None
    a.legend(
        handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), title=title, title_fontsize=6, alignment="left"
    )


def _window_labels(a, references: Sequence[int]) -> None:
    """Dotted lines at the reference windows, labelled on a top axis outside the data area, so
    a label can never sit on a curve."""
    for r in references:
        a.axvline(r, color="0.4", ls=":", lw=0.8)
    if references:
        top = a.secondary_xaxis("top")
        top.set_xticks(list(references), [f"{r}×{r}" for r in references])
        top.tick_params(length=0, pad=1.5, labelsize=6, labelcolor="0.3")
        top.spines["top"].set_visible(False)


# --------------------------------------------------------------------------- Eq. 6
NOISE_STYLE = "-."  # dash-dot: the white-noise reference curves
MEASURE_LABELS = {"l1": "kernel mass ratio (Eq. 6, |k|)", "energy": "kernel mass ratio (energy, k²)"}


def _kernel_windows(summary: pd.DataFrame) -> pd.DataFrame:
    """The rows of the windows a kernel has: a curve ends at the whole kernel (the rows
    :func:`~niff_analysis.analysis.mass_summary` adds for larger windows would only repeat it)."""
    if "beyond_kernel" not in summary.columns:
        return summary
    return summary[~summary["beyond_kernel"].astype(bool)]


def plot_mass_ratio(
    summary: pd.DataFrame,
    ax=None,
    fig: Figure | None = None,
    group: str = "layer",
    overlay: bool = False,
    references: Sequence[int] = (3, 9),
    untrained: pd.DataFrame | None = None,
    scale: pd.DataFrame | None = None,
) -> tuple[Figure, object]:
    """Kernel mass ratio (Eq. 6) against window size: mean ± 1 std band per layer (Fig. 4/5).

    Every curve has its stage's colour. Where a stage has several layers, each layer is a thin
    line and the stage's median over its layers is drawn bold, so the legend needs one entry per
    stage, not one per layer. The reference windows are labelled above the axes. A table with
    several measures (its ``measure`` column) gets one row of panels per measure, labelled on
    the y axis.

    Args:
        summary: :func:`~niff_analysis.analysis.mass_summary` output (``window``, ``mean``,
            ``std`` and a ``layer`` or ``stage`` column), optionally with ``checkpoint`` and
            ``measure`` columns.
        ax: axes to draw into (one per model and measure unless ``overlay``).
        fig: figure to add panels to.
        group: column naming the curves, ``"layer"`` or ``"stage"``.
        overlay: draw all models into one panel per measure (line style tells them apart)
            instead of one panel per model.
        references: window sizes marked by dotted vertical lines (3×3 and 9×9).
        untrained: the same table for each model's initialisation (its ``checkpoint`` column
            naming the trained model it belongs to), drawn as dashed curves without bands.
        scale: :func:`~niff_analysis.analysis.references.mass_scale` rows (``layer``,
            ``window``, ``noise``; ``checkpoint``, ``measure`` optional): the white-noise
            reference of each stage's map drawn dash-dotted, and a delta's ratio (1) as a grey
            line.
    """
    require(summary, [group, "window", "mean", "std"], "plot_mass_ratio")
    models = models_of(summary)
    measures = ordered_unique(summary["measure"]) if "measure" in summary.columns else [None]
    per_row = 1 if overlay else len(models)
    stages: dict[str, int] = {}  # stage → its number of curves, in order of first appearance

    def of_measure(df, measure):
        if df is None or measure is None or "measure" not in df.columns:
            return df
        return df[df["measure"] == measure]

    with style():
        fig, axes = panels(per_row * len(measures), ax, fig, ncols=3 if len(measures) == 1 else per_row)
        for r, measure in enumerate(measures):
            for m_i, model in enumerate(models):
                a = axes[r * per_row + (0 if overlay else m_i)]
                part = _kernel_windows(of_model(of_measure(summary, measure), model))
                ls = MODEL_LINESTYLES[m_i % len(MODEL_LINESTYLES)] if overlay else "-"
                ref = None if untrained is None else _kernel_windows(of_model(of_measure(untrained, measure), model))
                st_col = part["stage"] if "stage" in part.columns else [None] * len(part)
                stage_by_name = dict(zip(part[group], (palette_stage(n, s) for n, s in zip(part[group], st_col))))
                noise = None if scale is None or scale.empty else of_model(of_measure(scale, measure), model)
                for st in ordered_unique(stage_by_name.values()):
                    members = [n for n, s in stage_by_name.items() if s == st]
                    stages[st] = max(stages.get(st, 0), len(members))
                    color, several = stage_color(st), len(members) > 1
                    for name in members:
                        d = part[part[group] == name].sort_values("window")
                        label = name if not overlay or len(models) == 1 else f"{model}: {name}"
                        x, mean, std = d["window"].to_numpy(float), d["mean"].to_numpy(float), d["std"].to_numpy(float)
                        a.plot(
                            x,
                            mean,
                            color=color,
                            ls=ls,
                            lw=0.7 if several else 1.2,
                            alpha=0.75 if several else 1.0,
                            label=label,
                        )
                        a.fill_between(
                            x,
                            np.clip(mean - std, 0, 1),
                            np.clip(mean + std, 0, 1),
                            color=color,
                            alpha=0.07 if several else 0.15,
                            lw=0,
                        )
                        if ref is not None and (ref[group] == name).any():
                            rr = ref[ref[group] == name].sort_values("window")
                            a.plot(
                                rr["window"].to_numpy(float),
                                rr["mean"].to_numpy(float),
                                color=color,
                                ls="--",
                                lw=0.8,
                                alpha=0.8,
                            )
                    if noise is not None and group in noise.columns and (noise[group] == members[0]).any():
                        # One curve per stage: the noise reference depends only on the map size.
                        n_d = noise[noise[group] == members[0]].sort_values("window")
                        n_d = n_d[n_d["window"].isin(part.loc[part[group] == members[0], "window"])]
                        a.plot(
                            n_d["window"].to_numpy(float),
                            n_d["noise"].to_numpy(float),
                            color=color,
                            ls=NOISE_STYLE,
                            lw=0.8,
                            alpha=0.9,
                            label=f"_{st} white noise",
                        )
                    if several:
                        # Only windows every layer of the stage has: a median over a subset would jump.
                        wide = (
                            part[part[group].isin(members)]
                            .pivot_table(index="window", columns=group, values="mean")
                            .dropna()
                        )
                        if len(wide):
                            a.plot(
                                wide.index.to_numpy(float),
                                wide.median(axis=1).to_numpy(float),
                                color=color,
                                ls=ls,
                                lw=2.0,
                                label=f"_{st} median",
                            )
                if not overlay and model is not None and r == 0:
                    a.set_title(str(model))
            row = axes[r * per_row : (r + 1) * per_row]
            row[0].set_ylabel(MEASURE_LABELS.get(measure, "kernel mass ratio (Eq. 6)"))
        has_scale = scale is not None and not scale.empty
        for a in axes:
            _window_labels(a, references)
            a.set_xlabel("window size s (odd)")
            a.set_ylim(0, 1.02)
            a.set_xlim(left=1)
            if has_scale:
                a.axhline(1.0, color="0.6", lw=0.8, zorder=0)
        has_ref = untrained is not None and any(not of_model(untrained, m).empty for m in models)
        _stage_legend(axes[per_row - 1], stages, models, overlay, has_ref, has_scale)
    return ret(fig, axes)


# --------------------------------------------------------------------------- effective sizes
def _bar_style(m_i: int, color: str) -> dict:
    """Bars of the first model solid, of later ones white with a hatch in the layer's colour."""
    if m_i == 0:
        return dict(color=color, alpha=0.85, lw=0)
    return dict(facecolor="white", edgecolor=color, lw=0.8, hatch=("////", "....", "xxxx")[(m_i - 1) % 3])


def plot_effective_size(
    sizes: pd.DataFrame, quantile: int = 90, ax=None, fig: Figure | None = None
) -> tuple[Figure, object]:
    """Histogram per layer of the smallest window holding ``quantile`` % of each kernel's mass.

    One panel per layer, stacked over a shared window axis, first layer on top. Bar heights are
    the fraction of the layer's kernels (0–1), so layers with different kernel counts compare.
    Several checkpoints share each window's slot side by side (the first solid, later ones
    hatched), so no model's bars hide another's.

    Args:
        sizes: :func:`~niff_analysis.analysis.effective_sizes` output (``layer``, ``size_<q>``;
            ``stage``, ``checkpoint`` optional).
        quantile: which ``size_<q>`` column to show.
        ax: axes to draw into, one per layer.
        fig: figure to add the panels to.

    Returns:
        ``(fig, ax)``: ``ax`` the axes, an array top to bottom when there are several layers.
    """
    col = f"size_{quantile}"
    require(sizes, ["layer", col], "plot_effective_size")
    models = models_of(sizes)
    layers = ordered_unique(sizes["layer"])
    stages = list(sizes["stage"]) if "stage" in sizes.columns else None
    colors = layer_colors(list(sizes["layer"]), stages)
    top = int(np.nanmax(sizes[col])) if sizes[col].notna().any() else 1
    edges = np.arange(0, top + 3, 2)  # edges at even numbers: one bin per odd window size
    slot = 1.6 / len(models)  # each model's share of a bin (width 2), a gap left between bins
    with style():
        if ax is None and fig is None:
            fig = new_figure((4.5, 0.42 * len(layers) + 1.0))
        fig, axes = panels(len(layers), ax, fig, ncols=1, sharey=True)
        for a, layer in zip(axes, layers):
            for m_i, model in enumerate(models):
                part = of_model(sizes, model)
                vals = part.loc[part["layer"] == layer, col].dropna().to_numpy(float)
                if not len(vals):
                    continue
                frac = np.histogram(vals, bins=edges)[0] / len(vals)
                x = edges[:-1] + 0.2 + slot * (m_i + 0.5)
                keep = frac > 0  # an empty bin drawn hatched would leave a stray line at 0
                a.bar(x[keep], frac[keep], width=slot, **_bar_style(m_i, colors[layer]))
            a.set_ylim(0, 1)
            a.set_yticks([0, 0.5, 1], ["0", "", "1"])
            a.set_xlim(0, edges[-1])
            a.set_xticks(np.arange(1, edges[-1], 2 if edges[-1] <= 20 else 4))
            a.tick_params(axis="x", labelbottom=a is axes[-1])
            a.text(1.01, 0.5, layer, transform=a.transAxes, ha="left", va="center", fontsize=6.5, color=colors[layer])
        axes[-1].set_xlabel(f"smallest window s holding {quantile} % of the kernel mass")
        axes[len(axes) // 2].set_ylabel("fraction of the\nlayer's kernels")  # short: fits one panel
        axes[0].set_title("effective kernel size", loc="left")
        if len(models) > 1:
            handles = [Patch(**_bar_style(m_i, "0.4"), label=str(model)) for m_i, model in enumerate(models)]
            # One column, right-aligned above the top panel: narrow enough to clear the title.
            axes[0].legend(handles=handles, loc="lower right", bbox_to_anchor=(1.0, 1.0))
    return ret(fig, axes)


# --------------------------------------------------------------------------- Gaussian σ
def plot_sigma(summary: pd.DataFrame, ax=None, fig: Figure | None = None) -> tuple[Figure, object]:
    """Fitted Gaussian σx and σy per layer (Fig. A3/A4), one panel per model: the median with
    the interquartile range of the successful fits (mean ± std where the table has no
    quartiles), the median moment σ of every kernel as a small cross (with a dotted line where it
    stops resolving a peak), and under each layer how
    many fits it stands for (n_ok / n, and how many were censored as sharper than 0.4 px). σx
    and σy sit side by side in each layer's slot; the legend is outside the last panel.

    Args:
        summary: :func:`~niff_analysis.analysis.gaussian_summary` output (``layer`` and
            ``sigma_<x|y>_median/_q25/_q75`` or ``_mean/_std``; ``stage``, ``checkpoint``,
            ``n``, ``n_ok``, ``n_censored``, ``sigma_<x|y>_moment_median`` optional).
        ax: axes, one per model.
        fig: figure to add panels to.
    """
    from ..analysis.gauss2d import MOMENT_RESOLVED

    quartiles = {"sigma_x_median", "sigma_x_q25", "sigma_x_q75"} <= set(summary.columns)
    cols = ["layer"] + (
        [f"sigma_{a}_{s}" for a in "xy" for s in ("median", "q25", "q75")]
        if quartiles
        else [f"sigma_{a}_{s}" for a in "xy" for s in ("mean", "std")]
    )
    require(summary, cols, "plot_sigma")
    models = models_of(summary)
    with style():
        if ax is None and fig is None:
            # Width by layer count (one slot each), plus room for the legend outside.
            n = max(len(of_model(summary, m)) for m in models)
            ncols = min(len(models), 2)
            fig = new_figure((max(2.4, 0.28 * n + 0.9) * ncols + 1.7, 2.8 * -(-len(models) // ncols)))
        fig, axes = panels(len(models), ax, fig, ncols=2)
        for a, model in zip(axes, models):
            part = of_model(summary, model).reset_index(drop=True)
            x = np.arange(len(part))
            for axis, marker, dx in (("x", "o", -0.12), ("y", "s", 0.12)):
                for i, row in part.iterrows():
                    c = stage_color(palette_stage(row["layer"], row.get("stage")))
                    if quartiles:
                        mid = row[f"sigma_{axis}_median"]
                        err = [[mid - row[f"sigma_{axis}_q25"]], [row[f"sigma_{axis}_q75"] - mid]]
                    else:
                        mid, err = row[f"sigma_{axis}_mean"], row[f"sigma_{axis}_std"]
                    a.errorbar(
                        x[i] + dx,
                        mid,
                        yerr=err,
                        color=c,
                        marker=marker,
                        ms=4,
                        capsize=2,
                        lw=1,
                        mfc=c if axis == "x" else "white",
                    )
                    moment = row.get(f"sigma_{axis}_moment_median")
                    if moment is not None and np.isfinite(moment):
                        a.plot(x[i] + dx, moment, "x", color=c, ms=4, mew=0.8)
                a.plot(
                    [],
                    [],
                    "k" + marker,
                    mfc="k" if axis == "x" else "white",
                    ms=4,
                    label=f"σ{axis} fit: median, quartiles" if quartiles else f"σ{axis} fit: mean ± std",
                )
            if any(f"sigma_{ax_}_moment_median" in part.columns for ax_ in "xy"):
                a.plot([], [], "kx", ms=4, mew=0.8, label="moment σ, all kernels (median)")
                # Below this the moment σ cannot resolve a peak (docs/gaussian_validation.md).
                a.axhline(
                    MOMENT_RESOLVED,
                    color="0.6",
                    ls=":",
                    lw=0.7,
                    label=f"moment σ unresolved below {MOMENT_RESOLVED:g} px",
                )
            labels = []
            for _, row in part.iterrows():
                count = ""
                if "n" in part.columns and "n_ok" in part.columns:
                    count = f"\n{int(row['n_ok'])}/{int(row['n'])}"
                    if "n_censored" in part.columns and row["n_censored"] == row["n_censored"]:
                        count += f", {int(row['n_censored'])} <0.4"
                labels.append(f"{row['layer']}{count}")
            a.set_xticks(x, labels, rotation=60, ha="right", fontsize=6)
            a.set_ylabel("fitted σ (pixels)")
            a.set_title(f"{model}" if model is not None else "Gaussian σ per layer (fits ok / kernels)")
            a.set_ylim(bottom=0)
            # Whole slots per layer: with autoscaling, one layer's σx and σy sat on the two edges.
            a.set_xlim(-0.5, len(part) - 0.5)
        # Outside the last panel: the entries are the same in every panel and cover no data.
        axes[-1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=6)
    return ret(fig, axes)


# --------------------------------------------------------------------------- cost (Fig. 8)
def plot_cost(cost: pd.DataFrame, ax=None, fig: Figure | None = None) -> tuple[Figure, object]:
    """FLOPs (left) and measured forward time (right) against feature-map size (Fig. 8).

    The FLOP panel shows NIFF as inference runs it (filters cached) and as a training step runs
    it (the MLPs evaluated once per step: for the table's batch and for one image), next to the
    spatial convolutions. The time panel shows medians with their interquartile range, and
    notes the threads and the machine's load of the run.

    Args:
        cost: :func:`~niff_analysis.analysis.cost.cost_table` output (``size``, ``niff_flops``,
            ``spatial_flops``, ``niff_ms``, ``spatial_ms``; ``conv3x3_*``, ``mlp_flops``,
            ``batch``, ``*_ms_q25``/``*_ms_q75``, ``threads``, ``load_1min`` drawn when present).
            Rows whose times are NaN (not measured) are left out of the right panel.
        ax: two axes.
        fig: figure to add panels to.
    """
    require(cost, ["size", "niff_flops", "spatial_flops", "niff_ms", "spatial_ms"], "plot_cost")
    series = [
        ("niff", "NIFF (FFT + product + iFFT)"),
        ("spatial", "spatial conv, kernel = map size"),
        ("conv3x3", "3×3 conv"),
    ]
    d = cost.sort_values("size")
    batch = int(d["batch"].iloc[0]) if "batch" in d and len(d) else None
    with style():
        fig, axes = panels(2, ax, fig, ncols=2, panel_size=(3.4, 2.8), sharey=False)
        for key, label in series:
            color = METHOD_COLORS.get(key, METHOD_COLORS["baseline"])
            ls = ":" if key == "conv3x3" else "-"
            if f"{key}_flops" in d:
                axes[0].plot(
                    d["size"],
                    d[f"{key}_flops"],
                    marker="o",
                    ms=3,
                    color=color,
                    ls=ls,
                    label=label + (f", batch {batch}" if batch and key == "niff" else ""),
                )
            if f"{key}_ms" in d and d[f"{key}_ms"].notna().any():
                t = d[d[f"{key}_ms"].notna()]
                axes[1].plot(t["size"], t[f"{key}_ms"], marker="o", ms=3, color=color, ls=ls, label=label)
                if f"{key}_ms_q25" in t:
                    axes[1].fill_between(
                        t["size"], t[f"{key}_ms_q25"], t[f"{key}_ms_q75"], color=color, alpha=0.25, lw=0
                    )
        if "mlp_flops" in d:
            niff = METHOD_COLORS.get("niff", METHOD_COLORS["baseline"])
            if batch:
                axes[0].plot(
                    d["size"],
                    d["niff_flops"] + d["mlp_flops"],
                    marker="^",
                    ms=3,
                    color=niff,
                    ls="--",
                    label=f"NIFF + MLPs (training step), batch {batch}",
                )
                if batch > 1:
                    axes[0].plot(
                        d["size"],
                        d["niff_flops"] / batch + d["mlp_flops"],
                        marker="v",
                        ms=3,
                        color=niff,
                        ls="-.",
                        alpha=0.7,
                        label="NIFF + MLPs (training step), 1 image",
                    )
        axes[0].set_ylabel("FLOPs per forward pass")
        axes[1].set_ylabel("measured time (ms), median and IQR")
        note = []
        if "threads" in d and len(d):
            note.append(f"{int(d['threads'].iloc[0])} threads")
        if "load_1min" in d and len(d) and np.isfinite(d["load_1min"].iloc[0]):
            note.append(f"load {d['load_1min'].iloc[0]:.1f}")
        if note and d["niff_ms"].notna().any():
            axes[1].set_title(", ".join(note), fontsize="small")
        for a in axes:
            a.set_xscale("log", base=2)
            a.set_yscale("log")
            a.set_xlabel("feature-map size H = W")
            a.set_xticks(d["size"], [str(s) for s in d["size"]])
            a.minorticks_off()
        axes[0].legend(loc="upper left", fontsize="x-small")
    return ret(fig, axes)


__all__ = ["plot_cost", "plot_effective_size", "plot_mass_ratio", "plot_sigma"]
