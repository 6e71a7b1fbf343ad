"""``niff-analyze evaluate``: a checkpoint's accuracy on its dataset, as recorded or after
recomputing its BatchNorm statistics."""

from __future__ import annotations

import click

from . import main
from .common import DATASETS, Command, non_negative_int, output_format, positive_int, render_frame, result_options


def _content_scale(ctx, param, value):
    if value is not None and not 0 < value <= 1:
        raise click.BadParameter(f"must lie in (0, 1], got {value}")
    return value


@main.command("evaluate")
@click.argument("checkpoints", nargs=-1, metavar="[CHECKPOINT ...]")
@click.option(
    "--dataset",
    type=click.Choice(list(DATASETS)),
    help="Default: the checkpoint's own (its config records it).",
)
@click.option("--data-dir", type=click.Path(), help="Dataset folder (Fashion-MNIST defaults to the Debian package's).")
@click.option(
    "--split", type=click.Choice(["test", "train"]), default="test", show_default=True, help="Which split to score."
)
@click.option(
    "--content-scale",
    type=float,
    callback=_content_scale,
    metavar="S",
    help="Show the content at S times its size (default: as the checkpoint was trained).",
)
@click.option(
    "--images",
    type=int,
    callback=positive_int,
    metavar="N",
    help="Score the first N images of the split only (default: all of them).",
)
@click.option(
    "--recalibrate-bn",
    "recalibrate",
    type=int,
    default=0,
    show_default=True,
    callback=non_negative_int,
    metavar="N",
    help="Also score the model after recomputing every BatchNorm's statistics from N training "
    "images (a seeded sample, not augmented); 0: only as recorded.",
)
@click.option(
    "--batch-size", type=int, default=512, show_default=True, callback=positive_int, help="Images per forward pass."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the --recalibrate-bn sample.")
@result_options("table: one row per checkpoint and statistics, accuracy as 'value [lo, hi]'; csv/json: the long form.")
@click.pass_context
def evaluate_cmd(
    ctx,
    checkpoints,
    dataset,
    data_dir,
    split,
    content_scale,
    images,
    recalibrate,
    batch_size,
    seed,
    fmt,
    output,
    device,
    quiet,
):
    """Accuracy of CHECKPOINT(s) on their dataset, as recorded or with BatchNorm statistics recomputed.

    CHECKPOINT: checkpoint folders or .safetensors files, or folders of them (default: the
    bundled checkpoint). Each is scored on --split of the dataset it was trained on, shown as it
    was trained (its recipe's content scale), without augmentation: loss (cross-entropy, no label
    smoothing) and accuracy with its 95 % Wilson interval over the images (the uncertainty from a
    finite test set; it says nothing about another seed). recorded_acc is the test accuracy the
    run recorded when this evaluation is that one (the same dataset, content scale and test
    images: all of them, or the first --images N where the run evaluated N), so a difference
    shows changed data or code.

    --recalibrate-bn N adds a row with every BatchNorm's running statistics replaced by their
    plain average over N training images ("precise BN"), the weights unchanged, on a copy: the
    checkpoint is never modified. A large gain shows that the running statistics lagged the
    weights (they average the last ~10 training steps), not what the weights can do. Columns:
    checkpoint, epochs, dataset, split, content_scale, images, batchnorm (running | recalibrated),
    bn_images, loss, acc, acc_lo, acc_hi, recorded_acc.
    """
    from ..tables import Evaluate

    fmt = output_format(ctx, fmt, output, ("table", "csv", "json"))
    cmd = Command(
        "evaluate",
        checkpoints,
        dict(
            dataset=dataset,
            split=split,
            content_scale=content_scale,
            images=images,
            recalibrate_bn=recalibrate,
            batch_size=batch_size,
            seed=seed,
        ),
        output,
        quiet,
        device,
    )
    df = cmd.run(
        Evaluate(
            dataset=dataset,
            data_dir=data_dir,
            split=split,
            content_scale=content_scale,
            images=images,
            recalibrate=recalibrate,
            batch_size=batch_size,
            seed=seed,
            table=fmt == "table",
        )
    )
    cmd.finish(render_frame(df, fmt), len(df))
