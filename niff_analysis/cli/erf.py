"""``niff-analyze erf``: effective receptive fields per stage, trained and at initialisation."""

from __future__ import annotations

import time

import click
import pandas as pd

from ..analysis import effective_receptive_fields, erf_area_ratios
from ..analysis.erf import PROTOCOL, PROTOCOLS
from ..analysis.schema import CHECKPOINT, STAGE, THRESHOLD, with_checkpoint
from ..errors import NiffError, SelectionError
from . import main
from .analysis import Run, _output_format
from .common import positive_int, render_frame, result_options


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
@click.option("--protocol", type=click.Choice(PROTOCOLS), default="luo", show_default=True,
              help="luo: |gradient| of the raw central output summed over images (Luo et al. 2016); "
                   "replknet: RepLKNet's script, relu on the output and on the gradient, mean over "
                   "images, log10(1 + x).")
@result_options("table: side per stage and threshold; csv/json: the long form.")
@click.pass_context
def erf_cmd(ctx, checkpoints, layers, n_images, dataset, data_dir, thresholds, untrained, protocol, fmt, output,
            device, quiet):
    """Effective receptive field per stage: gradient of the output's central pixel w.r.t. the input.

    CHECKPOINT: checkpoint folders, or folders of them (default: the bundled checkpoint). Per
    stage and threshold t: the side of the smallest centred square holding t % of the map over
    --images test images, and its share of the input area (RepLKNet's high-contribution area
    ratio). The map depends on --protocol: luo (default) sums |gradient| of the raw central
    output (Luo et al. 2016); replknet follows RepLKNet's ERF script (relu on the output and on
    the gradient, the mean over images, log10(1 + x)), whose sides come out larger. Columns:
    checkpoint, stage, protocol, threshold, side, area_ratio.
    """
    fmt = _output_format(ctx, fmt, output, ("table", "csv", "json"))
    try:
        ts = [float(t) for t in thresholds.split(",") if t.strip()]
    except ValueError:
        raise SelectionError(f"--thresholds takes comma-separated percentages, got {thresholds!r}") from None
    if not ts or any(not 0 < t <= 100 for t in ts):
        raise SelectionError(f"--thresholds must lie in (0, 100], got {thresholds!r}")
    pattern = None if layers is None else [p.strip() for p in layers.split(",") if p.strip()]
    run = Run("erf", checkpoints, "*", False, device, quiet,
              dict(layers=layers, images=n_images, dataset=dataset, thresholds=ts, untrained=untrained,
                   protocol=protocol), output)
    frames, images = [], {}
    for ck in run.checkpoints_loaded():
        label, model, meta = ck.label, ck.model, ck.meta
        name = dataset or meta.dataset
        if name is None:
            raise NiffError(f"{label}: the checkpoint records no dataset; pass --dataset")
        key = (name, str(data_dir), meta.input_size)
        if key not in images:
            try:
                images[key] = ck.checkpoint.images(n_images, data_dir, dataset=name)
            except SelectionError as exc:
                raise SelectionError(f"--images: {exc}") from None
        todo = [(label, model)]
        if untrained:
            init = ck.checkpoint.initial(device=str(run.device))
            if init is None:
                run.warn(f"{label}: no initialisation known (not trained by this toolkit); --untrained skipped")
            else:
                todo.append((f"{label}@init", init))
        for lab, m in todo:
            t0 = time.perf_counter()
            try:
                maps = effective_receptive_fields(m, images[key], layers=pattern, protocol=protocol)
            except NiffError as exc:
                raise type(exc)(f"{label}: {exc}") from None
            run.log(f"{lab}: ERF ({protocol} protocol) of {len(maps)} stages from {len(images[key])} images in "
                    f"{time.perf_counter() - t0:.1f} s")
            frames.append(with_checkpoint(erf_area_ratios(maps, ts, protocol=protocol), lab))
    df = pd.concat(frames, ignore_index=True)
    if fmt == "table":
        df = df.pivot_table(index=[CHECKPOINT, STAGE, PROTOCOL], columns=THRESHOLD, values="side",
                            sort=False).reset_index()
        df.columns = [f"side_{c:g}%" if isinstance(c, float) else c for c in df.columns]
    run.finish(render_frame(df, fmt), output, len(df))
