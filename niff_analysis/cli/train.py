"""``niff-analyze train`` and ``niff-analyze sweep``."""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..errors import NiffError
from ..io import atomic_write
from ..train.config import DTYPES, TrainConfig  # the recipe, without torch
from . import main
from .common import (
    CONV_MODES,
    DATASETS,
    MODELS,
    PRECISIONS,
    STEMS,
    device_option,
    model_kwargs,
    non_negative_int,
    out_folder,
    positive_int,
)
from .common import MODE_DEFAULT as _MODE_DEFAULT  # --mode is always recorded in model_kwargs: the models' default

if TYPE_CHECKING:
    pass

# torch, the models and the trainer are imported where a command runs: --help starts without them.

# TrainConfig's own defaults: the options of its fields default to None, so only what the user
# gave reaches TrainConfig, and --help shows these.
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}


def _recipe_option(*decls: str, help: str | None = None, **kwargs):
    """A ``click.option`` for the :class:`TrainConfig` field it names (``--batch-size`` →
    ``batch_size``): None unless given, with the field's default shown in ``--help``."""
    name = decls[0].split("/")[0].lstrip("-").replace("-", "_")
    value = _DEFAULTS[name]
    if isinstance(value, bool):  # a --x/--no-x switch: show the name of the default side, as click does
        on, off = (d.strip().lstrip("-") for d in decls[0].split("/"))
        value = on if value else off
    shown = f"[default: {value}]"
    return click.option(*decls, default=None, help=f"{help}  {shown}" if help else shown, **kwargs)


def train_options(f):
    """The options every training command shares (recipe, model, data, machine)."""
    for deco in reversed(
        [
            click.option(
                "--model", "model_name", required=True, type=click.Choice(sorted(MODELS)), help="Registered model name."
            ),
            _recipe_option("--dataset", type=click.Choice(DATASETS)),
            click.option(
                "--data-dir",
                type=click.Path(),
                help="Dataset folder (Fashion-MNIST defaults to /usr/share/datasets/fashion-mnist).",
            ),
            _recipe_option(
                "--epochs",
                type=int,
                callback=non_negative_int,
                help="0 writes the initialisation as the checkpoint (with its test accuracy).",
            ),
            _recipe_option("--batch-size", type=int, callback=positive_int),
            _recipe_option("--lr", type=float),
            _recipe_option("--weight-decay", type=float),
            click.option(
                "--mlp-weight-decay",
                type=float,
                help="Weight decay of the frequency-MLP weights (default: --weight-decay).",
            ),
            _recipe_option("--mlp-lr-scale", type=float, help="The frequency MLPs learn at lr times this."),
            _recipe_option(
                "--mlp-bias-decay/--no-mlp-bias-decay",
                help="Decay the frequency-MLP biases too, at the MLP weights' rate.",
            ),
            _recipe_option(
                "--content-scale",
                type=float,
                help="Shrink every image's content by this (0-1] about its centre on the same "
                "canvas: maps, NIFF grids and initial kernels stay, the objects get smaller.",
            ),
            _recipe_option("--label-smoothing", type=float),
            click.option("--num-classes", type=int, callback=positive_int, help="Default: from the dataset."),
            click.option("--in-chans", type=int, callback=positive_int, help="Default: from the dataset."),
            click.option("--input-size", type=int, callback=positive_int, help="Default: from the dataset."),
            click.option("--stem", type=click.Choice(STEMS), help="Default: cifar for 32x32 data."),
            click.option(
                "--width",
                type=int,
                callback=positive_int,
                help="ResNets: base channels (default 64, the paper's; 16 is about 8x cheaper).",
            ),
            click.option("--mlp", help="MLP preset (big, small, cifar, tiny) or hidden sizes like 16,64."),
            click.option("--mode", default=_MODE_DEFAULT, show_default=True, type=click.Choice(CONV_MODES)),
            _recipe_option("--seed", type=int),
            device_option(),
            _recipe_option("--amp/--no-amp", help="Autocast on CUDA."),
            _recipe_option(
                "--precision",
                type=click.Choice(PRECISIONS),
                help="fp32: no autocast; bf16: bf16 autocast on a CPU with native bf16 (refused "
                "elsewhere) or a GPU, FFTs and frequency MLPs kept in float32; auto: fp32 on "
                "the CPU, the --amp setting on CUDA.",
            ),
            click.option(
                "--compile",
                "compile_",
                is_flag=True,
                default=None,
                help="torch.compile the model (CUDA; refused on CPU for NIFF models).",
            ),
            click.option("--train-subset", type=int, callback=positive_int, help="Use the first N training images."),
            click.option("--test-subset", type=int, callback=positive_int, help="Use the first N test images."),
            click.option("--threads", type=int, callback=positive_int, help="torch CPU threads."),
            _recipe_option("--save-every-steps", type=int, help="Also save resumable state every N steps."),
            _recipe_option(
                "--sync-bn/--no-sync-bn",
                help="Under torchrun, BatchNorm statistics over the global batch (as one process).",
            ),
            _recipe_option("--workers", type=int, help="DataLoader workers (imagefolder)."),
            _recipe_option(
                "--dtype",
                type=click.Choice(list(DTYPES)),
                help="float64: CPU reference runs (e.g. to compare DDP with one process exactly).",
            ),
            _recipe_option(
                "--kernel-stats/--no-kernel-stats", help="Record kernel_stats.csv at init and after every epoch."
            ),
            _recipe_option("--kernel-stats-every-steps", type=int, help="Also record kernel statistics every N steps."),
            click.option(
                "--keep-epoch-checkpoints",
                is_flag=True,
                default=None,
                help="Also keep OUT/epoch_NNN/ after every epoch.",
            ),
            click.option("--quiet", "-q", is_flag=True, default=None, help="No progress bar."),
        ]
    ):
        f = deco(f)
    return f


def train_config(
    out: str,
    *,
    model_name: str,
    num_classes: int | None,
    in_chans: int | None,
    input_size: int | None,
    stem: str | None,
    mlp: str | None,
    mode: str,
    width: int | None,
    compile_: bool | None,
    quiet: bool | None,
    **given,
) -> TrainConfig:
    """The :class:`TrainConfig` of the shared options (``--out`` checked before any work).

    Args:
        given: the options named like a TrainConfig field; those not given (None) are left to
            TrainConfig's defaults.
    """
    out_folder(out)
    _out_apart_from_data(out, given.get("data_dir"), given.get("dataset") or _DEFAULTS["dataset"])
    kwargs = model_kwargs(num_classes, in_chans, input_size, stem, mlp)
    if "mlp" in kwargs:
        from ..layers.mlp import resolve_mlp

        try:
            resolve_mlp(kwargs["mlp"])
        except ValueError as exc:
            raise NiffError(f"--mlp: {exc}") from None
    kwargs["mode"] = mode
    if width is not None and width != 64:  # 64 is the default: not recorded, as before
        if not model_name.startswith("resnet"):
            raise NiffError(f"--width applies to ResNets only; {model_name} has its own channel counts")
        kwargs["width"] = width
    given.update(compile=compile_, progress=None if quiet is None else not quiet)
    return TrainConfig(
        model=model_name, model_kwargs=kwargs, out=out, **{k: v for k, v in given.items() if v is not None}
    )


@main.command("train")
@train_options
@click.option("--out", required=True, type=click.Path(), help="Run directory.")
@click.option("--resume", is_flag=True, help="Continue from OUT/train_state.pt.")
@click.option("--overwrite", is_flag=True, help="Train afresh into an OUT that holds another run.")
def train_cmd(out, resume, overwrite, **opts) -> None:
    """Train a registered model; writes a checkpoint, metrics.csv, kernel_stats.csv, init/ and
    train_config.json to OUT.

    Multi-GPU / multi-node: the same command under ``torchrun --nproc_per_node=N``; --batch-size
    is the global batch.
    SIGINT (Ctrl-C) and SIGTERM (kill, timeout, SLURM) stop it after the current step with its
    state saved (exit 130 or 143); --resume then continues it exactly.
    """
    from ..train import train
    from ..train.trainer import stop_on_signals

    if resume and overwrite:
        raise NiffError("--resume continues a run and --overwrite replaces it: choose one")
    cfg = train_config(out, **opts)
    cfg.overwrite = overwrite
    with stop_on_signals():
        try:
            final = train(cfg, resume=resume)
        except KeyboardInterrupt as exc:
            _interrupted(Path(out), exc)
    if int(os.environ.get("RANK", "0")) == 0:
        click.echo(f"test_acc {final.get('test_acc', float('nan')):.4f}; checkpoint in {out}")


def _interrupted(out: Path, exc: KeyboardInterrupt) -> None:
    """One line saying what an interrupted run kept and how to go on; exits 128 + the signal."""
    from ..train.trainer import interrupted_message

    signum = getattr(exc, "signum", signal.SIGINT)
    if int(os.environ.get("RANK", "0")) == 0:
        msg = interrupted_message(
            exc,
            out / "train_state.pt",
            "the same command with --resume continues it",
            start_again="the same command starts the run again",
        )
        click.echo(f"error: {msg}", err=True)
    sys.exit(128 + signum)


@main.command("sweep")
@train_options
@click.option("--out", required=True, type=click.Path(), help="Study folder: OUT/<arm>/seed=<n>/ per run.")
@click.option(
    "--arm",
    "arms",
    multiple=True,
    required=True,
    metavar="SPEC",
    help="An arm: 'spec' (the recipe as given) or key=value pairs joined by commas, keys "
    "mlp_weight_decay, mlp_lr_scale, mlp_bias_decay (on/off), content_scale, weight_decay, "
    "lr, label_smoothing, momentum, epochs. Repeat for each arm.",
)
@click.option("--seeds", help="Seeds of every arm, e.g. 0,1,2 or 0-2 (default: --seed).")
@click.option(
    "--executor",
    type=click.Choice(["local", "slurm"]),
    default="local",
    show_default=True,
    help="local: subprocesses of this machine; slurm: one SLURM job array (submitit).",
)
@click.option(
    "--parallel",
    type=int,
    default=1,
    show_default=True,
    callback=non_negative_int,
    help="Runs at once (local), or the array's parallelism (slurm; 0: no limit).",
)
@click.option(
    "--timeout-min",
    type=int,
    default=24 * 60,
    show_default=True,
    callback=positive_int,
    help="Time limit of one run's job, minutes.",
)
@click.option("--slurm-partition", help="SLURM partition.")
@click.option("--slurm-account", help="SLURM account.")
@click.option("--slurm-qos", help="SLURM QOS.")
@click.option(
    "--gpus-per-job", type=int, default=0, show_default=True, callback=non_negative_int, help="SLURM: GPUs per run."
)
@click.option("--cpus-per-job", type=int, callback=positive_int, help="SLURM: CPUs per run.")
@click.option("--mem-gb", type=int, callback=positive_int, help="SLURM: memory per run, GB.")
@click.option(
    "--no-wait",
    is_flag=True,
    help="SLURM: submit and return; run the same command again to gather the results once the jobs have finished.",
)
@click.option(
    "--table",
    "table_path",
    type=click.Path(dir_okay=False),
    help="Also write the finished runs' per-stage table (sweep_final.csv) to this file.",
)
def sweep_cmd(
    out,
    arms,
    seeds,
    executor,
    parallel,
    timeout_min,
    slurm_partition,
    slurm_account,
    slurm_qos,
    gpus_per_job,
    cpus_per_job,
    mem_gb,
    no_wait,
    table_path,
    **opts,
) -> None:
    """Train arms x seeds of one recipe and compare what they learn.

    Writes to OUT: sweep.csv (the kernel statistics recorded during training, every run),
    sweep_final.csv (per finished run and stage, mass ratios and sizes of its final checkpoint
    under both measures, with its test accuracy), sweep_summary.csv (mean and 95 % interval over
    seeds) and sweep.png/.pdf. Rerunning the same command skips finished runs, resumes
    interrupted ones and gathers everything again.

    \b
    On a SLURM cluster, e.g.:
      niff-analyze sweep --model resnet18_niff --width 16 --epochs 15 --batch-size 128 \\
        --arm spec --arm mlp_weight_decay=0.1 --seeds 0-2 --out runs/study \\
        --executor slurm --slurm-partition gpu --gpus-per-job 1 --cpus-per-job 8 --timeout-min 120
    """
    from ..plotting import plot_study, plot_sweep
    from ..plotting.style import save_figure
    from ..train.sweep import INIT_ARM, Executor, collect, final_csv, final_table, parse_seeds, run_sweep, seed_summary

    base = train_config(out, **opts)
    if table_path:
        _table_outside_runs(Path(table_path), Path(out))
    slurm = {
        k: v
        for k, v in dict(
            slurm_partition=slurm_partition,
            slurm_account=slurm_account,
            slurm_qos=slurm_qos,
            gpus_per_node=gpus_per_job or None,
            cpus_per_task=cpus_per_job,
            mem_gb=mem_gb,
        ).items()
        if v is not None
    }
    if slurm and executor != "slurm":
        raise NiffError(f"--{next(iter(slurm)).replace('_', '-')} applies to --executor slurm")
    ex = Executor(
        kind=executor,
        parallel=parallel if executor == "slurm" else max(1, parallel),
        wait=not no_wait,
        timeout_min=timeout_min,
        slurm=slurm,
    )
    failures = run_sweep(
        base,
        arms,
        out,
        seeds=parse_seeds(seeds) if seeds else None,
        executor=ex,
        echo=lambda line: click.echo(line, err=True),
    )
    root = Path(out)
    try:
        history = collect(out)
    except NiffError:
        history = None
    if history is not None:
        atomic_write(root / "sweep.csv", history.to_csv(index=False, float_format="%.17g"))
        save_figure(plot_sweep(history)[0], root / "sweep", ("pdf", "png"))
    final = final_table(out)
    if len(final):
        text = final_csv(final)
        atomic_write(root / "sweep_final.csv", text)
        summary = seed_summary(final)
        atomic_write(root / "sweep_summary.csv", summary.to_csv(index=False, float_format="%.10g"))
        save_figure(plot_study(summary)[0], root / "study", ("pdf", "png"))
        if table_path:
            atomic_write(Path(table_path), text)
    n_runs = final[final["arm"] != INIT_ARM].drop_duplicates(["arm", "seed"]).shape[0] if len(final) else 0
    click.echo(
        f"{n_runs} finished run(s) in {out}: sweep.csv, sweep_final.csv, sweep_summary.csv, sweep.png, study.png"
    )
    if failures:
        raise NiffError(f"{len(failures)} run(s) failed: " + "; ".join(failures))


def _table_outside_runs(table: Path, root: Path) -> None:
    """``--table`` must not land in a run folder of the study (it could replace a run's file)."""
    from ..pipeline import overlaps

    if table.resolve() == root.resolve() or (
        root.is_dir() and any(overlaps(table, arm) for arm in root.iterdir() if arm.is_dir())
    ):
        raise NiffError(
            f"--table {table} lies inside a run of the study {root}; a command never writes into "
            "its input: write it elsewhere (e.g. beside the study folder)"
        )


def _out_apart_from_data(out: str, data_dir: str | None, dataset: str) -> None:
    """A run folder must not overlap the dataset it reads (``--overwrite`` would empty it)."""
    from ..data import FASHION_MNIST_DEFAULT
    from ..pipeline import overlaps

    data = Path(data_dir) if data_dir else (FASHION_MNIST_DEFAULT if dataset == "fashion-mnist" else None)
    if data is not None and overlaps(Path(out), data):
        raise NiffError(
            f"--out {out} and the data folder {data} overlap: a run never writes into its input; choose another --out"
        )
