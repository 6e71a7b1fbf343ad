"""``niff-analyze erf``: effective receptive fields per stage, trained and at initialisation."""

from __future__ import annotations

import click

from ..errors import SelectionError
from . import main
from .common import DATASETS, Command, output_format, positive_int, render_frame, result_options
from .common import ERF_PROTOCOLS as PROTOCOLS


@main.command("erf")
@click.argument("checkpoints", nargs=-1, metavar="[CHECKPOINT ...]")
@click.option(
    "--layers",
    default=None,
    metavar="GLOB",
    help="Modules whose outputs are differentiated (fnmatch, comma list; default: every stage, e.g. layer1 … layer4).",
)
@click.option(
    "--images",
    "n_images",
    type=int,
    default=50,
    show_default=True,
    callback=positive_int,
    help="Test images accumulated.",
)
@click.option(
    "--dataset",
    type=click.Choice(list(DATASETS)),
    help="Default: the checkpoint's own (its config records it).",
)
@click.option("--data-dir", type=click.Path(), help="Dataset folder (Fashion-MNIST defaults to the Debian package's).")
@click.option("--thresholds", default="20,30,50,99", show_default=True, help="Contribution shares t (%).")
@click.option("--untrained", is_flag=True, help="Also measure each checkpoint's initialisation (label '<name>@init').")
@click.option(
    "--protocol",
    type=click.Choice(PROTOCOLS),
    default="luo",
    show_default=True,
    help="luo: |gradient| of the raw central output summed over images (Luo et al. 2016); "
    "replknet: RepLKNet's script, relu on the output and on the gradient, mean over "
    "images, log10(1 + x).",
)
@result_options("table: side per stage and threshold; csv/json: the long form.")
@click.pass_context
def erf_cmd(
    ctx, checkpoints, layers, n_images, dataset, data_dir, thresholds, untrained, protocol, fmt, output, device, quiet
):
    """Effective receptive field per stage: gradient of the output's central pixel w.r.t. the input.

    CHECKPOINT: checkpoint folders, or folders of them (default: the bundled checkpoint). Per
    stage and threshold t: the side of the smallest centred square holding t % of the map over
    --images test images, and its share of the input area (RepLKNet's high-contribution area
    ratio). The map depends on --protocol: luo (default) sums |gradient| of the raw central
    output (Luo et al. 2016); replknet follows RepLKNet's ERF script (relu on the output and on
    the gradient, the mean over images, log10(1 + x)), whose sides come out larger. Columns:
    checkpoint, stage, protocol, threshold, side, area_ratio.
    """
    from ..tables import Erf

    fmt = output_format(ctx, fmt, output, ("table", "csv", "json"))
    try:
        ts = [float(t) for t in thresholds.split(",") if t.strip()]
    except ValueError:
        raise SelectionError(f"--thresholds takes comma-separated percentages, got {thresholds!r}") from None
    if not ts or any(not 0 < t <= 100 for t in ts):
        raise SelectionError(f"--thresholds must lie in (0, 100], got {thresholds!r}")
    pattern = None if layers is None else [p.strip() for p in layers.split(",") if p.strip()]
    cmd = Command(
        "erf",
        checkpoints,
        dict(layers=layers, images=n_images, dataset=dataset, thresholds=ts, untrained=untrained, protocol=protocol),
        output,
        quiet,
        device,
    )
    df = cmd.run(
        Erf(
            layers=pattern,
            images=n_images,
            dataset=dataset,
            data_dir=data_dir,
            thresholds=ts,
            untrained=untrained,
            protocol=protocol,
            table=fmt == "table",
        )
    )
    cmd.finish(render_frame(df, fmt), len(df))
