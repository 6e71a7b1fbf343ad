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

from collections.abc import Callable

import click

from . import main
from .common import (
    Command,
    bootstrap_option,
    device_option,
    factory_option,
    measure_option,
    output_format,
    positive_int,
    render_frame,
    strict_option,
)


# --------------------------------------------------------------------------- options
def _store_max_kernels(ctx, param, value):
    ctx.meta["niff_max_kernels"] = positive_int(ctx, param, value)
    return value


def analysis_options(f: Callable) -> Callable:
    """CHECKPOINT arguments and the options every analysis command shares."""
    for deco in reversed(
        [
            click.argument("checkpoints", nargs=-1, metavar="[CHECKPOINT ...]"),
            click.option(
                "--layers",
                default="*",
                show_default=True,
                metavar="GLOB",
                help="fnmatch pattern on layer (module) names, e.g. 'layer1.*'.",
            ),
            click.option(
                "--include-conv",
                is_flag=True,
                help="Also analyse plain stride-1 k×k convolutions (weights zero-embedded in "
                "their feature-map-sized grid, one kernel per (out, in) pair). A checkpoint "
                "without NIFF layers (a baseline) always uses them.",
            ),
            click.option(
                "--format",
                "fmt",
                type=click.Choice(["table", "csv", "json"]),
                default="table",
                show_default=True,
                help="table: per-layer summary for people; csv/json: the full tidy data "
                "(json: an array of row objects).",
            ),
            click.option(
                "--output",
                "-o",
                type=click.Path(dir_okay=False),
                help="Write here instead of stdout (format from the suffix: .csv, .json, "
                ".txt = table; .npz where the command says), with meta.json beside it.",
            ),
            device_option(),
            factory_option(),
            click.option(
                "--max-kernels",
                type=int,
                callback=_store_max_kernels,
                expose_value=False,
                metavar="N",
                help="Analyse at most N kernels per layer (evenly spaced over the channels, the same "
                "sample every run; recorded in meta.json) for a quick look at large layers.",
            ),
            click.option(
                "--quiet",
                "-q",
                is_flag=True,
                help="No logs or progress bars on stderr (warnings and errors still print).",
            ),
            strict_option(),
        ]
    ):
        f = deco(f)
    return f


# --------------------------------------------------------------------------- commands
@main.command("kernels")
@analysis_options
@click.option(
    "--responses",
    is_flag=True,
    help="With .npz output, also store each NIFF layer's raw frequency response W (the MLPs' "
    "output, anti-Hermitian part included) as '<layer>@real' and '<layer>@imag'.",
)
@click.option(
    "--view",
    type=click.Choice(["layers", "radial"]),
    default="layers",
    show_default=True,
    help="layers: one row per layer; radial: the radial profile of each NIFF layer's "
    "frequency response that acts, |FFT(k)| (the Hermitian part of W), against "
    "|f| / f_Nyquist (mean and quartiles over channels).",
)
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
    from ..tables import Kernels

    fmt = output_format(ctx, fmt, output, ("table", "csv", "json", "npz"))
    cmd = Command("kernels", checkpoints, dict(responses=responses), output, quiet, device, layers, include_conv)
    out = cmd.run(Kernels(view=view, arrays=fmt == "npz", responses=responses, table=fmt == "table"), progress=True)
    if fmt == "npz":
        cmd.write_npz(out)
        return
    cmd.finish(render_frame(out, fmt), len(out))


@main.command("mass")
@analysis_options
@click.option(
    "--view",
    type=click.Choice(["ratios", "summary", "sizes"]),
    default="ratios",
    show_default=True,
    help="ratios = one row per (layer, channel, window); summary = mean/std/n per layer and "
    "window with its interval and the scale (delta, white noise, initialisation); "
    "sizes = per kernel the smallest window holding 50/90/95 % of the mass. The table "
    "format shows the summary for summary, one row per layer otherwise.",
)
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
    from ..tables import Mass

    fmt = output_format(ctx, fmt, output, ("table", "csv", "json"))
    cmd = Command(
        "mass",
        checkpoints,
        dict(view=view, measure=measure, bootstrap=resamples),
        output,
        quiet,
        device,
        layers,
        include_conv,
    )
    df, note = cmd.run(Mass(view=view, measure=measure, resamples=resamples, table=fmt == "table"), progress=True)
    cmd.finish(render_frame(df, fmt) + note, len(df))


@main.command("pca")
@analysis_options
@click.option(
    "--components",
    "-k",
    type=int,
    default=6,
    show_default=True,
    callback=positive_int,
    help="Principal components per layer.",
)
@click.option(
    "--weights",
    is_flag=True,
    help="PCA of the frequency-domain multiplication weights (real and imaginary parts "
    "separately) instead of the spatial kernels; NIFF layers only.",
)
@click.option(
    "--response",
    type=click.Choice(["raw", "hermitian"]),
    default="raw",
    show_default=True,
    help="With --weights: raw = W as the MLPs output it, as the authors analysed it (its "
    "anti-Hermitian part never acts on a real input); hermitian = the part that acts, "
    "(W(f) + conj(W(-f)))/2, the DFT of the spatial kernel.",
)
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
    from ..tables import Pca

    fmt = output_format(ctx, fmt, output, ("table", "csv", "json", "npz"))
    if response != "raw" and not weights:
        raise click.UsageError("--response applies to --weights only")
    cmd = Command(
        "pca",
        checkpoints,
        dict(components=components, weights=weights, **({"response": response} if weights else {})),
        output,
        quiet,
        device,
        layers,
        include_conv,
    )
    out = cmd.run(
        Pca(components, weights=weights, response=response, arrays=fmt == "npz", table=fmt == "table"), progress=True
    )
    if fmt == "npz":
        cmd.write_npz(out)
        return
    cmd.finish(render_frame(out, fmt), len(out))


@main.command("gaussian")
@analysis_options
@click.option(
    "--view",
    type=click.Choice(["fits", "summary"]),
    default="fits",
    show_default=True,
    help="csv/json content: fits = one row per kernel; summary = per layer.",
)
@click.option(
    "--max-iter",
    type=int,
    default=200,
    show_default=True,
    callback=positive_int,
    help="Levenberg–Marquardt iterations at most.",
)
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
    from ..tables import Gaussian

    fmt = output_format(ctx, fmt, output, ("table", "csv", "json"))
    cmd = Command(
        "gaussian",
        checkpoints,
        dict(view=view, max_iter=max_iter, bootstrap=resamples),
        output,
        quiet,
        device,
        layers,
        include_conv,
    )
    df = cmd.run(
        Gaussian(view=view, max_iter=max_iter, resamples=resamples, progress=not quiet, table=fmt == "table"),
        progress=True,
    )
    cmd.finish(render_frame(df, fmt), len(df))


@main.command("history")
@click.argument("checkpoints", nargs=-1, metavar="[CHECKPOINT ...]")
@click.option(
    "--layers",
    default="*",
    show_default=True,
    metavar="GLOB",
    help="fnmatch pattern on layer (module) names, e.g. 'layer1.*'.",
)
@click.option(
    "--stats",
    "stat_names",
    metavar="LIST",
    help="Comma-separated statistics to show (default: all; see the description).",
)
@measure_option(what=" Files recorded before the measure was (no measure column) hold l1 only.")
@click.option(
    "--per-seed",
    is_flag=True,
    help="With runs of one recipe from several seeds: also show each run, not only their mean.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
    help="table: one row per (checkpoint, measure, epoch, layer) for people; csv/json: the long form.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False),
    help="Write here instead of stdout (format from the suffix), with meta.json beside it.",
)
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
    from ..tables import History

    fmt = output_format(ctx, fmt, output, ("table", "csv", "json"))
    history = History(
        stats=[s.strip() for s in stat_names.split(",") if s.strip()] if stat_names else None,
        measure=measure,
        per_seed=per_seed,
        layers_text=layers,
        stats_text=stat_names,
        table=fmt == "table",
    )
    cmd = Command(
        "history",
        checkpoints,
        dict(stats=history.stats, measure=measure, per_seed=per_seed),
        output,
        quiet,
        "cpu",
        layers,
    )
    df = cmd.run(history)
    cmd.finish(render_frame(df, fmt), len(df))
