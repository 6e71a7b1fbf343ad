"""The figure set of one or more checkpoints, drawn from the tables of
:func:`niff_analysis.pipeline.analyse`: :func:`iter_figures` yields every figure with the tables
it was drawn from, :func:`write_figures` writes them (PDF/PNG and CSV) into a folder as one unit.
``niff-analyze figures`` and the notebooks call exactly these functions.

Layers with more kernels than ``max_kernels`` (dense convolutions of a baseline: one kernel per
(output, input) pair, up to 262 144 in a ResNet-18 layer) are analysed on an evenly spaced,
deterministic sample of that many kernels; each table's count column (``n``, ``n_kernels``)
says how many kernels a row stands for.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .._types import PathLike
from ..analysis import LayerKernels, PCAResult
from ..analysis.kernels import sample_channels
from ..analysis.schema import CHECKPOINT
from ..errors import SelectionError
from ..io import atomic_write, fsync_dir, process_umask
from ..pipeline import FigureData
from ..provenance import META_NAME, figures_manifest, manifest_files
from .curves import plot_cost, plot_effective_size, plot_mass_ratio, plot_sigma
from .images import (
    plot_eigenkernels,
    plot_erf,
    plot_frequency,
    plot_kernel_magnitude,
    plot_raw_kernels,
    plot_weight_pca,
    weight_response_name,
)
from .style import save_figure
from .training import plot_kernel_history

FORMATS = ("pdf", "png", "svg")
ZOOM = 9


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
        frames.append(
            pd.DataFrame(
                {
                    CHECKPOINT: label,
                    "layer": lk.name,
                    "channel": ch.ravel(),
                    "row": row.ravel(),
                    "col": col.ravel(),
                    "value": k.ravel(),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def file_labels(labels: Sequence[str]) -> dict[str, str]:
    """A safe, distinct file-name part per label: labels are paths where folder names clash
    (``lc/a/run``), and a path separator or other odd character in a file name would fail the
    write (or land elsewhere). Runs of other characters become ``_``; clashes get ``-2``, ``-3``."""
    out: dict[str, str] = {}
    for label in labels:
        base = re.sub(r"[^A-Za-z0-9._=+@-]+", "_", label).strip("._") or "checkpoint"
        name, i = base, 2
        while name in out.values():
            name, i = f"{base}-{i}", i + 1
        out[label] = name
    return out


def iter_figures(data: FigureData, n_channels: int = 8) -> Iterator[tuple[str, Figure, dict[str, pd.DataFrame]]]:
    """Yield ``(name, figure, tables it was drawn from)`` for every figure of the set.

    Per-checkpoint figures get the checkpoint label as a suffix when there are several (made
    safe for file names by :func:`file_labels`).
    """
    multi = len(data.labels) > 1
    safe = file_labels(data.labels)

    def name(base: str, label: str) -> str:
        return f"{base}_{safe[label]}" if multi else base

    untrained = data.untrained_mass_summary
    tables = {"mass_summary": data.mass_summary}
    if not untrained.empty:
        tables["mass_summary_untrained"] = untrained
    if not data.mass_scale.empty:
        tables["mass_scale"] = data.mass_scale
    yield (
        "mass_ratio",
        plot_mass_ratio(data.mass_summary, untrained=None if untrained.empty else untrained, scale=data.mass_scale)[0],
        tables,
    )
    if not data.history.empty:
        yield (
            "kernel_history",
            plot_kernel_history(data.history, measures=data.measures)[0],
            {"kernel_history": data.history},
        )
    if data.erf_maps:
        yield (
            "erf",
            plot_erf(data.erf_maps, data.erf, protocol=data.parameters.get("erf_protocol", "luo"))[0],
            {"erf_area_ratios": data.erf},
        )
    sizes = data.effective_sizes
    if "measure" in sizes.columns:  # the first measure's sizes (the table holds every measure's)
        sizes = sizes[sizes["measure"] == data.measures[0]]
    yield ("effective_size", plot_effective_size(sizes, quantile=90)[0], {"effective_sizes": data.effective_sizes})
    yield (
        "gaussian_sigma",
        plot_sigma(data.gaussian_summary)[0],
        {"gaussian_fits": data.gaussian, "gaussian_summary": data.gaussian_summary},
    )
    if not data.cost.empty:
        yield "cost", plot_cost(data.cost)[0], {"cost": data.cost}
    for label in data.labels:
        pca = data.eigenkernels[label]
        comps = _components_long(pca, label)
        tables = {name("eigenkernels", label): pca.table, name("eigenkernel_components", label): comps}
        title = f"{label}: PCA eigenkernels" if multi else None
        yield name("eigenkernels", label), plot_eigenkernels(pca.table, pca.components, title=title)[0], tables
        yield (
            name(f"eigenkernels_zoom{ZOOM}", label),
            plot_eigenkernels(
                pca.table,
                pca.components,
                zoom=ZOOM,
                title=f"{label}: PCA eigenkernels, central {ZOOM}×{ZOOM}" if multi else None,
            )[0],
            {},
        )
        if label in data.weight_pca:
            w = data.weight_pca[label]
            yield (
                name("weight_pca", label),
                plot_weight_pca(
                    w.table,
                    w.components,
                    title=f"{label}: multiplication-weight PCA ({weight_response_name(w.table)})" if multi else None,
                )[0],
                {name("weight_pca", label): w.table, name("weight_pca_components", label): _components_long(w, label)},
            )
        lks = data.kernels[label]
        if not data.frequency.empty and (data.frequency[CHECKPOINT] == label).any():
            prof = data.frequency[data.frequency[CHECKPOINT] == label]
            ref = data.untrained_frequency
            ref = ref[ref[CHECKPOINT] == label] if not ref.empty else None
            tables = {name("frequency_profile", label): prof}
            if ref is not None and not ref.empty:
                tables[name("frequency_profile_untrained", label)] = ref
            yield (
                name("frequency", label),
                plot_frequency(lks, prof, ref, title=f"{label}: frequency responses" if multi else None)[0],
                tables,
            )
        yield (
            name("raw_kernels", label),
            plot_raw_kernels(lks, n_channels=n_channels, title=f"{label}: spatial kernels (sample)" if multi else None)[
                0
            ],
            {name("raw_kernels_sample", label): _kernel_sample_long(lks, label, n_channels)},
        )
        yield (
            name("kernel_magnitude", label),
            plot_kernel_magnitude(lks, title=f"{label}: mean |kernel| per layer" if multi else None)[0],
            {},
        )


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


def write_figures(
    data: FigureData,
    out: PathLike,
    formats: Sequence[str] = ("pdf", "png"),
    progress: Callable[[str], None] | None = None,
) -> list[Path]:
    """Write every figure in each format and every table as CSV under ``out``, as one unit.

    Everything is written into a temporary folder beside ``out`` first, with ``meta.json``
    (toolkit version, checkpoints with labels and weight hashes, parameters, the files written);
    only when all of it succeeded does that folder take the place of ``out``, in one rename
    (an atomic exchange where the system has one). A failure or interruption (Ctrl-C) before
    that leaves ``out`` as it was, and no half-written set is ever visible. Files in ``out`` that
    an earlier run did not list in its ``meta.json`` (yours) are carried into the new folder
    (hard links: not copied, not moved); what the earlier run listed and this one does not write
    is gone with the old folder.

    Returns:
        The paths written (``meta.json`` included), sorted.
    """
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise SelectionError(f"unknown figure format(s) {bad or formats}; choose from {', '.join(FORMATS)}")
    say = progress or (lambda msg: None)
    out = check_output_folder(out)
    if out.is_symlink():
        out = Path(os.path.realpath(out))  # replace the folder the link points to, not the link
    parent = out.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=parent))
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
        atomic_write(
            tmp / META_NAME,
            figures_manifest(
                [
                    dict(label=label, path=data.sources.get(label), sha256=data.hashes.get(label))
                    for label in data.labels
                ],
                dict(data.parameters, formats=list(formats)),
                names,
            ),
        )
        if out.is_dir():
            listed = set(manifest_files(out)) | {META_NAME}
            for entry in out.iterdir():
                if entry.name not in listed and entry.name not in names:
                    _link_into(entry, tmp / entry.name)
        os.chmod(tmp, 0o777 & ~process_umask())  # mkdtemp makes 0700; give the usual folder mode
        _commit(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return sorted(out / n for n in names + [META_NAME])


def _link_into(src: Path, dst: Path) -> None:
    """Carry a user's file (or folder) into the new set: hard links where possible."""

    def link(a, b):
        try:
            os.link(a, b, follow_symlinks=False)
        except OSError:
            shutil.copy2(a, b, follow_symlinks=False)

    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    elif src.is_dir():
        shutil.copytree(src, dst, symlinks=True, copy_function=link)
    else:
        link(src, dst)


_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    rc = fn(at_fdcwd, os.fsencode(str(a)), at_fdcwd, os.fsencode(str(b)), _RENAME_EXCHANGE)
    return rc == 0


def _commit(tmp: Path, out: Path) -> None:
    """Make the finished folder ``tmp`` the folder ``out``: one rename when ``out`` does not
    exist (or is empty), else an atomic exchange (or, without one, two renames a moment apart);
    the old folder ends up at ``tmp``, for the caller to delete."""
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        os.rename(tmp, out)  # replaces an empty folder too
    elif not _exchange(tmp, out):
        old = tmp.with_name(tmp.name + ".old")
        os.rename(out, old)
        try:
            os.rename(tmp, out)
        except OSError:
            os.rename(old, out)
            raise
        os.rename(old, tmp)
    fsync_dir(out.absolute().parent)
