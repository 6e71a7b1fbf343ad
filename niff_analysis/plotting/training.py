"""Figures of kernel statistics during training: one run's history and a recipe ablation.

Both take tidy tables (``kernel_stats.csv`` rows; :func:`niff_analysis.train.sweep.collect`),
never recompute them, and return ``(fig, ax)`` like the other figure modules.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..errors import SelectionError
from .panels import models_of, of_model, panels, require, ret
from .style import OKABE_ITO, layer_colors, ordered_unique, palette_stage, style

# --------------------------------------------------------------------------- during training
HISTORY_LABELS = {
    "mass3_mean": "mass ratio at 3×3",
    "mass5_mean": "mass ratio at 5×5",
    "mass9_mean": "mass ratio at 9×9",
    "k50_mean": "mean k50 (px)",
    "k90_mean": "mean k90 (px)",
    "sigma_x_median": "median σx (px)",
    "sigma_y_median": "median σy (px)",
}


def _measure_rows(history: pd.DataFrame, stats: Sequence[str], measures: Sequence[str]) -> list[tuple[str, str | None]]:
    """(stat, measure) of each row of panels: a mass or size statistic once per measure the table
    holds it under, any other statistic once."""
    if "measure" not in history.columns:
        return [(s, None) for s in stats]
    have = set(zip(history["stat"], history["measure"]))
    rows: list[tuple[str, str | None]] = []
    for m in measures:
        rows += [(s, m) for s in stats if (s, m) in have]
    rows += [(s, "any") for s in stats if (s, "any") in have]
    return rows


def plot_kernel_history(
    history: pd.DataFrame,
    stats: Sequence[str] = ("mass9_mean", "k90_mean"),
    ax=None,
    fig: Figure | None = None,
    measures: Sequence[str] = ("l1",),
) -> tuple[Figure, object]:
    """Kernel statistics per layer against training epoch: one row of panels per statistic (and
    measure), one column per model (NIFF and baseline side by side), one curve per layer
    coloured by stage.

    Args:
        history: ``kernel_stats.csv`` rows (:func:`~niff_analysis.analysis.read_kernel_stats`:
            ``epoch``, ``layer``, ``stat``, ``value``; ``stage``, ``measure``, ``checkpoint``
            optional).
        stats: which statistics to draw (rows of panels).
        ax: axes, ``rows × models`` of them, row-major.
        fig: figure to add panels to.
        measures: the measures whose mass and size statistics to draw, one block of rows each
            (those a table lacks, e.g. ``energy`` in a file recorded before both were, are left
            out); statistics of measure ``any`` are drawn once.
    """
    require(history, ["epoch", "layer", "stat", "value"], "plot_kernel_history")
    missing = [s for s in stats if s not in set(history["stat"])]
    if missing:
        raise SelectionError(f"plot_kernel_history: no statistic {missing[0]!r} in the table")
    rows = _measure_rows(history, stats, measures)
    if not rows:
        raise SelectionError(f"plot_kernel_history: no {', '.join(stats)} under measure {', '.join(measures)}")
    models = models_of(history)
    stages = list(history["stage"]) if "stage" in history.columns else None
    colors = layer_colors(list(history["layer"]), stages)
    with style():
        fig, axes = panels(len(rows) * len(models), ax, fig, ncols=len(models), panel_size=(3.4, 2.4), sharey=False)
        axes = axes.reshape(len(rows), len(models))
        for j, model in enumerate(models):
            part = of_model(history, model)
            for i, (stat, measure) in enumerate(rows):
                a = axes[i, j]
                d = part[part["stat"] == stat]
                if measure is not None:
                    d = d[d["measure"] == measure]
                for layer in ordered_unique(d["layer"]):
                    c = d[d["layer"] == layer].sort_values("epoch")
                    a.plot(c["epoch"], c["value"], color=colors[layer], lw=1, marker="o", ms=2, label=layer)
                label = HISTORY_LABELS.get(stat, stat)
                a.set_ylabel(label if measure in (None, "any") else f"{label}\n[{measure}]")
                if stat.startswith("mass"):
                    a.set_ylim(0, 1.02)
                else:
                    a.set_ylim(bottom=0)
                if i == 0 and model is not None:
                    a.set_title(str(model))
                if i == len(rows) - 1:
                    a.set_xlabel("epoch")
        axes[0, -1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=6)
    return ret(fig, axes.ravel())


def plot_sweep(
    history: pd.DataFrame,
    stats: Sequence[str] = ("mass3_mean", "mass9_mean", "k90_mean"),
    fig: Figure | None = None,
    measure: str = "l1",
) -> tuple[Figure, object]:
    """A recipe ablation: per stage, the stage's mean of each statistic against epoch, one
    curve per arm; the last column shows each arm's test accuracy after every epoch (as
    labelled bars when the arms were tested once, e.g. one-epoch arms). Mass at 3×3 is drawn by
    default because in maps of 9×9 or smaller the mass at 9×9 is 1 by construction.

    Args:
        history: :func:`~niff_analysis.train.sweep.collect` output (``arm``, ``epoch``,
            ``layer``, ``stage``, ``stat``, ``value``, ``test_acc``).
        stats: statistics to draw (rows of panels).
        fig: figure to add panels to.
        measure: the measure of the mass and size statistics (a table with a ``measure`` column
            holds both; their means would mix).
    """
    require(history, ["arm", "epoch", "layer", "stat", "value"], "plot_sweep")
    h = history.copy()
    if "measure" in h.columns:  # one measure's mass statistics (and the measure-free ones)
        h = h[h["measure"].isin([measure, "any"])]
    h["stage"] = [palette_stage(layer, st) for layer, st in zip(h["layer"], h.get("stage", [None] * len(h)))]
    arms = ordered_unique(h["arm"])
    stages = ordered_unique(h["stage"])
    colors = {arm: OKABE_ITO[(i + 1) % len(OKABE_ITO)] for i, arm in enumerate(arms)}
    ncols = len(stages) + 1
    with style():
        fig, axes = panels(len(stats) * ncols, None, fig, ncols=ncols, panel_size=(2.6, 2.2), sharey=False)
        axes = axes.reshape(len(stats), ncols)
        for i, stat in enumerate(stats):
            d = h[h["stat"] == stat]
            for j, st in enumerate(stages):
                a = axes[i, j]
                g = d[d["stage"] == st].groupby(["arm", "epoch"], sort=False)["value"].mean().reset_index()
                for arm in arms:
                    c = g[g["arm"] == arm].sort_values("epoch")
                    a.plot(c["epoch"], c["value"], color=colors[arm], lw=1, marker="o", ms=2, label=arm)
                if i == 0:
                    a.set_title(f"{st} (mean over layers)")
                if j == 0:
                    a.set_ylabel(HISTORY_LABELS.get(stat, stat))
                if stat.startswith("mass"):
                    a.set_ylim(0, 1.02)
                else:
                    a.set_ylim(bottom=0)
                    a.ticklabel_format(axis="y", useOffset=False)
                a.set_xlabel("epoch")
            axes[i, -1].set_visible(i == 0)
        acc = axes[0, -1]
        t = (
            h.dropna(subset=["test_acc"]).drop_duplicates(["arm", "epoch"])
            if "test_acc" in h.columns
            else h.iloc[:0].assign(test_acc=[])
        )
        if len(t) and t.groupby("arm").size().max() == 1:  # one test per arm: bars, not dots
            values = t.groupby("arm", sort=False)["test_acc"].first().reindex(arms)
            bars = acc.barh(range(len(arms)), values.to_numpy(), color=[colors[a] for a in arms], height=0.6)
            for bar, v in zip(bars, values):
                if pd.notna(v):
                    acc.text(v, bar.get_y() + bar.get_height() / 2, f" {100 * v:.2f} %", va="center", fontsize=6)
            acc.set_yticks(range(len(arms)), arms, fontsize=6)
            acc.invert_yaxis()
            acc.set_xlim(max(0.0, values.min() - 0.1), 1.0)
            acc.set_xlabel(f"after epoch {t['epoch'].max():g}")
        else:
            for arm in arms:
                c = t[t["arm"] == arm].sort_values("epoch")
                acc.plot(c["epoch"], c["test_acc"], color=colors[arm], lw=1, marker="o", ms=3)
            acc.set_xlabel("epoch")
        handles = [Line2D([], [], color=colors[a], marker="o", ms=3, lw=1, label=a) for a in arms]
        acc.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.0, -0.35), fontsize=6)
        acc.set_title("test accuracy")
    return ret(fig, axes.ravel())


STUDY_STATS = ("mass1_mean", "mass3_mean", "mass9_mean", "k90_mean")
STUDY_LABELS = {
    "mass1_mean": "centre pixel's share",
    "mass3_mean": "mass at 3×3",
    "mass9_mean": "mass at 9×9",
    "k90_mean": "mean k90 (px)",
    "k50_mean": "mean k50 (px)",
    "k90_median": "median k90 (px)",
}


def plot_study(
    summary: pd.DataFrame,
    stats: Sequence[str] = STUDY_STATS,
    measures: Sequence[str] = ("l1", "energy"),
    fig: Figure | None = None,
) -> tuple[Figure, object]:
    """A controlled study's finished runs: per stage, each arm's mean over seeds with its 95 %
    interval, one row of panels per measure and one column per statistic, plus test accuracy.

    Args:
        summary: :func:`~niff_analysis.train.sweep.seed_summary` of a study's final table
            (``arm``, ``stage``, ``measure``, ``stat``, ``mean``, ``lo``, ``hi``, ``n_seeds``); the
            arm ``init`` (the initialisation) is drawn as a grey reference.
        stats: statistics to draw (columns of panels).
        measures: measures to draw (rows of panels).
        fig: figure to add panels to.
    """
    require(summary, ["arm", "stage", "measure", "stat", "mean", "lo", "hi", "n_seeds"], "plot_study")
    from ..train.sweep import INIT_ARM

    arms = [a for a in ordered_unique(summary["arm"]) if a != INIT_ARM]
    stages = [s for s in ordered_unique(summary["stage"]) if s != "any"]
    colors = {arm: OKABE_ITO[(i + 1) % len(OKABE_ITO)] for i, arm in enumerate(arms)}
    colors[INIT_ARM] = "0.6"
    drawn = arms + ([INIT_ARM] if INIT_ARM in set(summary["arm"]) else [])
    width = 0.8 / max(len(drawn), 1)
    ncols = len(stats) + 1
    with style():
        fig, axes = panels(len(measures) * ncols, None, fig, ncols=ncols, panel_size=(2.4, 2.2), sharey=False)
        axes = axes.reshape(len(measures), ncols)
        for i, measure in enumerate(measures):
            for j, stat in enumerate(stats):
                a = axes[i, j]
                d = summary[(summary["measure"] == measure) & (summary["stat"] == stat)]
                for k, arm in enumerate(drawn):
                    c = d[d["arm"] == arm].set_index("stage").reindex(stages)
                    x = [n + (k - (len(drawn) - 1) / 2) * width for n in range(len(stages))]
                    err = [(c["mean"] - c["lo"]).to_numpy(), (c["hi"] - c["mean"]).to_numpy()]
                    a.errorbar(
                        x,
                        c["mean"],
                        yerr=err,
                        fmt="s" if arm == INIT_ARM else "o",
                        ms=3,
                        lw=0.8,
                        capsize=1.5,
                        color=colors[arm],
                        label=arm,
                    )
                a.set_xticks(range(len(stages)), stages, fontsize=6)
                if stat.startswith("mass"):
                    a.set_ylim(0, 1.02)
                    a.axhline(1.0, color="0.3", lw=0.5, ls=":")  # a delta kernel
                else:
                    a.set_ylim(bottom=0)
                a.set_title(f"{STUDY_LABELS.get(stat, stat)} ({measure})", fontsize=7)
            axes[i, -1].set_visible(i == 0)
        acc = axes[0, -1]
        t = summary[(summary["stat"] == "test_acc") & (summary["arm"].isin(arms))].set_index("arm").reindex(arms)
        acc.errorbar(
            100 * t["mean"],
            range(len(arms)),
            xerr=[100 * (t["mean"] - t["lo"]), 100 * (t["hi"] - t["mean"])],
            fmt="none",
            ecolor="0.3",
            lw=0.8,
            capsize=1.5,
        )
        acc.scatter(100 * t["mean"], range(len(arms)), c=[colors[a] for a in arms], s=12, zorder=3)
        acc.set_yticks(range(len(arms)), arms, fontsize=5)
        acc.invert_yaxis()
        if t["mean"].notna().any():  # an interval wider than the scale (two seeds) is cut at 0 and 100 %
            acc.set_xlim(max(0.0, 100 * t["lo"].min() - 1), min(100.0, 100 * t["hi"].max() + 1))
        acc.set_xlabel("test accuracy (%)")
        n = summary.loc[summary["arm"].isin(arms), "n_seeds"]
        acc.set_title(
            f"mean, 95 % t-interval over {n.min()}–{n.max()} seeds"
            if len(n) and n.min() != n.max()
            else f"mean, 95 % t-interval over {n.max() if len(n) else 0} seeds",
            fontsize=6,
        )
        handles = [
            Line2D([], [], color=colors[a], marker="s" if a == INIT_ARM else "o", ms=3, lw=0, label=a) for a in drawn
        ]
        acc.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.0, -0.3), fontsize=5)
    return ret(fig, axes.ravel())


DECAY_PANELS = (("l1", "mass1_mean"), ("l1", "k90_mean"), ("energy", "k90_mean"))


def plot_decay_response(
    final: pd.DataFrame,
    decay: pd.Series,
    twins: dict[str, str] | None = None,
    twin_label: str = "twin",
    panels_: Sequence[tuple[str, str]] = DECAY_PANELS,
    ax=None,
    fig: Figure | None = None,
) -> tuple[Figure, object]:
    """A study's answer at a glance: each kernel statistic against the integrated decay on the
    frequency MLPs, one column per stage, with the scale's ends drawn as lines.

    Every seed is a small dot; each arm's mean over seeds with its 95 % t-interval a larger one.
    The initialisation is drawn at Σ = 0 (the axis is symlog), a delta and white noise on the same
    maps as dotted and dashed lines. ``twins`` (arm → the full-size arm it repeats on other data,
    e.g. content at half the size) are drawn as open markers at their twin's Σ: where the
    statistic follows the data they part from the filled ones.

    Args:
        final: a study's final table in long form (``arm``, ``seed``, ``stage``, ``measure``,
            ``stat``, ``value``), with the rows of the arms ``init``, ``delta`` and
            ``white noise`` where present.
        decay: arm → integrated decay Σ lr·wd/(1−m) on the MLP weights; arms it lacks (or NaN)
            are not drawn unless they are twins.
        twins: arm → full-size arm, for the open markers.
        twin_label: the legend's name for the open markers (what the twins change).
        panels_: (measure, statistic) of each row of panels.
        ax: axes to draw into (rows × stages of them), or ``None``.
        fig: figure to add panels to.
    """
    require(final, ["arm", "seed", "stage", "measure", "stat", "value"], "plot_decay_response")
    from ..analysis.uncertainty import seed_interval
    from ..train.sweep import INIT_ARM

    twins = dict(twins or {})
    sigma = {a: float(v) for a, v in decay.items() if pd.notna(v) and a in set(final["arm"])}
    if not sigma:
        raise SelectionError("plot_decay_response: no arm of the table has an integrated decay")
    sigma[INIT_ARM] = 0.0
    for arm, ref in twins.items():
        if ref in sigma and arm in set(final["arm"]):
            sigma[arm] = sigma[ref]
    stages = [s for s in ordered_unique(final["stage"]) if s != "any"]
    with style():
        fig, axes = panels(len(panels_) * len(stages), ax, fig, ncols=len(stages), panel_size=(2.2, 2.0), sharey=False)
        axes = axes.reshape(len(panels_), len(stages))
        for i, (measure, stat) in enumerate(panels_):
            d = final[(final["measure"] == measure) & (final["stat"] == stat)]
            for j, stage in enumerate(stages):
                a = axes[i, j]
                g = d[d["stage"] == stage]
                for ref, ls in (("delta", ":"), ("white noise", "--")):
                    v = g.loc[g["arm"] == ref, "value"]
                    if len(v):
                        a.axhline(float(v.iloc[0]), color="0.4", lw=0.6, ls=ls, label=ref)
                for arm, x in sigma.items():
                    v = g.loc[g["arm"] == arm, "value"].astype(float).dropna()
                    if v.empty:
                        continue
                    twin = arm in twins
                    x = x * 1.25 if twin else x  # beside the full-size arm, not on it
                    color = "0.6" if arm == INIT_ARM else OKABE_ITO[5 if twin else 1]
                    a.scatter([x] * len(v), v, s=4, color=color, alpha=0.5, lw=0, zorder=2)
                    mean, lo, hi = seed_interval(v)
                    a.errorbar(
                        [x],
                        [mean],
                        yerr=[[mean - lo], [hi - mean]],
                        fmt="s" if arm == INIT_ARM else "o",
                        ms=4,
                        lw=0.8,
                        capsize=1.5,
                        color=color,
                        mfc="white" if twin else color,
                        zorder=3,
                        label=arm,
                    )
                a.set_xscale("symlog", linthresh=1.0)
                # the scale's ends bound the panel; a two-seed interval wider than that is cut at its edge
                if stat.startswith("mass"):
                    a.set_ylim(-0.02, 1.05)
                else:
                    top = g.loc[g["arm"].isin([*sigma, "white noise"]), "value"].astype(float).max()
                    a.set_ylim(0, 1.08 * top if pd.notna(top) and top > 0 else None)
                a.set_title(f"{stage}: {STUDY_LABELS.get(stat, stat)} ({measure})", fontsize=6)
                if i == len(panels_) - 1:
                    a.set_xlabel("integrated MLP decay Σ lr·wd/(1−m)", fontsize=6)
        handles = [
            Line2D([], [], color="0.6", marker="s", ms=4, lw=0, label="initialisation (Σ = 0)"),
            Line2D([], [], color=OKABE_ITO[1], marker="o", ms=4, lw=0, label="full-size content"),
            Line2D([], [], color="0.4", lw=0.6, ls=":", label="delta"),
            Line2D([], [], color="0.4", lw=0.6, ls="--", label="white noise"),
        ]
        if twins:
            handles.insert(2, Line2D([], [], color=OKABE_ITO[5], marker="o", mfc="white", ms=4, lw=0, label=twin_label))
        axes[0, -1].legend(handles=handles, fontsize=5, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return ret(fig, axes.ravel())


__all__ = [
    "DECAY_PANELS",
    "HISTORY_LABELS",
    "STUDY_STATS",
    "plot_decay_response",
    "plot_kernel_history",
    "plot_study",
    "plot_sweep",
]
