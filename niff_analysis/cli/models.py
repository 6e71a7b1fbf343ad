"""``niff-analyze models`` and ``niff-analyze describe``."""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import os

import click

from ..errors import NiffError
from ..runs import unfinished_reason
from . import main
from .common import FORMATS, MODELS, STEMS, factory_option, format_option, positive_int, render_frame

# torch, pandas and the registry are imported where a command runs: `models` lists the names of
# common.MODELS (checked against the registry by the tests) and starts in a fraction of a second.


def _render_rows(rows: list[dict], fmt: str) -> str:
    """Rows of strings as :func:`.common.render_frame` prints a DataFrame of them (the table
    right-aligned as pandas aligns text), without importing pandas."""
    if fmt == "json":
        return json.dumps(rows, indent=1) + "\n"
    cols = list(rows[0])
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    lines = [" ".join(c.rjust(widths[c]) for c in cols)]
    lines += [" ".join(str(r[c]).rjust(widths[c]) for c in cols) for r in rows]
    return "\n".join(lines) + "\n"


@main.command("models")
@click.argument("pattern", default="*")
@format_option(choices=FORMATS)
def models_cmd(pattern: str, fmt: str) -> None:
    """List registered models (PATTERN: fnmatch wildcard, e.g. 'resnet*_niff').

    Columns: name, architecture, variant (baseline, sep, niff, niff_full).
    """
    names = sorted(n for n in MODELS if fnmatch.fnmatchcase(n, pattern))
    if not names:
        raise click.UsageError(f"no model matches {pattern!r}; try 'niff-analyze models'")
    rows = [dict(name=n, architecture=MODELS[n][0], variant=MODELS[n][1]) for n in names]
    click.echo(_render_rows(rows, fmt), nl=False)


def describe_target(target, num_classes, in_chans, input_size, stem) -> dict:
    """Structure of a registered model or a checkpoint, without computing anything expensive: a
    model name is built from the registry, a checkpoint goes through the runner
    (:class:`~niff_analysis.tables.Describe`).

    A run without its final checkpoint (in progress, interrupted, diverged) is described by its
    last saved state, and a checkpoint whose weights hold NaN/Inf is described all the same,
    each with a warning (as a kernel_stats.csv that cannot be read).
    """
    from ..checkpoint import bundled_checkpoints
    from ..runs import last_saved, run_status
    from ..tables import Describe, describe_registered
    from .common import Command

    given = {
        k: v
        for k, v in dict(num_classes=num_classes, in_chans=in_chans, input_size=input_size, stem=stem).items()
        if v is not None
    }
    if not (
        target is None
        or os.path.lexists(target)
        or target.endswith((".safetensors", ".pt", ".pth"))
        or "/" in target
        or target in bundled_checkpoints()
    ):
        return describe_registered(target, **given)
    if given:  # a checkpoint records its own: an option here would be silently ignored
        option = "--" + next(iter(given)).replace("_", "-")
        raise NiffError(
            f"{option} applies to registered model names; a checkpoint records its own "
            f"(niff-analyze describe {target or ''} shows them)"
        )
    path, unfinished = target, target is not None and os.path.isdir(target) and unfinished_reason(target)
    if unfinished:
        path = str(last_saved(target))
    cmd = Command("describe", [path] if path is not None else [], {})
    if unfinished:
        cmd.warn(f"{target}: the run has no final checkpoint ({run_status(target)}); describing {path}")
    found = cmd.found(warn_skipped=False)  # a folder of several: one line, no warnings first
    if len(found.checkpoints) > 1:
        names = ", ".join(label for label, _ in found.checkpoints[:3]) + (", ..." if len(found.checkpoints) > 3 else "")
        raise NiffError(f"{target} is a folder of {len(found.checkpoints)} checkpoints ({names}); describe one of them")

    def diverged(label: str, exc: NiffError) -> None:
        cmd.warn(f"{exc} (training diverged?); described all the same")

    (info,) = cmd.run(Describe(), non_finite=diverged).values()
    return info


def _epochs_line(stats: dict, every: bool) -> str:
    """The kernel statistics of :func:`describe_target` in one line: their count and first and
    last epoch (and the spacing, where regular), or with ``every`` each epoch."""
    epochs = stats["epochs"]
    text = f"{stats['records']} records"
    if every:
        return f"{text} at epochs {', '.join(f'{e:g}' for e in epochs)} (niff-analyze history)"
    if epochs:
        text += f", epoch {epochs[0]:g} to {epochs[-1]:g}"
        gaps = [b - a for a, b in zip(epochs, epochs[1:])]
        if len(gaps) > 1 and gaps[0] > 0 and all(abs(g - gaps[0]) <= 1e-3 for g in gaps):
            text += f", every {gaps[0]:g}"
    return f"{text} (niff-analyze history; --all-epochs lists them)"


@main.command("describe")
@click.argument("target", required=False)
@click.option("--num-classes", type=int, callback=positive_int, help="Classifier outputs.")
@click.option("--in-chans", type=int, callback=positive_int, help="Input channels.")
@click.option("--input-size", type=int, callback=positive_int, help="Input height = width.")
@click.option("--stem", type=click.Choice(STEMS), help="Stem variant.")
@format_option(choices=("table", "json"))
@click.option(
    "--all-epochs",
    is_flag=True,
    help="Table: list every epoch at which kernel statistics were recorded (by default their "
    "count, first and last; json always lists them).",
)
@factory_option()
def describe_cmd(target, num_classes, in_chans, input_size, stem, fmt, all_epochs) -> None:
    """Structure of TARGET: a registered model name or a checkpoint (default: bundled).

    TARGET may also name a bundled checkpoint (resnet18_niff_fmnist, resnet18_fmnist) from any
    folder, or a run without its final checkpoint (its last saved state is described, with a
    warning). --num-classes, --in-chans, --input-size and --stem apply to model names only.
    """
    import pandas as pd

    info = describe_target(target, num_classes, in_chans, input_size, stem)
    if fmt == "json":
        click.echo(json.dumps(info, indent=1))
        return
    head = {
        k: v for k, v in info.items() if k not in ("layers", "convs", "kept", "model_kwargs", "recipe", "kernel_stats")
    }
    for k, v in head.items():
        click.echo(f"{k:>12}: {v}")
    click.echo(f"{'model_kwargs':>12}: {json.dumps(info['model_kwargs'])}")
    if "recipe" in info:
        click.echo(f"{'recipe':>12}: {json.dumps(info['recipe'])}")
    if "kernel_stats" in info:
        click.echo(f"{'kernel_stats':>12}: {_epochs_line(info['kernel_stats'], all_epochs)}")
    fmap = lambda f: "x".join(map(str, f)) if f else "-"  # noqa: E731
    if info["layers"]:
        df = pd.DataFrame(info["layers"])
        df["fmap"] = df["fmap"].map(fmap)
        click.echo(render_frame(df, "table"), nl=False)
    else:
        click.echo("(no NIFF layers)")
    convs = pd.DataFrame(info["convs"])
    if len(convs):
        pointwise = convs["kernel"] == "1x1"
        spatial = convs[~pointwise].fillna({"reason": ""})
        when = "with --include-conv" if info["layers"] else "by every analysis command"
        click.echo(
            f"plain convolutions: {int(spatial['analysed'].sum())} of {len(convs)} analysed {when}"
            f" ({int(pointwise.sum())} 1x1 convs have no spatial extent)"
        )
        if len(spatial):
            spatial = spatial.assign(
                fmap=spatial["fmap"].map(fmap), analysed=spatial["analysed"].map({True: "yes", False: "no"})
            )
            click.echo(render_frame(spatial, "table"), nl=False)
