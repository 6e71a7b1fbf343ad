"""The figure set of one or more checkpoints: run the analyses once, draw every figure from their
tables, write figures (PDF/PNG) and tables (CSV). ``niff-analyze figures`` and the notebooks call
exactly these functions.

Layers with more kernels than ``max_kernels`` (dense convolutions of a baseline: one kernel per
(output, input) pair, up to 262 144 in a ResNet-18 layer) are analysed on an evenly spaced,
deterministic sample of that many kernels; each table's count column (``n``, ``n_kernels``)
says how many kernels a row stands for.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure

from .. import __version__
from ..analysis import (LayerKernels, PCAResult, effective_sizes, extract_kernels, gaussian_fit,
                        gaussian_summary, kernel_mass, mass_summary, pca_eigenkernels, weight_pca)
from ..analysis.kernels import sample_channels, subsample
from ..analysis.cost import cost_table
from ..analysis.erf import dataset_images, effective_receptive_fields, erf_area_ratios
from ..analysis.frequency import frequency_profile
from ..analysis.stats import FILE_NAME as STATS_NAME
from ..analysis.stats import read_kernel_stats
from ..checkpoint import find_checkpoints, load_checkpoint, load_initial
from ..errors import DataError, NiffError, SelectionError
from ..io import atomic_write, fsync_dir
from ..models import niff_layers
from .curves import plot_cost, plot_effective_size, plot_kernel_history, plot_mass_ratio, plot_sigma
from .images import (plot_eigenkernels, plot_erf, plot_frequency, plot_kernel_magnitude, plot_raw_kernels,
                     plot_weight_pca)
from .style import save_figure

CHECKPOINT = "checkpoint"
FORMATS = ("pdf", "png", "svg")
COST_SIZES = (7, 14, 28, 56, 112)
ZOOM = 9

PathLike = Union[str, os.PathLike]


@dataclass
class FigureData:
    """Everything the figures are drawn from; tables carry a leading ``checkpoint`` column.

    Attributes:
        labels: checkpoint labels, in the order given.
        kernels: label → the analysed :class:`~niff_analysis.analysis.LayerKernels`.
        mass_summary: Eq. 6 mean/std per layer and window.
        effective_sizes: smallest window with 50/90/95 % mass, per kernel.
        gaussian: per-kernel 2-D Gaussian fits.
        gaussian_summary: mean/std of σx, σy per layer.
        eigenkernels: label → PCA of the spatial kernels.
        weight_pca: label → PCA of the frequency weights (NIFF checkpoints only).
        cost: FLOPs and measured times per feature-map size.
        untrained_mass_summary: Eq. 6 mean/std of each checkpoint's initialisation (its run's
            ``init/``, or rebuilt from the recorded seed; see
            :func:`~niff_analysis.checkpoint.load_initial`), labelled with the trained
            checkpoint's label; empty when none is known.
        history: each checkpoint's ``kernel_stats.csv`` (statistics during training), where it
            has one.
        frequency, untrained_frequency: radial profiles of |W| of the NIFF layers, trained and
            at initialisation.
        erf_maps, erf: effective receptive fields per stage (label → stage → map; label
            ``<name>@init`` for the initialisation) and their area ratios, where the
            checkpoint's dataset is available.
        notes: what was skipped and why.
    """

    labels: list[str]
    kernels: dict[str, list[LayerKernels]]
    mass_summary: pd.DataFrame
    effective_sizes: pd.DataFrame
    gaussian: pd.DataFrame
    gaussian_summary: pd.DataFrame
    eigenkernels: dict[str, PCAResult]
    weight_pca: dict[str, PCAResult]
    cost: pd.DataFrame
    sources: dict[str, str] = field(default_factory=dict)
    hashes: dict[str, Optional[str]] = field(default_factory=dict)
    parameters: dict = field(default_factory=dict)
    untrained_mass_summary: pd.DataFrame = field(default_factory=pd.DataFrame)
    history: pd.DataFrame = field(default_factory=pd.DataFrame)
    frequency: pd.DataFrame = field(default_factory=pd.DataFrame)
    untrained_frequency: pd.DataFrame = field(default_factory=pd.DataFrame)
    erf_maps: dict = field(default_factory=dict)
    erf: pd.DataFrame = field(default_factory=pd.DataFrame)
    notes: list = field(default_factory=list)


def _tag(df: pd.DataFrame, label: str) -> pd.DataFrame:
    df = df.copy()
    if CHECKPOINT in df.columns:
        df = df.drop(columns=CHECKPOINT)
    df.insert(0, CHECKPOINT, label)
    return df


def analyse(checkpoints: Sequence[Optional[PathLike]] = (None,), layers: Union[str, Sequence[str]] = "*",
            device: str = "cpu", max_kernels: Optional[int] = 1024, n_components: int = 6,
            cost_sizes: Sequence[int] = COST_SIZES, measure_cost: bool = True,
            progress: Optional[Callable[[str], None]] = None, factory: Optional[str] = None,
            erf_images: int = 50, data_dir: Optional[PathLike] = None) -> FigureData:
    """Run every analysis the figures need, once per checkpoint.

    A checkpoint without NIFF layers (a baseline) is analysed through its plain stride-1 k×k
    convolutions (``extract_kernels(..., include_conv=True)``); NIFF checkpoints through their
    NIFF layers.

    Args:
        checkpoints: checkpoint paths; ``None`` is the bundled default.
        layers: fnmatch glob(s) on layer names.
        device: where checkpoints are loaded and MLPs/fits run.
        max_kernels: analyse at most this many kernels per layer (evenly spaced sample); None
            for all.
        n_components: principal components per layer.
        cost_sizes: feature-map sizes of the cost figure; empty to skip it.
        measure_cost: also time the layers (otherwise FLOPs only).
        progress: called with a short message before each step.
        factory: the user factory you allow to build a checkpoint's model
            (:func:`~niff_analysis.checkpoint.load_checkpoint`).
        erf_images: test images of the checkpoint's dataset for the receptive fields (0: skip).
        data_dir: that dataset's folder (Fashion-MNIST: the Debian package's by default).
    """
    say = progress or (lambda msg: None)
    found = find_checkpoints(list(checkpoints) or [None])  # the labels the analysis commands give
    labels, checkpoints = [label for label, _ in found], [path for _, path in found]
    kernels, pcas, wpcas, sources, hashes = {}, {}, {}, {}, {}
    mass, sizes, gauss, gsum, untrained, history = [], [], [], [], [], []
    freq, freq0, erf_rows, erf_maps, notes, images = [], [], [], {}, [], {}
    for label, ck in zip(labels, checkpoints):
        say(f"{label}: loading and extracting kernels")
        model = load_checkpoint(ck, device=device, factory=factory)
        sources[label] = model.niff_checkpoint["path"]
        hashes[label] = model.niff_checkpoint.get("sha256")
        has_niff = bool(niff_layers(model))
        try:
            lks = subsample(extract_kernels(model, layers=layers, include_conv=not has_niff), max_kernels)
        except NiffError as exc:  # no match, non-finite kernels, …: say which checkpoint
            raise type(exc)(f"{label}: {exc}") from None
        kernels[label] = lks
        say(f"{label}: mass ratio, effective sizes")
        m = kernel_mass(lks)
        mass.append(_tag(mass_summary(m), label))
        sizes.append(_tag(effective_sizes(m), label))
        say(f"{label}: PCA")
        pcas[label] = pca_eigenkernels(lks, n_components=n_components)
        pcas[label].table = _tag(pcas[label].table, label)
        with_response = [lk for lk in lks if lk.response is not None]
        if with_response:
            wpcas[label] = weight_pca(with_response, n_components=n_components)
            wpcas[label].table = _tag(wpcas[label].table, label)
        say(f"{label}: Gaussian fits")
        g = gaussian_fit(lks, device=device)
        gauss.append(_tag(g, label))
        gsum.append(_tag(gaussian_summary(g), label))
        if has_niff:
            freq.append(_tag(frequency_profile(lks), label))
        init = load_initial(ck, device=device)
        if init is not None:
            say(f"{label}: mass ratio at initialisation")
            init_lks = subsample(extract_kernels(init, layers=layers, include_conv=not has_niff), max_kernels)
            untrained.append(_tag(mass_summary(kernel_mass(init_lks)), label))
            if has_niff:
                freq0.append(_tag(frequency_profile(init_lks), label))
        if erf_images:
            name = model.niff_checkpoint.get("dataset")
            size = (model.niff_checkpoint.get("model_kwargs") or {}).get("input_size") or 224
            try:
                if name is None:
                    raise DataError("the checkpoint records no dataset")
                key = (name, int(size[0] if isinstance(size, list) else size))
                if key not in images:
                    images[key] = dataset_images(name, erf_images, data_dir, image_size=key[1])
            except DataError as exc:
                notes.append(f"{label}: receptive fields skipped ({exc})")
                say(notes[-1])
            else:
                say(f"{label}: effective receptive fields ({len(images[key])} images)")
                for lab, m in [(label, model)] + ([(f"{label}@init", init)] if init is not None else []):
                    erf_maps[lab] = effective_receptive_fields(m, images[key])
                    erf_rows.append(_tag(erf_area_ratios(erf_maps[lab]), lab))
        stats_file = Path(sources[label]) / STATS_NAME
        if stats_file.is_file():
            history.append(_tag(read_kernel_stats(stats_file), label))
    cost = pd.DataFrame()
    if cost_sizes:
        say("cost: FLOPs" + (" and timings" if measure_cost else ""))
        cost = cost_table(sizes=tuple(cost_sizes), channels=64, batch=8, measure=measure_cost,
                          repeats=5, max_seconds=0.5)
    return FigureData(labels=labels, kernels=kernels, mass_summary=pd.concat(mass, ignore_index=True),
                      effective_sizes=pd.concat(sizes, ignore_index=True),
                      gaussian=pd.concat(gauss, ignore_index=True),
                      gaussian_summary=pd.concat(gsum, ignore_index=True),
                      eigenkernels=pcas, weight_pca=wpcas, cost=cost, sources=sources, hashes=hashes,
                      parameters=dict(layers=layers, max_kernels=max_kernels, n_components=n_components,
                                      cost_sizes=list(cost_sizes), measure_cost=measure_cost),
                      untrained_mass_summary=pd.concat(untrained, ignore_index=True) if untrained else pd.DataFrame(),
                      history=pd.concat(history, ignore_index=True) if history else pd.DataFrame(),
                      frequency=pd.concat(freq, ignore_index=True) if freq else pd.DataFrame(),
                      untrained_frequency=pd.concat(freq0, ignore_index=True) if freq0 else pd.DataFrame(),
                      erf_maps=erf_maps, erf=pd.concat(erf_rows, ignore_index=True) if erf_rows else pd.DataFrame(),
                      notes=notes)


def _components_long(result: PCAResult, label: str) -> pd.DataFrame:
    """Components as a long table: checkpoint, layer, [part,] component, row, col, value."""
    frames = []
    for key, arr in result.components.items():
        layer, part = key if isinstance(key, tuple) else (key, None)
        k, h, w = arr.shape
        comp, row, col = np.meshgrid(np.arange(k), np.arange(h), np.arange(w), indexing="ij")
        d = {CHECKPOINT: label, "layer": layer}
        if part is not None:
            d["part"] = part
        d.update(component=comp.ravel(), row=row.ravel(), col=col.ravel(), value=arr.ravel())
        frames.append(pd.DataFrame(d))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _kernel_sample_long(kernels: Sequence[LayerKernels], label: str, n_channels: int) -> pd.DataFrame:
    frames = []
    for lk in kernels:
        flat = lk.flat.numpy()
        idx = sample_channels(len(flat), n_channels)
        k = flat[idx]
        ch, row, col = np.meshgrid(idx, np.arange(k.shape[1]), np.arange(k.shape[2]), indexing="ij")
        frames.append(pd.DataFrame({CHECKPOINT: label, "layer": lk.name, "channel": ch.ravel(),
                                    "row": row.ravel(), "col": col.ravel(), "value": k.ravel()}))
    return pd.concat(frames, ignore_index=True)


def iter_figures(data: FigureData, n_channels: int = 8) -> Iterator[tuple[str, Figure, dict[str, pd.DataFrame]]]:
    """Yield ``(name, figure, tables it was drawn from)`` for every figure of the set.

    Per-checkpoint figures get the checkpoint label as a suffix when there are several.
    """
    multi = len(data.labels) > 1

    def name(base: str, label: str) -> str:
        return f"{base}_{label}" if multi else base

    untrained = data.untrained_mass_summary
    tables = {"mass_summary": data.mass_summary}
    if not untrained.empty:
        tables["mass_summary_untrained"] = untrained
    yield ("mass_ratio", plot_mass_ratio(data.mass_summary, untrained=None if untrained.empty else untrained)[0],
           tables)
    if not data.history.empty:
        yield "kernel_history", plot_kernel_history(data.history)[0], {"kernel_history": data.history}
    if data.erf_maps:
        yield "erf", plot_erf(data.erf_maps, data.erf)[0], {"erf_area_ratios": data.erf}
    yield ("effective_size", plot_effective_size(data.effective_sizes, quantile=90)[0],
           {"effective_sizes": data.effective_sizes})
    yield ("gaussian_sigma", plot_sigma(data.gaussian_summary)[0],
           {"gaussian_fits": data.gaussian, "gaussian_summary": data.gaussian_summary})
    if not data.cost.empty:
        yield "cost", plot_cost(data.cost)[0], {"cost": data.cost}
    for label in data.labels:
        pca = data.eigenkernels[label]
        comps = _components_long(pca, label)
        tables = {name("eigenkernels", label): pca.table,
                  name("eigenkernel_components", label): comps}
        title = f"{label}: PCA eigenkernels" if multi else None
        yield name("eigenkernels", label), plot_eigenkernels(pca.table, pca.components, title=title)[0], tables
        yield (name(f"eigenkernels_zoom{ZOOM}", label),
               plot_eigenkernels(pca.table, pca.components, zoom=ZOOM,
                                 title=f"{label}: PCA eigenkernels, central {ZOOM}×{ZOOM}" if multi else None)[0],
               {})
        if label in data.weight_pca:
            w = data.weight_pca[label]
            yield (name("weight_pca", label),
                   plot_weight_pca(w.table, w.components, title=f"{label}: multiplication-weight PCA"
                                   if multi else None)[0],
                   {name("weight_pca", label): w.table,
                    name("weight_pca_components", label): _components_long(w, label)})
        lks = data.kernels[label]
        if not data.frequency.empty and (data.frequency[CHECKPOINT] == label).any():
            prof = data.frequency[data.frequency[CHECKPOINT] == label]
            ref = data.untrained_frequency
            ref = ref[ref[CHECKPOINT] == label] if not ref.empty else None
            tables = {name("frequency_profile", label): prof}
            if ref is not None and not ref.empty:
                tables[name("frequency_profile_untrained", label)] = ref
            yield (name("frequency", label),
                   plot_frequency(lks, prof, ref, title=f"{label}: frequency responses" if multi else None)[0],
                   tables)
        yield (name("raw_kernels", label),
               plot_raw_kernels(lks, n_channels=n_channels, title=f"{label}: spatial kernels (sample)"
                                if multi else None)[0],
               {name("raw_kernels_sample", label): _kernel_sample_long(lks, label, n_channels)})
        yield (name("kernel_magnitude", label),
               plot_kernel_magnitude(lks, title=f"{label}: mean |kernel| per layer" if multi else None)[0],
               {})


MANIFEST = "meta.json"
MANIFEST_FORMAT = "niff-analysis-figures"


def _manifest_files(out: Path) -> list[str]:
    """The files an earlier figure run wrote into ``out`` (its manifest's list), if any."""
    try:
        meta = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(meta, dict) or meta.get("format") != MANIFEST_FORMAT:
        return []
    return [f for f in meta.get("files", []) if isinstance(f, str) and "/" not in f and f != MANIFEST]


def check_output_folder(out: PathLike) -> Path:
    """Refuse an output folder that cannot be written, before any work is done.

    Raises:
        SelectionError: ``out`` is a file, or it (or the folder it would be made in) is not
            writable; the message names ``out``.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SelectionError(f"{out}: exists and is not a directory")
    probe = out if out.exists() else next((p for p in out.absolute().parents if p.exists()), Path("."))
    try:  # really create a file: permission bits say nothing for root or on read-only mounts
        fd, name = tempfile.mkstemp(prefix=".niff-write-test.", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise SelectionError(f"{out}: cannot write there ({probe}: {exc.strerror or exc})") from None
    return out


def write_figures(data: FigureData, out: PathLike, formats: Sequence[str] = ("pdf", "png"),
                  progress: Optional[Callable[[str], None]] = None) -> list[Path]:
    """Write every figure in each format and every table as CSV under ``out``, as one unit.

    Everything is written into a temporary folder beside ``out`` first and moved into place only
    when all of it succeeded, with ``meta.json`` (toolkit version, checkpoints with labels and
    weight hashes, parameters, the files written). A failure or interruption (Ctrl-C) before that
    leaves ``out`` as it was. Files an earlier run listed in its ``meta.json`` and this run does not
    write are removed; no other file in ``out`` is touched.

    Returns:
        The paths written (``meta.json`` included), sorted.
    """
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise SelectionError(f"unknown figure format(s) {bad or formats}; choose from {', '.join(FORMATS)}")
    say = progress or (lambda msg: None)
    out = check_output_folder(out)
    out.absolute().parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.absolute().parent))
    try:
        written: set[Path] = set()
        for fig_name, fig, tables in iter_figures(data):
            say(f"figure {fig_name}")
            written.update(save_figure(fig, tmp / fig_name, formats))
            for table_name, df in tables.items():
                path = tmp / f"{table_name}.csv"
                if path not in written:
                    written.add(atomic_write(path, df.to_csv(index=False, float_format="%.6g")))
        names = sorted(p.name for p in written)
        atomic_write(tmp / MANIFEST, json.dumps(dict(
            format=MANIFEST_FORMAT, versions=dict(niff_analysis=__version__, torch=torch.__version__),
            checkpoints=[dict(label=label, path=data.sources.get(label), sha256=data.hashes.get(label))
                         for label in data.labels],
            parameters=dict(data.parameters, formats=list(formats)), files=names), indent=1) + "\n")
        out.mkdir(exist_ok=True)
        for stale in set(_manifest_files(out)) - set(names):
            (out / stale).unlink(missing_ok=True)
        for name in names + [MANIFEST]:  # the manifest last: it describes what is there
            os.replace(tmp / name, out / name)
        fsync_dir(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return sorted(out / n for n in names + [MANIFEST])
