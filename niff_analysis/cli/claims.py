"""``niff-analyze claims``: the paper's kernel claims, measured on one or more checkpoints."""

from __future__ import annotations

import time

import click
import pandas as pd

from ..analysis.claims import paper_claims
from ..analysis.schema import with_checkpoint
from ..checkpoint import load_initial
from ..errors import NiffError
from ..pipeline import Checkpoint, select_kernels
from . import main
from .analysis import Run, _output_format
from .common import render_frame, result_options


@main.command("claims")
@click.argument("checkpoints", nargs=-1, metavar="[CHECKPOINT ...]")
@click.option("--untrained", is_flag=True,
              help="Also measure each checkpoint's initialisation (label '<name>@init').")
@result_options("table: for people; csv/json: one row object per claim, stage and statistic.")
@click.pass_context
def claims_cmd(ctx, checkpoints, untrained, fmt, output, device, quiet):
    """The paper's claims about learned kernel sizes (§5, Fig. 7, App. A), measured.

    CHECKPOINT: checkpoint folders or files, or folders of them (default: the bundled
    checkpoint). One row per claim, stage and statistic: the value measured on every NIFF
    layer (a baseline's plain convolutions), the criterion that makes the paper's words
    measurable (niff_analysis.analysis.claims) and whether it holds. Columns: checkpoint, claim,
    stage, statistic, value, criterion, agrees.
    """
    fmt = _output_format(ctx, fmt, output, ("table", "csv", "json"))
    run = Run("claims", checkpoints, "*", False, device, quiet, dict(untrained=untrained), output)
    frames = []
    for ck in run.checkpoints_loaded():
        try:
            sel = select_kernels(ck)
        except NiffError as exc:  # a checkpoint of a folder whose kernels cannot be analysed is skipped
            if not run.tolerates(ck):
                raise
            run.provenance.pop()
            run.skip(ck.label, exc)
            continue
        todo = [(ck.label, sel.kernels)]
        if untrained:
            init = load_initial(ck.path, device=str(run.device))
            if init is None:
                run.warn(f"{ck.label}: no initialisation known (not trained by this toolkit); --untrained skipped")
            else:
                todo.append((f"{ck.label}@init", select_kernels(Checkpoint(f"{ck.label}@init", ck.path, init)).kernels))
        for label, kernels in todo:
            t0 = time.perf_counter()
            table = paper_claims(kernels, device=str(run.device))
            run.log(f"{label}: {len(table)} claim rows in {time.perf_counter() - t0:.1f} s")
            frames.append(with_checkpoint(table, label))
    if not frames:
        raise run.none_left()
    df = pd.concat(frames, ignore_index=True)
    if fmt == "table":
        df = df.assign(value=df["value"].round(3))
    run.finish(render_frame(df, fmt), output, len(df))
