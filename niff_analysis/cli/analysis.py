"""``niff-analyze kernels|mass|pca|gaussian``: the analysis engine on one or more checkpoints.

Every command takes CHECKPOINT arguments (none: the bundled default; a folder of checkpoint
folders: all of them) and prints one tidy table whose first column is ``checkpoint``. Data goes
to stdout or ``--output``; logs and progress go to stderr (``--quiet`` silences them). Beside an
``--output`` file, ``meta.json`` records provenance (toolkit version, checkpoint hashes,
parameters) under the output's file name, so several outputs can share a folder: each command
updates its own entry under a lock on the folder, so analyses run at once into the same folder
keep every entry. Warnings (e.g. kernels without mass) always go to stderr, even with ``--quiet``.
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import click
import numpy as np
import pandas as pd
import torch

from .. import __version__
from ..analysis import (effective_receptive_fields, effective_sizes, erf_area_ratios, extract_kernels,
                        frequency_profile, gaussian_fit, gaussian_summary, kernel_mass, kernel_table,
                        mass_summary, mass_table, massless_kernels,
                        capped_layers, pca_eigenkernels, pca_summary, subsample, weight_pca)
from ..checkpoint import CONFIG_NAME, DEFAULT_CHECKPOINT, find_checkpoints, load_checkpoint, resolve_device
from ..errors import NiffError, SelectionError
from ..io import atomic_write, directory_lock, file_sha256
from . import main
from .common import current_factory, device_option, factory_option, positive_int, render_frame

SUFFIX_FORMATS = {".csv": "csv", ".json": "json", ".txt": "table", ".npz": "npz"}
META_NAME = "meta.json"
META_FORMAT = "niff-analysis-meta"


# --------------------------------------------------------------------------- checkpoints
class Run:
    """Shared state of one analysis command: options, logging, provenance."""

    def __init__(self, command: str, checkpoints, layers: str, include_conv: bool, device: str,
                 quiet: bool, params: dict):
        self.command, self.include_conv, self.quiet = command, include_conv, quiet
        # --layers 'a,b' (comma list) as in figures
        self.layers = [p.strip() for p in layers.split(",") if p.strip()] or ["*"]
        self.device = resolve_device(device)
        self.targets = find_checkpoints(tuple(checkpoints))
        self.params = dict(params, layers=layers, include_conv=include_conv, device=device)
        self.provenance: list[dict] = []

    def log(self, msg: str) -> None:
        if not self.quiet:
            click.echo(msg, err=True)

    def kernels(self, niff_only: Optional[str] = None) -> list[tuple[str, list]]:
        """(label, list[LayerKernels]) per checkpoint.

        Args:
            niff_only: name of an analysis that needs NIFF layers; a checkpoint without them is
                then an error.
        """
        from tqdm import tqdm

        out = []
        bar = tqdm(self.targets, desc="checkpoints", unit="ckpt", file=sys.stderr,
                   disable=self.quiet or len(self.targets) < 2, leave=False)
        for label, path in bar:
            t0 = time.perf_counter()
            model = load_checkpoint(path, device=str(self.device), factory=current_factory())
            meta = model.niff_checkpoint
            self.provenance.append(dict(label=label, path=meta["path"], sha256=meta["sha256"],
                                        architecture=meta.get("architecture")))
            try:
                lks = extract_kernels(model, layers=self.layers, include_conv=self.include_conv)
            except NiffError as exc:  # no match, non-finite kernels, …: say which checkpoint
                raise type(exc)(f"{label}: {exc}") from None
            max_kernels = click.get_current_context().meta.get("niff_max_kernels")
            total = sum(lk.flat.shape[0] for lk in lks)
            if max_kernels:
                self.params["max_kernels"] = max_kernels
                lks = subsample(lks, max_kernels)
            plain = [lk.name for lk in lks if lk.kind == "conv"]
            if niff_only and plain:
                verb = "is a plain convolution" if len(plain) == 1 else "are plain convolutions"
                what = ("it has no NIFF layers" if len(plain) == len(lks)
                        else f"{', '.join(plain)} {verb}")
                raise SelectionError(f"{label}: {niff_only} needs NIFF layers, but {what} "
                                     f"(selected: {', '.join(lk.name for lk in lks)})")
            if lks and len(plain) == len(lks) and not self.include_conv:
                self.log(f"note: {label} has no NIFF layers; analysing its plain convolutions")
            n = sum(lk.flat.shape[0] for lk in lks)
            sampled = f" (sampled from {total}: at most {max_kernels} per layer)" if n < total else ""
            self.log(f"{label}: {len(lks)} layers, {n} kernels{sampled} "
                     f"({time.perf_counter() - t0:.1f} s to load and extract)")
            out.append((label, lks))
        return out

    def warn(self, msg: str) -> None:
        """A warning: printed even with ``--quiet`` (results that hold NaN are never silent)."""
        click.echo(f"warning: {msg}", err=True)

    def write_meta(self, output: Path, rows: int) -> None:
        record_output(output, dict(
            command=self.command, created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            versions=dict(niff_analysis=__version__, torch=torch.__version__),
            parameters=self.params, checkpoints=self.provenance, rows=rows,
            sha256=file_sha256(output)))


def record_output(output: Path, entry: dict) -> None:
    """Set ``entry`` as the ``meta.json`` record of ``output`` (a file in the same folder).

    The read-modify-write runs under a lock on the folder, so processes writing outputs into one
    folder at once keep each other's entries; the file itself is replaced atomically.
    """
    output = Path(output)
    meta_path = output.parent / META_NAME
    with directory_lock(output.parent):
        meta = _read_meta(meta_path)
        meta["outputs"][output.name] = entry
        atomic_write(meta_path, json.dumps(meta, indent=1, default=str) + "\n")


def _read_meta(meta_path: Path) -> dict:
    if not meta_path.exists():
        return dict(format=META_FORMAT, outputs={})
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        meta = None
    if (not isinstance(meta, dict) or meta.get("format") != META_FORMAT
            or not isinstance(meta.get("outputs"), dict)):
        raise NiffError(f"{meta_path} exists and is not a niff-analysis metadata file; "
                        "choose another output folder")
    return meta


def _with_checkpoint(label: str, df: pd.DataFrame) -> pd.DataFrame:
    df = df.copy()
    df.insert(0, "checkpoint", label)
    return df


def _output_format(ctx: click.Context, fmt: str, output: Optional[str], allowed: tuple[str, ...]) -> str:
    if not output:
        return fmt
    parent = Path(output).parent
    if parent.exists() and not parent.is_dir():
        raise NiffError(f"--output {output}: {parent} exists and is not a directory")
    suffix = Path(output).suffix.lower()
    if suffix not in SUFFIX_FORMATS or SUFFIX_FORMATS[suffix] not in allowed:
        ok = ", ".join(s for s, f in SUFFIX_FORMATS.items() if f in allowed)
        raise click.UsageError(f"cannot tell the format of --output {output}; use a suffix of {ok}")
    chosen = SUFFIX_FORMATS[suffix]
    if ctx.get_parameter_source("fmt") == click.core.ParameterSource.COMMANDLINE and fmt != chosen:
        raise click.UsageError(f"--format {fmt} disagrees with the suffix of --output {output}")
    return chosen


def _finish(run: Run, text: str, output: Optional[str], rows: int) -> None:
    if output:
        path = Path(output)
        _read_meta(path.parent / META_NAME)  # refuse before writing anything
        atomic_write(path, text)
        run.write_meta(path, rows)
        run.log(f"wrote {path} and {path.parent / META_NAME}")
    else:
        click.echo(text, nl=False)


def _write_npz(run: Run, output: str, arrays: dict[str, np.ndarray]) -> None:
    path = Path(output)
    _read_meta(path.parent / META_NAME)

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
            np.savez(f, **arrays)

    atomic_write(path, save)
    run.write_meta(path, len(arrays))
    run.log(f"wrote {path} ({len(arrays)} arrays) and {path.parent / META_NAME}")


def _key(label: str, name: str, several: bool) -> str:
    return f"{label}/{name}" if several else name


# --------------------------------------------------------------------------- options
def _store_max_kernels(ctx, param, value):
    ctx.meta["niff_max_kernels"] = positive_int(ctx, param, value)
    return value


def analysis_options(f: Callable) -> Callable:
    """CHECKPOINT arguments and the options every analysis command shares."""
    for deco in reversed([
        click.argument("checkpoints", nargs=-1, metavar="[CHECKPOINT ...]"),
        click.option("--layers", default="*", show_default=True, metavar="GLOB",
                     help="fnmatch pattern on layer (module) names, e.g. 'layer1.*'."),
        click.option("--include-conv", is_flag=True,
                     help="Also analyse plain stride-1 k×k convolutions (weights zero-embedded in "
                          "their feature-map-sized grid, one kernel per (out, in) pair). A checkpoint "
                          "without NIFF layers (a baseline) always uses them."),
        click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
                     show_default=True,
                     help="table: per-layer summary for people; csv/json: the full tidy data "
                          "(json: an array of row objects)."),
        click.option("--output", "-o", type=click.Path(dir_okay=False),
                     help="Write here instead of stdout (format from the suffix: .csv, .json, "
                          ".txt = table; .npz where the command says), with meta.json beside it."),
        device_option(),
        factory_option(),
        click.option("--max-kernels", type=int, callback=_store_max_kernels, expose_value=False, metavar="N",
                     help="Analyse at most N kernels per layer (evenly spaced over the channels, the same "
                          "sample every run; recorded in meta.json) for a quick look at large layers."),
        click.option("--quiet", "-q", is_flag=True,
                     help="No logs or progress bars on stderr (warnings and errors still print)."),
    ]):
        f = deco(f)
    return f


# --------------------------------------------------------------------------- commands
@main.command("kernels")
@analysis_options
@click.option("--responses", is_flag=True,
              help="With .npz output, also store each NIFF layer's frequency response as "
                   "'<layer>@real' and '<layer>@imag'.")
@click.option("--view", type=click.Choice(["layers", "radial"]), default="layers", show_default=True,
              help="layers: one row per layer; radial: the radial profile of each NIFF layer's |W| "
                   "against |f| / f_Nyquist (mean and quartiles over channels).")
@click.pass_context
def kernels_cmd(ctx, checkpoints, layers, include_conv, fmt, output, device, quiet, responses, view):
    """Spatial kernels of every NIFF layer on the feature-map size it runs at.

    CHECKPOINT: checkpoint folders or .safetensors files, or folders of them (default: the
    bundled checkpoint); several are concatenated under a leading 'checkpoint' column.

    --output kernels.npz writes one array per layer keyed by its module name (C×H×W, or
    Cout×Cin×H×W for full NIFF and dense convs; keys 'CHECKPOINT/layer' for several
    checkpoints). Other formats list the layers: kind, feature map, kernel shape, count and
    mean L1 norm.
    """
    fmt = _output_format(ctx, fmt, output, ("table", "csv", "json", "npz"))
    run = Run("kernels", checkpoints, layers, include_conv, device, quiet, dict(responses=responses))
    results = run.kernels()
    several = len(results) > 1
    if fmt == "npz":
        arrays = {}
        for label, lks in results:
            for lk in lks:
                arrays[_key(label, lk.name, several)] = lk.kernels.numpy()
                if responses and lk.response is not None:
                    arrays[_key(label, lk.name, several) + "@real"] = lk.response.real.numpy()
                    arrays[_key(label, lk.name, several) + "@imag"] = lk.response.imag.numpy()
        _write_npz(run, output, arrays)
        return
    if view == "radial":
        df = pd.concat([_with_checkpoint(label, frequency_profile(lks)) for label, lks in results],
                       ignore_index=True)
        if df.empty:
            raise SelectionError("--view radial needs NIFF layers (frequency responses); none selected")
        _finish(run, render_frame(df.round(4) if fmt == "table" else df, fmt), output, len(df))
        return
    df = pd.concat([_with_checkpoint(label, kernel_table(lks)) for label, lks in results],
                   ignore_index=True)
    _finish(run, render_frame(df, fmt), output, len(df))


@main.command("mass")
@analysis_options
@click.option("--view", type=click.Choice(["ratios", "summary", "sizes"]), default="ratios",
              show_default=True,
              help="csv/json content: ratios = one row per (layer, channel, window); summary = "
                   "mean/std/n per layer and window; sizes = per kernel the smallest window "
                   "holding 50/90/95 % of the mass.")
@click.pass_context
def mass_cmd(ctx, checkpoints, layers, include_conv, fmt, output, device, quiet, view):
    """Kernel mass ratio (Eq. 6): share of |k| inside centred odd windows 1, 3, 5, … (full last).

    CHECKPOINT: checkpoint folders or .safetensors files, or folders of them (default: the
    bundled checkpoint); several are concatenated under a leading 'checkpoint' column.

    Works on baselines too (their plain convolutions, see --include-conv). Columns (ratios):
    checkpoint, layer, stage, fmap_h, fmap_w, channel, window, mass_ratio.
    """
    fmt = _output_format(ctx, fmt, output, ("table", "csv", "json"))
    run = Run("mass", checkpoints, layers, include_conv, device, quiet, dict(view=view))
    frames = []
    for label, lks in run.kernels():
        t0 = time.perf_counter()
        frames.append(_with_checkpoint(label, kernel_mass(lks)))
        run.log(f"{label}: {len(frames[-1])} mass ratios in {time.perf_counter() - t0:.2f} s")
        _warn_massless(run, label, frames[-1])
    mass = pd.concat(frames, ignore_index=True)
    note = ""
    if fmt == "table":
        df = mass_table(mass)
        if (df[["fmap_h", "fmap_w"]].max(axis=1) < 9).any():
            note = ("(mass_wS of a layer whose kernels are smaller than S×S is that of the whole kernel, "
                    "1.0: the window covers all of it)\n")
    elif view == "summary":
        df = mass_summary(mass)
    elif view == "sizes":
        df = effective_sizes(mass)
    else:
        df = mass
    _finish(run, render_frame(df, fmt) + note, output, len(df))


def _warn_massless(run: Run, label: str, mass: pd.DataFrame) -> None:
    """Name the layers with all-zero kernels: their ratios and sizes are NaN (Eq. 6 is 0/0)."""
    zero = massless_kernels(mass)
    if zero.empty:
        return
    where = ", ".join(f"{r.layer} ({r.massless} of {r.kernels})" for r in zero.itertuples())
    run.warn(f"{label}: {int(zero.massless.sum())} all-zero kernel(s) have no mass; their mass ratios "
             f"and sizes are NaN: {where}")


@main.command("pca")
@analysis_options
@click.option("--components", "-k", type=int, default=6, show_default=True, callback=positive_int,
              help="Principal components per layer.")
@click.option("--weights", is_flag=True,
              help="PCA of the frequency-domain multiplication weights (real and imaginary parts "
                   "separately) instead of the spatial kernels; NIFF layers only.")
@click.pass_context
def pca_cmd(ctx, checkpoints, layers, include_conv, fmt, output, device, quiet, components, weights):
    """PCA eigenkernels per layer: exact SVD, deterministic signs, explained-variance ratios.

    CHECKPOINT: checkpoint folders or .safetensors files, or folders of them (default: the
    bundled checkpoint); several are concatenated under a leading 'checkpoint' column.

    Works on baselines too (their plain convolutions), except --weights. Columns: checkpoint,
    layer, stage, fmap_h, fmap_w, [part,] component, explained_variance_ratio, … .
    --output FILE.npz stores the components (k×H×W per layer, '<layer>@real'/'@imag' with
    --weights) instead of the table.
    """
    fmt = _output_format(ctx, fmt, output, ("table", "csv", "json", "npz"))
    run = Run("pca", checkpoints, layers, include_conv, device, quiet,
              dict(components=components, weights=weights))
    results = []
    for label, lks in run.kernels(niff_only="weight PCA (--weights)" if weights else None):
        t0 = time.perf_counter()
        res = weight_pca(lks, components) if weights else pca_eigenkernels(lks, components)
        results.append((label, res))
        run.log(f"{label}: PCA of {len(lks)} layers in {time.perf_counter() - t0:.2f} s")
        flat = res.table[res.table["explained_variance_ratio"].isna()]
        if not flat.empty:
            keys = ["layer", "part"] if "part" in flat.columns else ["layer"]
            names = ["@".join(map(str, k)) if isinstance(k, tuple) else str(k)
                     for k in flat.groupby(keys, sort=False).size().index]
            run.warn(f"{label}: no variance (all kernels identical) in {', '.join(names)}; "
                     "explained-variance ratios are NaN and components zero there")
    if fmt == "npz":
        several = len(results) > 1
        arrays = {}
        for label, res in results:
            for key, comp in res.components.items():
                name = f"{key[0]}@{key[1]}" if isinstance(key, tuple) else key
                arrays[_key(label, name, several)] = comp
        _write_npz(run, output, arrays)
        return
    df = pd.concat([_with_checkpoint(label, res.table) for label, res in results], ignore_index=True)
    capped = capped_layers(df, components)
    if not capped.empty:
        kept = capped["n_components"]
        total = len(df.groupby([c for c in capped.columns if c != "n_components"], sort=False))
        run.warn(f"{len(capped)} of {total} layers have fewer than {components} components (fewer "
                 f"kernels or pixels); kept {kept.min()}"
                 f"{'' if kept.min() == kept.max() else f'-{kept.max()}'} there")
    if fmt == "table":
        df = pca_summary(df).round(4)
    _finish(run, render_frame(df, fmt), output, len(df))


@main.command("gaussian")
@analysis_options
@click.option("--view", type=click.Choice(["fits", "summary"]), default="fits", show_default=True,
              help="csv/json content: fits = one row per kernel; summary = per layer.")
@click.option("--max-iter", type=int, default=200, show_default=True, callback=positive_int,
              help="Levenberg–Marquardt iterations at most.")
@click.pass_context
def gaussian_cmd(ctx, checkpoints, layers, include_conv, fmt, output, device, quiet, view, max_iter):
    """2-D Gaussian fit to |k| of every kernel (batched Levenberg–Marquardt, moment start).

    CHECKPOINT: checkpoint folders or .safetensors files, or folders of them (default: the
    bundled checkpoint); several are concatenated under a leading 'checkpoint' column.

    Works on baselines too (their plain convolutions). Columns (fits): checkpoint, layer, stage,
    fmap_h, fmap_w, channel, sigma_x, sigma_y, sigma_major, sigma_minor, theta, x0, y0,
    amplitude, offset, r2, success, status, sigma_ratio, iterations. Failed fits are rows with
    success=false and a reason in status; summaries use successful fits only.
    """
    fmt = _output_format(ctx, fmt, output, ("table", "csv", "json"))
    run = Run("gaussian", checkpoints, layers, include_conv, device, quiet,
              dict(view=view, max_iter=max_iter))
    frames = []
    for label, lks in run.kernels():
        t0 = time.perf_counter()
        fits = gaussian_fit(lks, device=run.device, max_iter=max_iter, progress=not quiet)
        run.log(f"{label}: {len(fits)} Gaussian fits, {int(fits['success'].sum())} ok, "
                f"in {time.perf_counter() - t0:.1f} s on {run.device}")
        frames.append(_with_checkpoint(label, fits))
    fits = pd.concat(frames, ignore_index=True)
    df = fits if fmt != "table" and view == "fits" else gaussian_summary(fits)
    if fmt == "table":  # for people: medians of the fits, the moment σ, and what they stand for
        keep = ["checkpoint", "layer", "fmap_h", "fmap_w", "sigma_x_median", "sigma_y_median",
                "sigma_ratio_mean", "sigma_x_moment_median", "sigma_y_moment_median", "n_ok", "n_censored", "n"]
        df = df[[c for c in keep if c in df.columns]].round(3)
    _finish(run, render_frame(df, fmt), output, len(df))


@main.command("history")
@click.argument("checkpoints", nargs=-1, metavar="[CHECKPOINT ...]")
@click.option("--layers", default="*", show_default=True, metavar="GLOB",
              help="fnmatch pattern on layer (module) names, e.g. 'layer1.*'.")
@click.option("--stats", "stat_names", metavar="LIST",
              help="Comma-separated statistics to show (default: all; see the description).")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
              show_default=True,
              help="table: one row per (checkpoint, epoch, layer) for people; csv/json: the long form.")
@click.option("--output", "-o", type=click.Path(dir_okay=False),
              help="Write here instead of stdout (format from the suffix), with meta.json beside it.")
@click.option("--quiet", "-q", is_flag=True, help="No logs on stderr.")
@click.pass_context
def history_cmd(ctx, checkpoints, layers, stat_names, fmt, output, quiet):
    """Kernel statistics recorded during training (the run's kernel_stats.csv), per epoch.

    CHECKPOINT: checkpoint (run) folders, or folders of them (default: the bundled checkpoint).
    Statistics per layer: mass3/5/9_mean and _std (Eq. 6 at s = 3, 5, 9), k50/k90_mean and
    _median (smallest window holding 50/90 % of a kernel's mass), sigma_x/sigma_y_median and
    sigma_ratio_mean (successful Gaussian fits), gauss_ok (their fraction), gauss_n, n_kernels.
    Step 0 is the initialisation. Columns (csv/json): checkpoint, epoch, step, layer, stage, stat,
    value.
    """
    import fnmatch

    from ..analysis.stats import FILE_NAME, STATS, read_kernel_stats

    fmt = _output_format(ctx, fmt, output, ("table", "csv", "json"))
    wanted = [s.strip() for s in stat_names.split(",") if s.strip()] if stat_names else list(STATS)
    unknown = [s for s in wanted if s not in STATS]
    if unknown or not wanted:
        raise SelectionError(f"--stats: unknown statistic {unknown[0] if unknown else stat_names!r}; "
                             f"choose from {', '.join(STATS)}")
    run = Run("history", (), layers, False, "cpu", quiet, dict(stats=wanted))  # targets: below
    targets = []  # (label, path, is a finished checkpoint)
    for c in checkpoints or (None,):
        p = None if c is None else Path(c)
        if p is not None and p.is_dir() and (p / FILE_NAME).is_file() and not (p / CONFIG_NAME).is_file():
            targets.append((p.name, p, False))  # a run in progress: statistics, no checkpoint yet
        else:
            targets += [(label, path, True) for label, path in find_checkpoints(() if c is None else (c,))]
    frames = []
    for label, path, finished in targets:
        folder = Path(path) if path is not None else DEFAULT_CHECKPOINT
        if finished:
            load_checkpoint(folder)  # a clear error for anything that is not a checkpoint
        stats_file = (folder if folder.is_dir() else folder.parent) / FILE_NAME
        if not stats_file.is_file():
            raise NiffError(f"{label}: no {FILE_NAME} (trained before kernel statistics were "
                            "recorded, or with --no-kernel-stats)")
        try:
            df = read_kernel_stats(stats_file)
        except (ValueError, pd.errors.ParserError) as exc:
            raise NiffError(f"{stats_file}: {' '.join(str(exc).split())}") from None
        run.provenance.append(dict(label=label, path=str(stats_file), sha256=file_sha256(stats_file)))
        keep = df["layer"].map(lambda n: fnmatch.fnmatchcase(n, layers)) & df["stat"].isin(wanted)
        if not keep.any():
            raise SelectionError(f"{label}: no layer matches {layers!r}; available layers: "
                                 f"{', '.join(dict.fromkeys(df['layer']))}")
        frames.append(_with_checkpoint(label, df[keep]))
    df = pd.concat(frames, ignore_index=True)
    if fmt == "table":
        keys = ["checkpoint", "epoch", "step", "layer"]
        df = df.pivot_table(index=keys, columns="stat", values="value", sort=False).reset_index()
        df = df[keys + [s for s in wanted if s in df.columns]].round(3)
        df.columns.name = None
    _finish(run, render_frame(df, fmt), output, len(df))


@main.command("erf")
@click.argument("checkpoints", nargs=-1, metavar="[CHECKPOINT ...]")
@click.option("--layers", default=None, metavar="GLOB",
              help="Modules whose outputs are differentiated (fnmatch, comma list; default: every stage, "
                   "e.g. layer1 … layer4).")
@click.option("--images", "n_images", type=int, default=50, show_default=True, callback=positive_int,
              help="Test images accumulated.")
@click.option("--dataset", type=click.Choice(["fashion-mnist", "cifar10", "imagefolder"]),
              help="Default: the checkpoint's own (its config records it).")
@click.option("--data-dir", type=click.Path(), help="Dataset folder (Fashion-MNIST defaults to the Debian package's).")
@click.option("--thresholds", default="20,30,50,99", show_default=True, help="Contribution shares t (%).")
@click.option("--untrained", is_flag=True, help="Also measure each checkpoint's initialisation (label '<name>@init').")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True,
              help="table: side per stage and threshold; csv/json: the long form.")
@click.option("--output", "-o", type=click.Path(dir_okay=False),
              help="Write here instead of stdout (format from the suffix), with meta.json beside it.")
@device_option()
@factory_option()
@click.option("--quiet", "-q", is_flag=True, help="No logs on stderr.")
@click.pass_context
def erf_cmd(ctx, checkpoints, layers, n_images, dataset, data_dir, thresholds, untrained, fmt, output,
            device, quiet):
    """Effective receptive field per stage: gradient of the output's central pixel w.r.t. the input.

    CHECKPOINT: checkpoint folders, or folders of them (default: the bundled checkpoint). Per
    stage and threshold t: the side of the smallest centred square holding t % of the summed
    |gradient| over --images test images, and its share of the input area (RepLKNet's
    high-contribution area ratio). Columns: checkpoint, stage, threshold, side, area_ratio.
    """
    from ..analysis.erf import dataset_images
    from ..checkpoint import load_initial

    fmt = _output_format(ctx, fmt, output, ("table", "csv", "json"))
    try:
        ts = [float(t) for t in thresholds.split(",") if t.strip()]
    except ValueError:
        raise SelectionError(f"--thresholds takes comma-separated percentages, got {thresholds!r}") from None
    if not ts or any(not 0 < t <= 100 for t in ts):
        raise SelectionError(f"--thresholds must lie in (0, 100], got {thresholds!r}")
    pattern = None if layers is None else [p.strip() for p in layers.split(",") if p.strip()]
    run = Run("erf", checkpoints, "*", False, device, quiet,
              dict(layers=layers, images=n_images, dataset=dataset, thresholds=ts, untrained=untrained))
    frames, images = [], {}
    for label, path in run.targets:
        model = load_checkpoint(path, device=str(run.device), factory=current_factory())
        meta = model.niff_checkpoint
        run.provenance.append(dict(label=label, path=meta["path"], sha256=meta["sha256"]))
        name = dataset or meta.get("dataset")
        if name is None:
            raise NiffError(f"{label}: the checkpoint records no dataset; pass --dataset")
        size = (meta.get("model_kwargs") or {}).get("input_size") or 224
        key = (name, str(data_dir), str(size))
        if key not in images:
            images[key] = dataset_images(name, n_images, data_dir,
                                         image_size=size[0] if isinstance(size, list) else int(size))
        todo = [(label, model)]
        if untrained:
            init = load_initial(path, device=str(run.device))
            if init is None:
                run.warn(f"{label}: no initialisation known (not trained by this toolkit); --untrained skipped")
            else:
                todo.append((f"{label}@init", init))
        for lab, m in todo:
            t0 = time.perf_counter()
            try:
                maps = effective_receptive_fields(m, images[key], layers=pattern)
            except NiffError as exc:
                raise type(exc)(f"{label}: {exc}") from None
            run.log(f"{lab}: ERF of {len(maps)} stages from {len(images[key])} images in "
                    f"{time.perf_counter() - t0:.1f} s")
            frames.append(_with_checkpoint(lab, erf_area_ratios(maps, ts)))
    df = pd.concat(frames, ignore_index=True)
    if fmt == "table":
        df = df.pivot_table(index=["checkpoint", "stage"], columns="threshold", values="side",
                            sort=False).reset_index()
        df.columns = [f"side_{c:g}%" if isinstance(c, float) else c for c in df.columns]
    _finish(run, render_frame(df, fmt), output, len(df))
