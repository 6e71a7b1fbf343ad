"""Image-grid figures: PCA eigenkernels, multiplication-weight PCA, raw kernels, mean |k|.

Signed images (kernels, principal components) use a diverging colormap with a norm centred at 0
and symmetric per image, so white is zero everywhere; magnitudes use a sequential colormap.
Rows are layers; the bar left of a row has its stage's colour.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.colors as mcolors
import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.patches import Rectangle
from matplotlib.textpath import TextPath

from ..analysis.kernels import sample_channels
from ..errors import SelectionError
from .style import (
    CMAP_MAGNITUDE,
    CMAP_SIGNED,
    layer_colors,
    new_figure,
    ordered_unique,
    palette_stage,
    stage_color,
    style,
)

Cell = tuple[np.ndarray, str]  # image, caption under it (None: an empty slot)


def centre_crop(image: np.ndarray, size: int | None) -> np.ndarray:
    """The ``size``×``size`` window around the kernel origin (H//2, W//2); whole image if None."""
    if size is None:
        return image
    h, w = image.shape[-2:]
    r = size // 2
    y0, x0 = max(h // 2 - r, 0), max(w // 2 - r, 0)
    return image[..., y0 : h // 2 + r + 1, x0 : w // 2 + r + 1]


CBAR_LABEL_SIZE = 5.5  # points


def _text_length(text: str, size: float) -> float:
    """Length in inches of the longest line of ``text`` at ``size`` points in the current style."""
    prop = FontProperties(size=size)
    return max(TextPath((0, 0), line or " ", prop=prop).get_extents().width for line in text.split("\n")) / 72


def _fit_label(text: str, room: float) -> str:
    """``text`` broken at its middle space when it is longer than ``room`` inches, so a long
    colour-bar label next to a one-row grid does not need a much taller figure."""
    if "\n" in text or " " not in text or _text_length(text, CBAR_LABEL_SIZE) <= room:
        return text
    spaces = [i for i, ch in enumerate(text) if ch == " "]
    cut = min(spaces, key=lambda i: abs(i - len(text) / 2))
    return text[:cut] + "\n" + text[cut + 1 :]


def _image_grid(
    rows: Sequence[tuple[str, str | None, Sequence[Cell | None]]],
    signed: bool,
    fig: Figure | None,
    title: str | None = None,
    cell: float = 0.62,
    col_titles: Sequence[str] | None = None,
    scale_label: str | None = None,
):
    """Draw ``rows`` of (label, stage, cells) as a grid of images on one axes.

    Each image is drawn into a unit square of a single axes (many image artists on one axes
    draw an order of magnitude faster than one axes per image) and scaled by its own maximum
    |value|, so the shared colour bar reads "fraction of this image's largest |value|".

    Returns:
        (fig, ax).
    """
    if not rows:
        raise SelectionError("nothing to draw: no layers selected")
    ncols = max((len(cells) for _, _, cells in rows), default=0)
    if ncols == 0:
        raise SelectionError("nothing to draw: no components or channels")
    gap, cap = 0.12, 0.3  # in cell units: between cells, caption band under each row
    wu, hu = ncols * (1 + gap), len(rows) * (1 + gap + cap) + (0.3 if col_titles else 0)
    left = 1.25 if any(label for label, _, _ in rows) else 0.1  # inches
    right, top, bottom = 0.75, 0.35 if title else 0.1, 0.05
    scale_label = _fit_label(scale_label or "÷ largest |value| of each image", cell * hu)
    # The vertical colour-bar label is centred on the grid and may be longer than a short grid
    # is tall: widen the margins just enough that it stays inside the figure.
    overhang = _text_length(scale_label, CBAR_LABEL_SIZE) / 2 + 0.04 - cell * hu / 2
    top, bottom = max(top, overhang), max(bottom, overhang)
    width, height = left + cell * wu + right, top + cell * hu + bottom
    if fig is None:
        fig = new_figure((width, height))
        fig.set_layout_engine("none")
    fw, fh = fig.get_size_inches()
    ax = fig.add_axes((left / fw, bottom / fh, cell * wu / fw, cell * hu / fh))
    y_off = 0.3 if col_titles else 0.0
    cmap = CMAP_SIGNED if signed else CMAP_MAGNITUDE
    norm = mcolors.TwoSlopeNorm(vmin=-1, vcenter=0, vmax=1) if signed else mcolors.Normalize(vmin=0, vmax=1)
    for r, (label, stage, cells) in enumerate(rows):
        y0 = y_off + r * (1 + gap + cap)
        if label:
            color = stage_color(palette_stage(label, stage))
            ax.add_patch(Rectangle((-0.1, y0), 0.05, 1, color=color, lw=0))
            ax.text(-0.16, y0 + 0.5, label, ha="right", va="center", fontsize=6, color=color)
        for c, item in enumerate(cells):
            if item is None:
                continue
            img, caption = item
            img = np.asarray(img, dtype=float)
            peak = float(np.nanmax(np.abs(img))) if img.size else 0.0
            img = img / peak if np.isfinite(peak) and peak > 0 else np.zeros_like(img)
            x0 = c * (1 + gap)
            ax.imshow(img, cmap=cmap, norm=norm, extent=(x0, x0 + 1, y0 + 1, y0), interpolation="none")
            ax.add_patch(Rectangle((x0, y0), 1, 1, fill=False, lw=0.4, ec="0.6"))
            if caption:
                ax.text(x0 + 0.5, y0 + 1.04, caption, ha="center", va="top", fontsize=5.5)
    for c, t in enumerate((col_titles or [])[:ncols]):
        ax.text(c * (1 + gap) + 0.5, y_off - 0.06, t, ha="center", va="bottom", fontsize=6)
    ax.set_xlim(-gap / 2, wu - gap / 2)
    ax.set_ylim(hu, 0)
    ax.set_aspect("equal")
    ax.set_axis_off()
    cax = fig.add_axes(
        ((left + cell * wu + 0.15) / fw, (bottom + cell * hu * 0.3) / fh, 0.08 / fw, cell * hu * 0.4 / fh)
    )
    cb = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax, ticks=[-1, 0, 1] if signed else [0, 1])
    cb.ax.tick_params(labelsize=5)
    cb.set_label(scale_label, fontsize=CBAR_LABEL_SIZE)
    if title:
        fig.suptitle(title, fontsize=8, y=1 - 0.08 / fh, va="top")
    return fig, ax


def _ev_lookup(table: pd.DataFrame, keys: Sequence[str]) -> dict:
    return {tuple(row[k] for k in keys): row["explained_variance_ratio"] for _, row in table.iterrows()}


def _stage_lookup(table: pd.DataFrame) -> dict:
    if "stage" not in table.columns:
        return {}
    return dict(zip(table["layer"], table["stage"]))


def plot_eigenkernels(
    table: pd.DataFrame,
    components: Mapping,
    zoom: int | None = None,
    n_components: int | None = None,
    layers: Sequence[str] | None = None,
    fig: Figure | None = None,
    title: str | None = None,
):
    """PCA eigenkernels: layers × components, explained variance under each (Fig. 6/7, A5–A13).

    Args:
        table: ``PCAResult.table`` (``layer``, ``component``, ``explained_variance_ratio``).
        components: ``PCAResult.components``, layer → array (k, H, W).
        zoom: show only the central ``zoom``×``zoom`` crop (e.g. 9); None shows full size.
        n_components: at most this many columns (default: all).
        layers: rows to show, in order (default: every layer of ``components``).
        fig: figure to draw into.
        title: figure title.

    Returns:
        ``(fig, ax)``: every image lives on the one axes ``ax``.
    """
    ev = _ev_lookup(table, ["layer", "component"])
    comps = ordered_unique(table["component"]) if len(table) else []
    stages = _stage_lookup(table)
    rows = []
    for layer in layers if layers is not None else list(components):
        if layer not in components:
            raise SelectionError(f"no eigenkernels for layer {layer!r}")
        arr = np.asarray(components[layer])[:n_components]
        cells = [
            (centre_crop(arr[i], zoom), f"{100 * ev.get((layer, comps[i]), np.nan):.1f} %" if i < len(comps) else "")
            for i in range(len(arr))
        ]
        rows.append((layer, stages.get(layer), cells))
    col_titles = [f"PC {i + 1}" for i in range(max((len(c) for _, _, c in rows), default=0))]
    if title is None:
        title = "PCA eigenkernels" + (f", central {zoom}×{zoom}" if zoom else "")
    with style():
        return _image_grid(rows, signed=True, fig=fig, title=title, col_titles=col_titles)


def plot_weight_pca(
    table: pd.DataFrame,
    components: Mapping,
    n_components: int | None = None,
    fig: Figure | None = None,
    title: str | None = None,
):
    """PCA of the learned frequency weights, real and imaginary parts side by side (A14–A17).

    Args:
        table: ``PCAResult.table`` of :func:`~niff_analysis.analysis.weight_pca` (``layer``,
            ``part``, ``component``, ``explained_variance_ratio``).
        components: (layer, part) → array (k, H, W), centred frequency grid.
        n_components: at most this many components per part.
        fig: figure to draw into.
        title: figure title (default: names what was decomposed, the raw W or its Hermitian
            part, from the table's ``response`` column).
    """
    ev = _ev_lookup(table, ["layer", "part", "component"])
    stages = _stage_lookup(table)
    parts = ("real", "imag")
    k = max((len(v) for v in components.values()), default=0)
    k = k if n_components is None else min(k, n_components)
    rows = []
    for layer in ordered_unique(key[0] for key in components):
        cells: list[Cell | None] = []
        for part in parts:
            arr = np.asarray(components.get((layer, part), np.zeros((0, 1, 1))))[:k]
            comps = ordered_unique(table.loc[(table["layer"] == layer) & (table["part"] == part), "component"])
            cells += [
                (arr[i], f"{100 * ev.get((layer, part, comps[i]), np.nan):.1f} %")
                if i < len(arr) and i < len(comps)
                else None
                for i in range(k)
            ]
        rows.append((layer, stages.get(layer), cells))
    titles = [f"{part} PC {i + 1}" for part in parts for i in range(k)]
    with style():
        return _image_grid(
            rows,
            signed=True,
            fig=fig,
            col_titles=titles,
            title=title or "PCA of the multiplication weights (frequency domain, " + weight_response_name(table) + ")",
        )


def weight_response_name(table: pd.DataFrame) -> str:
    """What a weight-PCA table decomposed, in words."""
    kinds = set(table["response"]) if "response" in table.columns else {"raw"}
    names = {"raw": "raw MLP output W", "hermitian": "Hermitian part of W"}
    return ", ".join(names.get(k, str(k)) for k in sorted(kinds))


def _flat_kernels(k) -> np.ndarray:
    arr = k.detach().cpu().numpy() if hasattr(k, "detach") else np.asarray(k)
    return arr.reshape(-1, *arr.shape[-2:])


def plot_raw_kernels(
    kernels: Sequence,
    n_channels: int = 8,
    zoom: int | None = None,
    fig: Figure | None = None,
    title: str | None = None,
):
    """Raw spatial kernels, a sample of channels per layer (Fig. A22/A23).

    Args:
        kernels: :class:`~niff_analysis.analysis.LayerKernels` objects (``name``, ``stage``,
            ``kernels`` (C, H, W) or (Cout, Cin, H, W); full kernels are sampled over all
            Cout·Cin filters).
        n_channels: channels per layer, spread evenly over the layer's channels.
        zoom: central crop size, None for full size.
        fig: figure to draw into.
        title: figure title.
    """
    rows = []
    for lk in kernels:
        flat = _flat_kernels(lk.kernels)
        idx = sample_channels(len(flat), n_channels)
        rows.append((lk.name, lk.stage, [(centre_crop(flat[i], zoom), f"ch {i}") for i in idx]))
    with style():
        return _image_grid(rows, signed=True, fig=fig, title=title or "spatial kernels (sample)")


def plot_kernel_magnitude(kernels: Sequence, fig: Figure | None = None, ncols: int = 7, title: str | None = None):
    """Mean |k| over all kernels of each layer: where a layer's spatial support lies.

    Sequential colormap, each layer scaled by its own maximum.

    Args:
        kernels: :class:`~niff_analysis.analysis.LayerKernels` objects.
        fig: figure to draw into.
        ncols: panels per row.
        title: figure title.
    """
    if not kernels:
        raise SelectionError("nothing to draw: no layers selected")
    cells = [(np.abs(_flat_kernels(lk.kernels)).mean(axis=0), lk.name) for lk in kernels]
    rows = [("", None, cells[i : i + ncols]) for i in range(0, len(cells), ncols)]
    with style():
        return _image_grid(
            rows,
            signed=False,
            fig=fig,
            cell=0.9,
            title=title or "mean |kernel| per layer",
            scale_label="mean |k| ÷ layer maximum",
        )


#: How each ERF protocol (:mod:`~niff_analysis.analysis.erf`) is named in the figure's title.
ERF_TITLES = {
    "luo": "protocol luo: |∂ centre / ∂ input|, summed over images",
    "replknet": "protocol replknet (RepLKNet's script): log10(1 + x)",
}


def plot_erf(
    maps: Mapping[str, Mapping[str, np.ndarray]],
    ratios: pd.DataFrame | None = None,
    threshold: float = 50,
    fig: Figure | None = None,
    protocol: str | None = None,
) -> tuple[Figure, np.ndarray]:
    """Effective receptive fields: one row per checkpoint, one column per stage, each map scaled
    to its maximum (``luo`` maps drawn as log(1 + x) of that, ``replknet`` maps, already
    logarithmic, as they are), one colour scale per stage shared by the checkpoints; the
    centred square holding ``threshold`` % of the map is outlined, and a last column draws
    every checkpoint's side of that square per stage. The title names the protocol.

    Args:
        maps: checkpoint label → stage → (H, W) map
            (:func:`~niff_analysis.analysis.effective_receptive_fields`).
        ratios: :func:`~niff_analysis.analysis.erf_area_ratios` rows with a ``checkpoint`` column.
        threshold: which threshold's square to outline and plot.
        fig: figure to draw into.
        protocol: ``"luo"`` or ``"replknet"``; default: the ``protocol`` column of ``ratios``,
            else ``"luo"``.
    """
    labels = list(maps)
    if not labels:
        raise SelectionError("plot_erf: no receptive fields to draw")
    if protocol is None:
        found = set(ratios["protocol"]) if ratios is not None and "protocol" in ratios.columns else {"luo"}
        if len(found) != 1:
            raise SelectionError(f"plot_erf: the ratios mix protocols ({', '.join(sorted(found))})")
        protocol = found.pop()
    if protocol not in ERF_TITLES:
        raise SelectionError(f"plot_erf: unknown protocol {protocol!r}; choose from {', '.join(ERF_TITLES)}")
    shown = (lambda m: np.log1p(m / m.max())) if protocol == "luo" else (lambda m: m / m.max())
    stages = ordered_unique(s for lab in labels for s in maps[lab])
    with style():
        if fig is None:
            fig = new_figure((1.6 * len(stages) + 2.6, 1.6 * len(labels) + 0.4))
        grid = fig.subplots(len(labels), len(stages) + 1, squeeze=False)
        for j, st in enumerate(stages):
            top = max(
                (float(shown(maps[lab][st]).max()) for lab in labels if st in maps[lab] and maps[lab][st].max() > 0),
                default=1.0,
            )
            for i, lab in enumerate(labels):
                a = grid[i, j]
                a.set_xticks([])
                a.set_yticks([])
                if st not in maps[lab]:
                    a.set_visible(False)
                    continue
                m = maps[lab][st]
                img = shown(m) if m.max() > 0 else m
                a.imshow(img, cmap=CMAP_MAGNITUDE, vmin=0, vmax=top, interpolation="nearest")
                if ratios is not None:
                    r = ratios[
                        (ratios["checkpoint"] == lab) & (ratios["stage"] == st) & (ratios["threshold"] == threshold)
                    ]
                    if len(r) and np.isfinite(r["side"].iloc[0]):
                        side = r["side"].iloc[0]
                        h, w = m.shape
                        a.add_patch(
                            Rectangle(
                                (w // 2 - (side - 1) / 2 - 0.5, h // 2 - (side - 1) / 2 - 0.5),
                                side,
                                side,
                                fill=False,
                                ec="white",
                                lw=0.8,
                                ls="--",
                            )
                        )
                if i == 0:
                    a.set_title(st, fontsize=7)
                if j == 0:
                    a.set_ylabel(lab, fontsize=6)
        for i in range(1, len(labels)):
            grid[i, -1].set_visible(False)
        a = grid[0, -1]
        if ratios is not None and not ratios.empty:
            r = ratios[ratios["threshold"] == threshold]
            for lab in labels:
                d = r[r["checkpoint"] == lab]
                a.plot(
                    range(len(d)),
                    d["side"],
                    marker="o",
                    ms=3,
                    lw=1,
                    label=lab,
                    ls="--" if lab.endswith("@init") else "-",
                )
            a.set_xticks(range(len(stages)), stages, rotation=45, fontsize=6)
            a.set_ylabel(f"side holding {threshold:g} % (px)", fontsize=6)
            a.set_ylim(bottom=0)
            a.legend(fontsize=5, loc="best")
        else:
            a.set_visible(False)
        fig.suptitle(f"Effective receptive fields, {ERF_TITLES[protocol]}", fontsize=6)
    return fig, grid


def plot_frequency(
    kernels: Sequence,
    profile: pd.DataFrame,
    untrained: pd.DataFrame | None = None,
    fig: Figure | None = None,
    title: str | None = None,
) -> tuple[Figure, np.ndarray]:
    """Frequency responses of NIFF layers, of the filter that acts: |FFT(k)| of the spatial kernels
    (the Hermitian part of W; :mod:`~niff_analysis.analysis.frequency`), its mean over channels
    on each layer's centred grid (log colour scale, DC in the middle), and below them the radial
    profiles against |f| / f_Nyquist (mean, interquartile band), the initialisation dashed.

    Args:
        kernels: :class:`~niff_analysis.analysis.LayerKernels` with frequency responses.
        profile: :func:`~niff_analysis.analysis.frequency_profile` of the same layers.
        untrained: the same table of the initialisation, or ``None``.
        fig: figure to draw into.
        title: figure title.
    """
    from ..analysis.frequency import mean_magnitude

    layers = [lk for lk in kernels if lk.response is not None]
    if not layers or profile.empty:
        raise SelectionError("plot_frequency: no NIFF layer (frequency response) to draw")
    colors = layer_colors([lk.name for lk in layers], [lk.stage for lk in layers])
    ncols = min(len(layers), 7)
    nrows = -(-len(layers) // ncols)
    with style():
        if fig is None:
            # At least 4.5 in wide: with one or two layers the profile panel and its outside
            # legend would not fit and constrained layout gives up.
            fig = new_figure((max(1.3 * ncols + 0.6, 4.5), 1.3 * nrows + 2.6))
        sub = fig.subfigures(2, 1, height_ratios=[1.3 * nrows, 2.4])
        assert isinstance(sub, np.ndarray)  # two subfigures come back as an array (a single one would not)
        grid = sub[0].subplots(nrows, ncols, squeeze=False)
        for a in grid.ravel():
            a.set_xticks([])
            a.set_yticks([])
        for k, lk in enumerate(layers):
            a = grid.ravel()[k]
            mag = mean_magnitude(lk)
            pos = mag[mag > 0]
            norm = mcolors.LogNorm(vmin=pos.min(), vmax=pos.max()) if len(pos) and pos.max() > pos.min() else None
            a.imshow(np.where(mag > 0, mag, np.nan), cmap=CMAP_MAGNITUDE, norm=norm, interpolation="nearest")
            a.set_title(lk.name, fontsize=5, color=colors[lk.name])
        for a in grid.ravel()[len(layers) :]:
            a.set_visible(False)
        ax = sub[1].subplots(1, 1)
        for lk in layers:
            d = profile[profile["layer"] == lk.name]
            ax.plot(d["radius"], d["mean"], color=colors[lk.name], lw=1, label=lk.name)
            ax.fill_between(d["radius"], d["q25"], d["q75"], color=colors[lk.name], alpha=0.12, lw=0)
            if untrained is not None and (untrained["layer"] == lk.name).any():
                u = untrained[untrained["layer"] == lk.name]
                ax.plot(u["radius"], u["mean"], color=colors[lk.name], lw=0.8, ls="--")
        if untrained is not None and not untrained.empty:
            ax.plot([], [], color="0.3", ls="--", lw=0.8, label="at initialisation")
        ax.axvline(1.0, color="0.4", ls=":", lw=0.8)
        ax.set_xlabel("|f| / f_Nyquist")
        ax.set_ylabel("|FFT(k)| = |W_h| (mean over channels)")
        ax.set_yscale("log")
        ax.legend(fontsize=5, ncols=2 if len(layers) > 6 else 1, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        if title:
            fig.suptitle(title, fontsize=8)
    return fig, grid


__all__ = [
    "centre_crop",
    "plot_eigenkernels",
    "plot_kernel_magnitude",
    "plot_erf",
    "plot_frequency",
    "plot_raw_kernels",
    "plot_weight_pca",
    "sample_channels",
]
