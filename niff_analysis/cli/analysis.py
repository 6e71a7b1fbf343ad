"""``niff-analyze kernels|mass|pca|gaussian|history``: the analysis engine on one or more checkpoints.

Every command takes CHECKPOINT arguments (none: the bundled default; a folder of checkpoint
folders: all of them) and prints one tidy table whose first column is ``checkpoint``. Data goes
to stdout or ``--output``; logs and progress go to stderr (``--quiet`` silences them). Beside an
``--output`` file, ``meta.json`` records provenance (toolkit version, checkpoint hashes,
parameters) under the output's file name, so several outputs can share a folder: each command
updates its own entry under a lock on the folder, so analyses run at once into the same folder
keep every entry. Warnings (e.g. kernels without mass) always go to stderr, even with ``--quiet``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import click

from ..errors import NiffError, SelectionError
from ..io import check_writable, file_sha256
from ..provenance import META_NAME, write_output
from . import main
from .common import (MEASURES, bootstrap_option, current_factory, device_option, factory_option, measure_option,
                     positive_int, render_frame, strict_option)

if TYPE_CHECKING:
    from ..pipeline import Found

# The engine (torch, pandas) is imported where a command runs, not here: every --help starts
# without it.

SUFFIX_FORMATS = {".csv": "csv", ".json": "json", ".txt": "table", ".npz": "npz"}


# --------------------------------------------------------------------------- checkpoints
class Run:
    """One analysis command: its options, logging, and the provenance of what it read.

    The checkpoints are found once (:func:`~niff_analysis.pipeline.discover`): entries of a
    folder that are no checkpoints are reported, and so is each checkpoint of a folder that
    cannot be analysed, which is skipped (``--strict``: the command stops). ``output`` is
    checked to lie outside every input before anything is computed.
    """

    def __init__(self, command: str, checkpoints, layers: str, include_conv: bool, device: str,
                 quiet: bool, params: dict, output: Optional[str] = None):
        from ..device import resolve_device

        self.command, self.checkpoints, self.include_conv, self.quiet = command, checkpoints, include_conv, quiet
        # --layers 'a,b' (comma list) as in figures
        self.layers = [p.strip() for p in layers.split(",") if p.strip()] or ["*"]
        self.device = resolve_device(device)
        self.params = dict(params, layers=layers, include_conv=include_conv, device=device)
        self.provenance: list[dict] = []
        self.loaded: dict = {}  # label → Checkpoint, of the kernels handed out
        self.output = output
        self.strict = bool(click.get_current_context().meta.get("niff_strict"))
        self._found: Optional[Found] = None
        self.skipped: list[str] = []

    def log(self, msg: str) -> None:
        if not self.quiet:
            click.echo(msg, err=True)

    def warn(self, msg: str) -> None:
        """A warning: printed even with ``--quiet`` (results that hold NaN are never silent)."""
        click.echo(f"warning: {msg}", err=True)

    def found(self, runs_in_progress: bool = False) -> Found:
        """The checkpoints of the command line, found once; what was skipped is warned about, and
        an ``--output`` inside any input is refused here, before any work."""
        from ..pipeline import discover, refuse_output_in_inputs

        if self._found is None:
            self._found = discover(tuple(self.checkpoints), runs_in_progress=runs_in_progress)
            if self.output:
                refuse_output_in_inputs(self.output, self._found.inputs)
            for line in self._found.skipped_lines():
                self.warn(line)
        return self._found

    def skip(self, label: str, exc: Exception) -> None:
        """Skip a checkpoint of a folder that cannot be analysed, with a warning."""
        self.skipped.append(label)
        self.warn(f"skipped {label}: {exc}")

    def none_left(self) -> NiffError:
        return NiffError(f"no checkpoint could be analysed (skipped: {', '.join(self.skipped)})")

    def checkpoints_loaded(self, found=None):
        """Each checkpoint (:func:`~niff_analysis.pipeline.load_checkpoints`), its provenance kept."""
        from ..pipeline import load_checkpoints

        n = 0
        for ck in load_checkpoints(device=str(self.device), factory=current_factory(),
                                   found=found or self.found(), strict=self.strict, skip=self.skip):
            self.provenance.append(ck.provenance())
            n += 1
            yield ck
        if not n:
            raise self.none_left()

    def tolerates(self, ck) -> bool:
        return self.found().tolerates(ck.path, self.strict)

    def kernels(self, niff_only: Optional[str] = None) -> list[tuple[str, list]]:
        """(label, kernels) of every checkpoint (:func:`~niff_analysis.pipeline.select_kernels`)."""
        from tqdm import tqdm

        from ..pipeline import select_kernels

        max_kernels = click.get_current_context().meta.get("niff_max_kernels")
        if max_kernels:
            self.params["max_kernels"] = max_kernels
        out = []
        found = self.found()
        for ck in tqdm(self.checkpoints_loaded(found), desc="checkpoints", unit="ckpt", file=sys.stderr,
                       disable=self.quiet or len(found.checkpoints) < 2, leave=False):
            try:
                sel = select_kernels(ck, layers=self.layers, include_conv=self.include_conv,
                                     max_kernels=max_kernels, niff_only=niff_only)
            except NiffError as exc:
                if not self.tolerates(ck):
                    raise
                self.provenance.pop()
                self.skip(ck.label, exc)
                continue
            for note in sel.notes:
                self.log(f"note: {note}")
            self.log(sel.summary(max_kernels))
            self.loaded[sel.label] = ck
            out.append((sel.label, sel.kernels))
        if not out:
            raise self.none_left()
        return out

    def initial(self, label: str, kernels) -> Optional[list]:
        """The initialisation's kernels of the same layers (:func:`~niff_analysis.pipeline.initial_kernels`),
        or None with a note when none is known."""
        from ..pipeline import initial_kernels

        init = initial_kernels(self.loaded[label], kernels, layers=self.layers,
                               max_kernels=click.get_current_context().meta.get("niff_max_kernels"),
                               device=str(self.device))
        if init is None:
            self.log(f"note: {label}: no initialisation known (not trained by this toolkit): no init reference")
        return init

    def finish(self, content, output: Optional[str], rows: int) -> None:
        """Print ``content`` (text), or write it to ``output`` with its meta.json entry."""
        if not output:
            click.echo(content, nl=False)
            return
        path = write_output(output, content, self.command, self.params, self.provenance, rows)
        self.log(f"wrote {path} and {path.parent / META_NAME}")


def _output_format(ctx: click.Context, fmt: str, output: Optional[str], allowed: tuple[str, ...]) -> str:
    if not output:
        return fmt
    parent = Path(output).parent
    if parent.exists() and not parent.is_dir():
        raise NiffError(f"--output {output}: {parent} exists and is not a directory")
    if Path(output).is_dir():
        raise NiffError(f"--output {output}: is a directory; name a file in it")
    suffix = Path(output).suffix.lower()
    if suffix not in SUFFIX_FORMATS or SUFFIX_FORMATS[suffix] not in allowed:
        ok = ", ".join(s for s, f in SUFFIX_FORMATS.items() if f in allowed)
        raise click.UsageError(f"cannot tell the format of --output {output}; use a suffix of {ok}")
    chosen = SUFFIX_FORMATS[suffix]
    if ctx.get_parameter_source("fmt") == click.core.ParameterSource.COMMANDLINE and fmt != chosen:
        raise click.UsageError(f"--format {fmt} disagrees with the suffix of --output {output}")
    try:  # before any analysis: an unwritable target fails in a second, not after minutes
        check_writable(parent)
    except OSError as exc:
        raise NiffError(f"--output {output}: cannot write there ({exc.strerror or exc})") from None
    return chosen


def _write_npz(run: Run, output: str, arrays: dict) -> None:
    import numpy as np

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
            np.savez(f, **arrays)

    run.finish(save, output, len(arrays))


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
        strict_option(),
    ]):
        f = deco(f)
    return f


# --------------------------------------------------------------------------- commands
@main.command("kernels")
@analysis_options
@click.option("--responses", is_flag=True,
              help="With .npz output, also store each NIFF layer's raw frequency response W (the MLPs' "
                   "output, anti-Hermitian part included) as '<layer>@real' and '<layer>@imag'.")
@click.option("--view", type=click.Choice(["layers", "radial"]), default="layers", show_default=True,
              help="layers: one row per layer; radial: the radial profile of each NIFF layer's "
                   "frequency response that acts, |FFT(k)| (the Hermitian part of W), against "
                   "|f| / f_Nyquist (mean and quartiles over channels).")
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
    import pandas as pd

    from ..analysis import frequency_profile, kernel_table
    from ..analysis.schema import with_checkpoint

    fmt = _output_format(ctx, fmt, output, ("table", "csv", "json", "npz"))
    run = Run("kernels", checkpoints, layers, include_conv, device, quiet, dict(responses=responses), output)
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
        df = pd.concat([with_checkpoint(frequency_profile(lks), label) for label, lks in results],
                       ignore_index=True)
        if df.empty:
            raise SelectionError("--view radial needs NIFF layers (frequency responses); none selected")
        run.finish(render_frame(df.round(4) if fmt == "table" else df, fmt), output, len(df))
        return
    df = pd.concat([with_checkpoint(kernel_table(lks), label) for label, lks in results],
                   ignore_index=True)
    run.finish(render_frame(df, fmt), output, len(df))


def _measures(measure: str) -> tuple[str, ...]:
    return MEASURES if measure == "both" else (measure,)


@main.command("mass")
@analysis_options
@click.option("--view", type=click.Choice(["ratios", "summary", "sizes"]), default="ratios",
              show_default=True,
              help="ratios = one row per (layer, channel, window); summary = mean/std/n per layer and "
                   "window with its interval and the scale (delta, white noise, initialisation); "
                   "sizes = per kernel the smallest window holding 50/90/95 % of the mass. The table "
                   "format shows the summary for summary, one row per layer otherwise.")
@measure_option()
@bootstrap_option()
@click.pass_context
def mass_cmd(ctx, checkpoints, layers, include_conv, fmt, output, device, quiet, view, measure, resamples):
    """Kernel mass ratio (Eq. 6): share of |k| inside centred odd windows 1, 3, 5, … (full last).

    CHECKPOINT: checkpoint folders or .safetensors files, or folders of them (default: the
    bundled checkpoint); several are concatenated under a leading 'checkpoint' column.

    --measure energy uses k² instead of |k| (windows, sizes and everything else the same); every
    row names its measure. Works on baselines too (their plain convolutions, see
    --include-conv). Columns (ratios): checkpoint, measure, layer, stage, fmap_h, fmap_w,
    channel, window, mass_ratio. The summary adds, per layer and window, mean_lo/mean_hi (the
    mean's seeded percentile-bootstrap 95 % interval over kernels, --bootstrap) and the same
    mean for reference kernels on the layer's map: delta (a single pixel: 1), noise (512 i.i.d.
    white-noise kernels, seed 0; expected s²/(H·W)) and init (the initialisation: the run's
    init/ or the model rebuilt from its seed; empty when unknown). Every layer of the summary
    has rows at windows 1, 3, 5 and 9: one larger than the layer's kernel covers all of it and
    repeats the whole-kernel row (beyond_kernel=true). The per-layer table gives the intervals
    of its means as 'value [lo, hi]'.
    """
    import numpy as np
    import pandas as pd

    from ..analysis import effective_sizes, kernel_mass, mass_summary, mass_table
    from ..analysis.mass import massless_warning
    from ..analysis.references import mass_scale
    from ..analysis.schema import CHECKPOINT, FMAP_H, FMAP_W, LAYER, with_checkpoint
    from ..analysis.uncertainty import with_interval_text

    fmt = _output_format(ctx, fmt, output, ("table", "csv", "json"))
    run = Run("mass", checkpoints, layers, include_conv, device, quiet,
              dict(view=view, measure=measure, bootstrap=resamples), output)
    frames, scales = [], []
    for label, lks in run.kernels():
        t0, first = time.perf_counter(), len(frames)
        init = run.initial(label, lks) if view == "summary" else None
        for m in _measures(measure):
            frames.append(with_checkpoint(kernel_mass(lks, m), label))
            if view == "summary":
                scales.append(with_checkpoint(mass_scale(lks, m, init), label).assign(measure=m))
            for w in filter(None, [massless_warning(frames[-1])]):
                run.warn(f"{label}: {w}")
        run.log(f"{label}: {sum(len(f) for f in frames[first:])} mass ratios in {time.perf_counter() - t0:.2f} s")
    mass = pd.concat(frames, ignore_index=True)
    note = ""
    if view == "summary":
        df = mass_summary(mass, resamples)
        df = df.merge(pd.concat(scales, ignore_index=True), on=[CHECKPOINT, "measure", LAYER, "window"], how="left")
        if "init" not in df.columns:
            df["init"] = np.nan
        if fmt == "table":
            df = with_interval_text(df.drop(columns=["std"]).round(4), digits=3)
    elif fmt == "table":
        df = mass_table(mass, resamples)
        if (df[[FMAP_H, FMAP_W]].max(axis=1) < 9).any():
            note = ("(mass_wS of a layer whose kernels are smaller than S×S is that of the whole kernel, "
                    "1.0: the window covers all of it)\n")
        df = with_interval_text(df, digits=3)
    elif view == "sizes":
        df = effective_sizes(mass)
    else:
        df = mass
    run.finish(render_frame(df, fmt) + note, output, len(df))


@main.command("pca")
@analysis_options
@click.option("--components", "-k", type=int, default=6, show_default=True, callback=positive_int,
              help="Principal components per layer.")
@click.option("--weights", is_flag=True,
              help="PCA of the frequency-domain multiplication weights (real and imaginary parts "
                   "separately) instead of the spatial kernels; NIFF layers only.")
@click.option("--response", type=click.Choice(["raw", "hermitian"]), default="raw", show_default=True,
              help="With --weights: raw = W as the MLPs output it, as the authors analysed it (its "
                   "anti-Hermitian part never acts on a real input); hermitian = the part that acts, "
                   "(W(f) + conj(W(-f)))/2, the DFT of the spatial kernel.")
@click.pass_context
def pca_cmd(ctx, checkpoints, layers, include_conv, fmt, output, device, quiet, components, weights, response):
    """PCA eigenkernels per layer: exact SVD, deterministic signs, explained-variance ratios.

    CHECKPOINT: checkpoint folders or .safetensors files, or folders of them (default: the
    bundled checkpoint); several are concatenated under a leading 'checkpoint' column.

    Works on baselines too (their plain convolutions), except --weights. Columns: checkpoint,
    layer, stage, fmap_h, fmap_w, [part, response,] component, explained_variance_ratio, … .
    --output FILE.npz stores the components (k×H×W per layer, '<layer>@real'/'@imag' with
    --weights) instead of the table.

    --weights (Appendix B.3) decomposes the raw MLP output W by default, as the authors did;
    --response hermitian decomposes the filter that acts instead.
    """
    import pandas as pd

    from ..analysis import pca_eigenkernels, pca_summary, weight_pca
    from ..analysis.pca import pca_warnings
    from ..analysis.schema import with_checkpoint

    fmt = _output_format(ctx, fmt, output, ("table", "csv", "json", "npz"))
    if response != "raw" and not weights:
        raise click.UsageError("--response applies to --weights only")
    run = Run("pca", checkpoints, layers, include_conv, device, quiet,
              dict(components=components, weights=weights, **({"response": response} if weights else {})), output)
    results = []
    for label, lks in run.kernels(niff_only="weight PCA (--weights)" if weights else None):
        t0 = time.perf_counter()
        res = weight_pca(lks, components, response=response) if weights else pca_eigenkernels(lks, components)
        results.append((label, res))
        run.log(f"{label}: PCA of {len(lks)} layers in {time.perf_counter() - t0:.2f} s")
        for w in pca_warnings(res.table, components):
            run.warn(f"{label}: {w}")
    if fmt == "npz":
        several = len(results) > 1
        arrays = {}
        for label, res in results:
            for key, comp in res.components.items():
                name = f"{key[0]}@{key[1]}" if isinstance(key, tuple) else key
                arrays[_key(label, name, several)] = comp
        _write_npz(run, output, arrays)
        return
    df = pd.concat([with_checkpoint(res.table, label) for label, res in results], ignore_index=True)
    if fmt == "table":
        df = pca_summary(df).round(4)
    run.finish(render_frame(df, fmt), output, len(df))


@main.command("gaussian")
@analysis_options
@click.option("--view", type=click.Choice(["fits", "summary"]), default="fits", show_default=True,
              help="csv/json content: fits = one row per kernel; summary = per layer.")
@click.option("--max-iter", type=int, default=200, show_default=True, callback=positive_int,
              help="Levenberg–Marquardt iterations at most.")
@bootstrap_option()
@click.pass_context
def gaussian_cmd(ctx, checkpoints, layers, include_conv, fmt, output, device, quiet, view, max_iter, resamples):
    """2-D Gaussian fit to |k| of every kernel (Levenberg–Marquardt, moment start).

    CHECKPOINT: checkpoint folders or .safetensors files, or folders of them (default: the
    bundled checkpoint); several are concatenated under a leading 'checkpoint' column.

    Works on baselines too (their plain convolutions). Columns (fits): checkpoint, layer, stage,
    fmap_h, fmap_w, channel, sigma_x, sigma_y, sigma_major, sigma_minor, theta, x0, y0,
    amplitude, offset, r2, success, status, sigma_ratio, iterations, sigma_x_moment,
    sigma_y_moment, censored. Failed fits are rows with success=false and a reason in status;
    an undersampled fit (σ < 0.4 px) is censored=true. The summary gives median, quartiles and
    mean ± std of the successful fits with n_ok, n_censored and n, the median moment σ of
    every kernel (the width of its peak by deweighted adaptive moments, which never needs the
    solver; NaN where a kernel has no peak above its median; it resolves σ from about 0.75 px up,
    errors on synthetic Gaussians in docs/gaussian_validation.md), and σx/σy three ways: the mean
    of per-kernel ratios (the paper's; a few large ratios pull it above 1 whichever way round it
    is taken), their median and their geometric mean. Every mean and median has its seeded
    percentile-bootstrap 95 % interval over kernels (<stat>_lo, <stat>_hi; --bootstrap). Fits do
    not depend on --measure: they fit |k|.
    """
    import pandas as pd

    from ..analysis import gaussian_fit, gaussian_summary
    from ..analysis.schema import with_checkpoint
    from ..analysis.uncertainty import with_interval_text

    fmt = _output_format(ctx, fmt, output, ("table", "csv", "json"))
    run = Run("gaussian", checkpoints, layers, include_conv, device, quiet,
              dict(view=view, max_iter=max_iter, bootstrap=resamples), output)
    frames = []
    for label, lks in run.kernels():
        t0 = time.perf_counter()
        fits = gaussian_fit(lks, device=run.device, max_iter=max_iter, progress=not quiet)
        run.log(f"{label}: {len(fits)} Gaussian fits, {int(fits['success'].sum())} ok, "
                f"in {time.perf_counter() - t0:.1f} s on the CPU")
        frames.append(with_checkpoint(fits, label))
    fits = pd.concat(frames, ignore_index=True)
    df = fits if fmt != "table" and view == "fits" else gaussian_summary(fits, resamples)
    if fmt == "table":  # for people: medians of the fits, the moment σ, and what they stand for
        keep = ["checkpoint", "layer", "fmap_h", "fmap_w", "sigma_x_median", "sigma_y_median",
                "sigma_ratio_mean", "sigma_ratio_median", "sigma_x_moment_median", "sigma_y_moment_median",
                "n_ok", "n_censored", "n"]
        keep = [k for c in keep for k in (c, f"{c}_lo", f"{c}_hi")]
        df = with_interval_text(df[[c for c in keep if c in df.columns]], digits=3)
    run.finish(render_frame(df, fmt), output, len(df))


@main.command("history")
@click.argument("checkpoints", nargs=-1, metavar="[CHECKPOINT ...]")
@click.option("--layers", default="*", show_default=True, metavar="GLOB",
              help="fnmatch pattern on layer (module) names, e.g. 'layer1.*'.")
@click.option("--stats", "stat_names", metavar="LIST",
              help="Comma-separated statistics to show (default: all; see the description).")
@measure_option(what=" Files recorded before the measure was (no measure column) hold l1 only.")
@click.option("--per-seed", is_flag=True,
              help="With runs of one recipe from several seeds: also show each run, not only their mean.")
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table",
              show_default=True,
              help="table: one row per (checkpoint, measure, epoch, layer) for people; csv/json: the long form.")
@click.option("--output", "-o", type=click.Path(dir_okay=False),
              help="Write here instead of stdout (format from the suffix), with meta.json beside it.")
@click.option("--quiet", "-q", is_flag=True, help="No logs on stderr.")
@strict_option()
@click.pass_context
def history_cmd(ctx, checkpoints, layers, stat_names, measure, per_seed, fmt, output, quiet):
    """Kernel statistics recorded during training (the run's kernel_stats.csv), per epoch.

    CHECKPOINT: checkpoint (run) folders, or folders of them, or a sweep folder (default: the
    bundled checkpoint); a run without its final checkpoint yet (in progress, interrupted,
    diverged) shows what it has recorded. Statistics per layer under the chosen --measure:
    mass1_mean (the centre pixel's share), mass3/5/9_mean and _std (Eq. 6 at s = 1, 3, 5, 9),
    k50/k90_mean and _median (smallest window holding 50/90 % of a kernel's mass); and, measure
    'any': sigma_x/sigma_y_median, sigma_ratio_mean and _median (successful Gaussian fits),
    gauss_ok (their fraction), gauss_n, n_kernels. Step 0 is the initialisation.

    Runs of one recipe that differ only in their seed (train_config.json) are aggregated: one
    row per epoch with the mean over seeds and its 95 % t-interval across seeds (lo, hi;
    n_seeds), under the runs' common name; --per-seed keeps the runs too. Columns (csv/json):
    checkpoint, epoch, step, layer, stage, measure, stat, value (+ n_seeds, lo, hi when runs
    were aggregated).
    """
    import fnmatch

    import pandas as pd

    from ..analysis.schema import CHECKPOINT, LAYER, with_checkpoint
    from ..analysis.stats import ANY, STATS, history_table
    from ..analysis.uncertainty import seed_interval, with_interval_text
    from ..pipeline import load_histories, seed_groups

    fmt = _output_format(ctx, fmt, output, ("table", "csv", "json"))
    wanted = [s.strip() for s in stat_names.split(",") if s.strip()] if stat_names else list(STATS)
    unknown = [s for s in wanted if s not in STATS]
    if unknown or not wanted:
        raise SelectionError(f"--stats: unknown statistic {unknown[0] if unknown else stat_names!r}; "
                             f"choose from {', '.join(STATS)}")
    run = Run("history", checkpoints, layers, False, "cpu", quiet,
              dict(stats=wanted, measure=measure, per_seed=per_seed), output)
    patterns = run.layers  # a comma list, as every command takes
    frames, folders = {}, []
    for label, path, df in load_histories(strict=run.strict, warn=run.warn, found=run.found(runs_in_progress=True)):
        run.provenance.append(dict(label=label, path=str(path), sha256=file_sha256(path)))
        in_layers = df[LAYER].map(lambda n: any(fnmatch.fnmatchcase(n, p) for p in patterns))
        if not in_layers.any():
            raise SelectionError(f"{label}: no layer matches {layers!r}; available layers: "
                                 f"{', '.join(dict.fromkeys(df[LAYER]))}")
        for m in _measures(measure):
            if not (df["measure"] == m).any():
                run.warn(f"{label}: no {m} statistics (recorded before kernel_stats.csv held both measures)")
        keep = in_layers & df["stat"].isin(wanted) & df["measure"].isin(list(_measures(measure)) + [ANY])
        frames[label] = with_checkpoint(df[keep], label)
        folders.append((label, path.parent))
    groups = seed_groups(folders)
    grouped = {m for g in groups for m in g.members}
    out = [f for label, f in frames.items() if per_seed or label not in grouped]
    ids = ["epoch", "step", LAYER, "stage", "measure", "stat"]
    for g in groups:
        pooled = pd.concat([frames[m] for m in g.members], ignore_index=True)
        rows = []
        for key, part in pooled.groupby(ids, sort=False, dropna=False):
            mean, lo, hi = seed_interval(part["value"])
            rows.append((g.label, *key, mean, len(part), lo, hi))
        out.append(pd.DataFrame(rows, columns=[CHECKPOINT, *ids, "value", "n_seeds", "lo", "hi"]))
        run.log(f"{g.label}: mean over {len(g.members)} runs (seeds {', '.join(map(str, g.seeds))})")
    df = pd.concat(out, ignore_index=True)
    if df.empty:
        raise SelectionError(f"no statistic {', '.join(wanted)} under measure {measure} in "
                             f"{', '.join(frames)}")
    if groups:
        df["n_seeds"] = df["n_seeds"].fillna(1).astype(int)
    if fmt == "table":
        df = history_table(df, wanted, measure).round(3)
        if groups:
            df = with_interval_text(df, digits=3)
    run.finish(render_frame(df, fmt), output, len(df))
