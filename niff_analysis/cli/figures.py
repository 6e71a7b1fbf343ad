"""``niff-analyze figures``: every paper figure (SPEC §5) of one or more checkpoints."""

from __future__ import annotations

import time

import click

from ..errors import SelectionError
from . import main
from .common import (
    COST_SIZES,
    current_factory,
    device_option,
    factory_option,
    measure_option,
    positive_int,
    strict_option,
)
from .common import FIGURE_FORMATS as FORMATS


def _csv_list(value: str, what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise SelectionError(f"{what} is empty")
    return items


def _sizes(value: str) -> list[int]:
    if value.strip().lower() == "none":
        return []
    try:
        sizes = [int(v) for v in _csv_list(value, "--cost-sizes")]
    except ValueError:
        raise SelectionError(f"--cost-sizes takes comma-separated integers or 'none', got {value!r}") from None
    if any(s < 2 for s in sizes):
        raise SelectionError(f"--cost-sizes must be at least 2, got {value!r}")
    return sizes


@main.command("figures")
@click.argument("checkpoints", nargs=-1)
@click.option(
    "--output", "-o", "out", type=click.Path(file_okay=False), metavar="DIR", help="Output directory (required)."
)
# The old spelling, kept for Makefiles and scripts; hidden so that help shows the one the other
# commands use.
@click.option("--out", "out_old", type=click.Path(file_okay=False), hidden=True)
@click.option(
    "--layers", default="*", show_default=True, help="fnmatch glob on layer names (comma-separated for several)."
)
@device_option()
@factory_option()
@click.option(
    "--format",
    "formats",
    default="pdf,png",
    show_default=True,
    help=f"Comma-separated figure formats ({', '.join(FORMATS)}).",
)
@click.option(
    "--max-kernels",
    type=int,
    default=1024,
    show_default=True,
    callback=positive_int,
    help="Analyse at most this many kernels per layer (evenly spaced sample).",
)
@click.option(
    "--cost-sizes",
    default=",".join(map(str, COST_SIZES)),
    show_default=True,
    help="Feature-map sizes of the cost figure, or 'none' to skip it.",
)
@click.option("--no-timing", is_flag=True, help="Cost figure from FLOPs only, no timed runs.")
@click.option(
    "--erf-images",
    type=int,
    default=50,
    show_default=True,
    help="Test images of each checkpoint's dataset for the receptive-field figure (0: skip it).",
)
@click.option("--data-dir", type=click.Path(), help="That dataset's folder (Fashion-MNIST: the Debian package's).")
@measure_option(
    what=" both: the mass-ratio and history figures get one row of panels per measure (the "
    "effective-size figure shows l1); meta.json records it."
)
@click.option(
    "--erf-protocol",
    type=click.Choice(["luo", "replknet"]),
    default="luo",
    show_default=True,
    help="How the receptive fields are measured (see `niff-analyze erf --help`).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress messages (the file list still prints).")
@strict_option()
@click.pass_context
def figures_cmd(
    ctx,
    checkpoints,
    out,
    out_old,
    layers,
    device,
    formats,
    max_kernels,
    cost_sizes,
    no_timing,
    erf_images,
    data_dir,
    measure,
    erf_protocol,
    quiet,
) -> None:
    """Write every figure of CHECKPOINT(s) as PDF/PNG, plus the CSV tables they were drawn from.

    No CHECKPOINT means the bundled default; several are compared in the same figures (a
    checkpoint without NIFF layers, such as a plain baseline, is analysed through its k×k
    convolutions). Prints the paths written, one per line.
    """
    from ..pipeline import analyse, discover, refuse_output_in_inputs
    from ..plotting.report import check_output_folder, write_figures

    if out is not None and out_old is not None and out != out_old:
        raise click.UsageError(f"-o/--output {out} and --out {out_old} disagree; give one (--out is the old name)")
    spelled = "--output" if out is not None else "--out"  # errors name the option as it was typed
    out = out if out is not None else out_old
    if out is None:
        raise click.UsageError("Missing option '-o' / '--output' (the output directory).")
    fmts = _csv_list(formats.lower(), "--format")
    bad = [f for f in fmts if f not in FORMATS]
    if bad:
        raise SelectionError(f"unknown --format {', '.join(bad)}; choose from {', '.join(FORMATS)}")
    t0 = time.perf_counter()

    def progress(msg: str) -> None:
        if not quiet:
            click.echo(f"[{time.perf_counter() - t0:5.1f}s] {msg}", err=True)

    check_output_folder(out)  # before any analysis: a bad target fails in a second, not after minutes
    found = discover(list(checkpoints) or [None])
    refuse_output_in_inputs(out, found.inputs, spelled)
    data = analyse(
        checkpoints,
        layers=_csv_list(layers, "--layers"),
        device=device,
        max_kernels=max_kernels,
        cost_sizes=_sizes(cost_sizes),
        measure_cost=not no_timing,
        progress=progress,
        factory=current_factory(),
        erf_images=max(0, erf_images),
        data_dir=data_dir,
        measure=measure,
        erf_protocol=erf_protocol,
        strict=bool(ctx.meta.get("niff_strict")),
        found=found,
    )
    for note in data.notes:
        click.echo(f"{'warning' if note.startswith('skipped ') else 'note'}: {note}", err=True)
    paths = write_figures(data, out, formats=fmts, progress=progress)
    for p in paths:
        click.echo(str(p))
    progress(f"wrote {len(paths)} files to {out}")
