"""``niff-analyze claims``: the paper's kernel claims, measured on one or more checkpoints."""

from __future__ import annotations

import click

from . import main
from .common import Command, bootstrap_option, measure_option, output_format, render_frame, result_options


@main.command("claims")
@click.argument("checkpoints", nargs=-1, metavar="[CHECKPOINT ...]")
@measure_option(
    default="both", what=" Default both: a claim that holds under one measure and not the other shows both rows."
)
@bootstrap_option()
@click.option(
    "--untrained",
    is_flag=True,
    help="Also measure each checkpoint's initialisation as a checkpoint of its own (label "
    "'<name>@init'); its values are the init column of the checkpoint's rows anyway.",
)
@click.option(
    "--per-seed",
    is_flag=True,
    help="With runs of one recipe from several seeds: also show each run, not only their mean.",
)
@result_options("table: for people (value [lo, hi]); csv/json: one row object per claim, stage, measure and statistic.")
@click.pass_context
def claims_cmd(ctx, checkpoints, measure, resamples, untrained, per_seed, fmt, output, device, quiet):
    """The paper's claims about learned kernel sizes (§5, Fig. 7, App. A), measured.

    CHECKPOINT: checkpoint folders or files, or folders of them, or a sweep folder (default:
    the bundled checkpoint). One row per claim, stage, measure and statistic: the value measured
    on every NIFF layer (a baseline's plain convolutions), its seeded percentile-bootstrap 95 %
    interval over the stage's kernels (lo, hi; --bootstrap), the same statistic for a delta
    kernel, for seeded white noise on the same maps and for the initialisation (delta, noise,
    init), the criterion that makes the paper's words measurable and the verdict: agrees,
    disagrees, borderline (the interval straddles the criterion), not testable (no kernel could
    exceed the window: it holds by construction), no data. Stages are named by their feature-map
    size (32×32, 16×16, …) for NIFF models and baselines alike; the layers column names their
    modules. The criteria and the paper's sentences they read are in
    niff_analysis.analysis.claims.

    Checkpoints of one recipe that differ only in their seed (train_config.json) are pooled:
    value = the mean over seeds, lo/hi = its 95 % t-interval across seeds, n_seeds; --per-seed
    keeps each run's rows too. Columns: checkpoint, claim, stage, layers, measure, statistic,
    value, lo, hi, delta, noise, init, criterion, verdict (+ n_seeds).
    """
    from ..tables import Claims

    fmt = output_format(ctx, fmt, output, ("table", "csv", "json"))
    cmd = Command(
        "claims",
        checkpoints,
        dict(untrained=untrained, measure=measure, bootstrap=resamples, per_seed=per_seed),
        output,
        quiet,
        device,
    )
    df = cmd.run(
        Claims(measure=measure, resamples=resamples, untrained=untrained, per_seed=per_seed, table=fmt == "table"),
        log_selection=False,
    )
    cmd.finish(render_frame(df, fmt), len(df))
