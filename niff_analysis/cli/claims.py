"""``niff-analyze claims``: the paper's kernel claims, measured on one or more checkpoints."""

from __future__ import annotations

import time

import click
import pandas as pd

from ..analysis.claims import paper_claims, pool_seeds
from ..analysis.schema import with_checkpoint
from ..analysis.uncertainty import with_interval_text
from ..errors import NiffError
from ..pipeline import initial_kernels, seed_groups, select_kernels
from . import main
from .analysis import Run, _measures, _output_format
from .common import bootstrap_option, measure_option, render_frame, result_options


@main.command("claims")
@click.argument("checkpoints", nargs=-1, metavar="[CHECKPOINT ...]")
@measure_option(default="both", what=" Default both: a claim that holds under one measure and not the other "
                                      "shows both rows.")
@bootstrap_option()
@click.option("--untrained", is_flag=True,
              help="Also measure each checkpoint's initialisation as a checkpoint of its own (label "
                   "'<name>@init'); its values are the init column of the checkpoint's rows anyway.")
@click.option("--per-seed", is_flag=True,
              help="With runs of one recipe from several seeds: also show each run, not only their mean.")
@result_options("table: for people (value [lo, hi]); csv/json: one row object per claim, stage, measure "
                "and statistic.")
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
    fmt = _output_format(ctx, fmt, output, ("table", "csv", "json"))
    run = Run("claims", checkpoints, "*", False, device, quiet,
              dict(untrained=untrained, measure=measure, bootstrap=resamples, per_seed=per_seed), output)
    measures = _measures(measure)
    tables: dict[str, pd.DataFrame] = {}
    trained: dict[str, object] = {}
    for ck in run.checkpoints_loaded():
        try:
            kernels = select_kernels(ck).kernels
        except NiffError as exc:  # a checkpoint of a folder whose kernels cannot be analysed is skipped
            if not run.tolerates(ck):
                raise
            run.provenance.pop()
            run.skip(ck.label, exc)
            continue
        trained[ck.label] = ck.meta.epochs
        init = initial_kernels(ck, kernels, device=str(run.device))
        if init is None:
            run.warn(f"{ck.label}: no initialisation known (not trained by this toolkit): no init column"
                     + ("; --untrained skipped" if untrained else ""))
        todo = [(ck.label, kernels, init)]
        if untrained and init is not None:
            todo.append((f"{ck.label}@init", init, None))
        for label, lks, ref in todo:
            t0 = time.perf_counter()
            tables[label] = paper_claims(lks, init=ref, measures=measures, resamples=resamples,
                                         device=str(run.device))
            run.log(f"{label}: {len(tables[label])} claim rows in {time.perf_counter() - t0:.1f} s")
    if not tables:
        raise run.none_left()
    groups = seed_groups([(label, path) for label, path in run.found().checkpoints if label in trained], trained)
    grouped = {m for g in groups for m in g.members}
    frames = [with_checkpoint(t, label) for label, t in tables.items()
              if per_seed or label.removesuffix("@init") not in grouped]
    for g in groups:
        frames.append(with_checkpoint(pool_seeds([tables[m] for m in g.members]), g.label))
        run.log(f"{g.label}: mean over {len(g.members)} runs (seeds {', '.join(map(str, g.seeds))})")
        inits = [tables[f"{m}@init"] for m in g.members if f"{m}@init" in tables]
        if inits:
            frames.append(with_checkpoint(pool_seeds(inits), f"{g.label}@init"))
    df = pd.concat(frames, ignore_index=True)
    if "n_seeds" in df.columns:
        df["n_seeds"] = df["n_seeds"].fillna(1).astype(int)
    if fmt == "table":
        df = with_interval_text(df.rename(columns={"lo": "value_lo", "hi": "value_hi"}), digits=3)
        for col in ("delta", "noise", "init"):
            df[col] = df[col].map(lambda v: f"{v:.3g}")
    run.finish(render_frame(df, fmt), output, len(df))
