"""One shared look for every figure: rc settings applied in a context, a colour-blind-safe
palette with a fixed colour per stage, colormaps for signed and magnitude images, and
byte-reproducible saving.

The style is applied with :func:`style` (``matplotlib.rc_context``) so importing this package
never changes a user's global ``rcParams``. Figures are plain :class:`~matplotlib.figure.Figure`
objects on an Agg canvas, not pyplot figures: nothing is registered globally, so there is nothing
to leak or close, and no GUI backend is ever touched (in a notebook, ``display(fig)`` shows one).
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib
import matplotlib.colors as mcolors
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..analysis.kernels import layer_stage
from ..io import atomic_write

if TYPE_CHECKING:  # matplotlib's stubs only: the names rc_context accepts
    from matplotlib.typing import RcKeyType

# Okabe & Ito (2008), the standard colour-blind-safe qualitative palette. Yellow comes last:
# it is hard to see on white, so it is only used from the eighth stage on.
OKABE_ITO = ("#000000", "#E69F00", "#56B4E9", "#009E73", "#D55E00", "#0072B2", "#CC79A7", "#F0E442")
# Methods in the cost figure get colours outside the stage palette's first entries.
METHOD_COLORS = {"niff": "#0072B2", "spatial": "#D55E00", "baseline": "#000000"}
MODEL_LINESTYLES = ("-", "--", ":", "-.")
MODEL_MARKERS = ("o", "s", "^", "D")
CMAP_SIGNED = "RdBu_r"  # diverging, colour-blind safe, white at 0
CMAP_MAGNITUDE = "viridis"  # perceptually uniform sequential

STYLE: dict[RcKeyType, Any] = {
    "font.family": "DejaVu Sans",  # ships with matplotlib: identical glyphs on every machine
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": False,
    "lines.linewidth": 1.2,
    "figure.dpi": 100,
    "savefig.dpi": 150,
    "image.interpolation": "none",  # PDF: raw pixels, no resampling; PNG: nearest
    "image.composite_image": False,  # one small image each instead of one huge resampled one
    "image.origin": "upper",
    "pdf.fonttype": 42,  # embed TrueType, so text stays text in the PDF
    "ps.fonttype": 42,
    "pdf.compression": 6,
    "svg.hashsalt": "niff-analysis",
}

# PDF/PNG metadata without timestamps: two runs give identical bytes whatever the clock or
# SOURCE_DATE_EPOCH says.
PDF_METADATA = {"Creator": "niff-analysis", "Producer": None, "CreationDate": None, "ModDate": None}
PNG_METADATA = {"Software": None}


@contextlib.contextmanager
def style() -> Iterator[None]:
    """Apply the shared figure style for the duration of a ``with`` block."""
    with matplotlib.rc_context(STYLE):
        yield


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A figure on the Agg canvas with constrained layout (call inside :func:`style`)."""
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def stage_index(stage: str | None) -> int:
    """Palette slot of a stage: ``layerN`` → N, anything else (the stem) → 0."""
    m = re.search(r"(\d+)$", str(stage)) if stage is not None else None
    return int(m.group(1)) if m else 0


def stage_color(stage: str | None) -> str:
    """The colour of a stage; identical in every figure."""
    return OKABE_ITO[stage_index(stage) % len(OKABE_ITO)]


def palette_stage(layer: str, stage: str | None = None) -> str:
    """The group a layer is coloured by: its recorded stage; else the one every table gives it
    (:func:`~niff_analysis.analysis.kernels.layer_stage`: the stage its name gives, else the first
    component of its dotted name, so layers of one module share a colour)."""
    if stage is not None and stage == stage and str(stage) not in ("", "None"):  # drops NaN
        return str(stage)
    return layer_stage(str(layer))


def layer_colors(layers: Sequence[str], stages: Sequence[str | None] | None = None) -> dict[str, str]:
    """One colour per layer: its stage's colour, lightened a little for each later layer of that
    stage, so layers of a stage read as one family and stages stay distinct."""
    stages = list(stages) if stages is not None else [None] * len(layers)
    seen: dict[str, list[str]] = {}
    for layer, st in zip(layers, stages):
        seen.setdefault(palette_stage(layer, st), [])
        if layer not in seen[palette_stage(layer, st)]:
            seen[palette_stage(layer, st)].append(layer)
    out = {}
    for st, members in seen.items():
        base = np.array(mcolors.to_rgb(stage_color(st)))
        for j, layer in enumerate(members):
            t = 0.45 * j / max(len(members), 1)  # up to 45 % towards white
            r, g, b = base + (1.0 - base) * t
            out[layer] = mcolors.to_hex((r, g, b))
    return out


def signed_norm(image: np.ndarray) -> mcolors.TwoSlopeNorm:
    """A colour norm centred at 0 and symmetric, so white always means zero."""
    m = float(np.nanmax(np.abs(image))) if np.size(image) else 0.0
    m = m if np.isfinite(m) and m > 0 else 1.0
    return mcolors.TwoSlopeNorm(vmin=-m, vcenter=0.0, vmax=m)


def ordered_unique(values: Iterable) -> list:
    """Unique values in order of first appearance."""
    return list(dict.fromkeys(values))


def save_figure(fig: Figure, stem: Path, formats: Sequence[str] = ("pdf", "png")) -> list[Path]:
    """Write ``fig`` as ``stem.<fmt>`` for each format, atomically and byte-reproducibly.

    Returns:
        The paths written, in the order of ``formats``.
    """
    paths = []
    for fmt in formats:
        meta = PDF_METADATA if fmt == "pdf" else PNG_METADATA if fmt == "png" else None
        buf = io.BytesIO()
        with style():
            fig.savefig(buf, format=fmt, metadata=meta)
        path = Path(f"{stem}.{fmt}")
        atomic_write(path, buf.getvalue())
        paths.append(path)
    return paths
