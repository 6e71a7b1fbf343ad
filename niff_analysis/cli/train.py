"""``niff-analyze train`` and ``niff-analyze import-reference``."""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, cast

import click

from .._types import CIFAR_INPUT_SIZE, DEFAULT_INPUT_SIZE  # no torch
from ..errors import NiffError
from ..io import atomic_write
from ..train.config import DTYPES, TrainConfig  # the recipe, without torch
from . import main
from .common import CONV_MODES, DATASETS, MODELS, PRECISIONS, STEMS, device_option, non_negative_int, positive_int
from .common import MODE_DEFAULT as _MODE_DEFAULT  # --mode is always recorded in model_kwargs: the models' default

if TYPE_CHECKING:
    from ..checkpoint import CheckpointConfig

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
    _out_folder(out)
    _out_apart_from_data(out, given.get("data_dir"), given.get("dataset") or _DEFAULTS["dataset"])
    kwargs = _model_kwargs(num_classes, in_chans, input_size, stem, mlp)
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


def _out_folder(out: str) -> None:
    """Refuse an ``--out`` folder that exists as a file, before any work is done."""
    if Path(out).exists() and not Path(out).is_dir():
        raise NiffError(f"--out {out}: exists and is not a directory")


def _out_apart_from_data(out: str, data_dir: str | None, dataset: str) -> None:
    """A run folder must not overlap the dataset it reads (``--overwrite`` would empty it)."""
    from ..data import FASHION_MNIST_DEFAULT
    from ..pipeline import overlaps

    data = Path(data_dir) if data_dir else (FASHION_MNIST_DEFAULT if dataset == "fashion-mnist" else None)
    if data is not None and overlaps(Path(out), data):
        raise NiffError(
            f"--out {out} and the data folder {data} overlap: a run never writes into its input; choose another --out"
        )


def _model_kwargs(num_classes, in_chans, input_size, stem, mlp) -> dict:
    kwargs = {
        k: v
        for k, v in dict(num_classes=num_classes, in_chans=in_chans, input_size=input_size, stem=stem).items()
        if v is not None
    }
    if mlp:
        try:
            kwargs["mlp"] = [int(h) for h in mlp.split(",")] if mlp[0].isdigit() else mlp
        except ValueError:
            raise NiffError(f"--mlp: expected a preset name or sizes like 16,64, got {mlp!r}") from None
    return kwargs


@main.command("import")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option(
    "--model",
    "model_name",
    required=True,
    metavar="NAME",
    help="A registered model (niff-analyze models), torchvision:NAME, or package.module:function (with --factory).",
)
@click.option("--out", required=True, type=click.Path(), help="Checkpoint directory (or .safetensors) to write.")
@click.option("--key", help="Dict entry holding the state dict (default: found automatically).")
@click.option("--factory", metavar="MODULE:FN", help="Allow this user factory to run (must equal --model).")
@click.option("--num-classes", type=int, callback=positive_int, help="Default: the model's (1000).")
@click.option("--in-chans", type=int, callback=positive_int, help="Default: 3.")
@click.option(
    "--input-size",
    type=int,
    callback=positive_int,
    help=f"Default: {DEFAULT_INPUT_SIZE} ({CIFAR_INPUT_SIZE} for --stem cifar).",
)
@click.option("--stem", type=click.Choice(STEMS), help="Registered models: default imagenet.")
@click.option(
    "--mlp", help="MLP preset or hidden sizes (default: the architecture's, or read from the authors' tensors)."
)
@click.option(
    "--niff",
    "niff_variant",
    type=click.Choice(["split", "full"]),
    help="torchvision/factory models: the weights are of the model converted to NIFF this way.",
)
@click.option("--overwrite", is_flag=True, help="Replace the checkpoint or run that OUT holds.")
@click.option("--quiet", "-q", is_flag=True, help="No confirmation line on stdout (errors still print).")
def import_cmd(
    path, model_name, out, key, factory, num_classes, in_chans, input_size, stem, mlp, niff_variant, overwrite, quiet
) -> None:
    """Import the weights of a model trained elsewhere (PATH: .pt/.pth/.bin/.safetensors state dict).

    Registered models (NIFF or plain, e.g. resnet18_niff, convnext_tiny), any torchvision
    classification model (torchvision:resnet34, converted with --niff), or your own factory. A
    checkpoint of the authors' NIFF code (GeJulia/NIFF) is recognised by its keys; its MLP sizes are
    read from its tensors. Pickles are read with weights_only=True.
    """
    from ..imports import import_state_dict
    from ..models.build import is_builder
    from ..models.registry import list_models

    _import_target(path, out, overwrite)
    if is_builder(model_name):
        if stem:
            raise NiffError("--stem applies to registered models only")
        kwargs = dict(
            builder_kwargs={} if num_classes is None else dict(num_classes=num_classes),
            input_size=input_size or DEFAULT_INPUT_SIZE,
            in_chans=in_chans,
            niff=None if niff_variant is None else dict(variant=niff_variant, **_mlp_arg(mlp)),
        )
        if mlp and niff_variant is None:
            raise NiffError("--mlp needs --niff for torchvision/factory models")
    else:
        if model_name not in list_models():
            from ..models.registry import UnknownModelError

            raise UnknownModelError(
                f"unknown model {model_name!r}; available: {', '.join(list_models())} "
                "(or torchvision:NAME, package.module:function)"
            )
        if niff_variant:
            raise NiffError(f"--niff applies to torchvision/factory models; use {model_name}_niff")
        kwargs = _model_kwargs(num_classes, in_chans, input_size, stem, mlp)
    model = import_state_dict(path, model_name, key=key, factory=factory, **kwargs)
    # nn.Module.__getattr__ is typed for tensors and modules only; the import attaches a CheckpointConfig
    meta = cast("CheckpointConfig", model.niff_checkpoint)
    _write_imported(
        model,
        out,
        imported_from=meta.provenance["imported_from"],
        source_file=Path(path).name,
        source_sha256=meta.sha256,
    )
    if not quiet:
        click.echo(f"imported {path} as {model_name} ({meta.provenance['imported_from']}); checkpoint in {out}")


def _import_target(path: str, out: str, overwrite: bool) -> None:
    """Refuse, before any work, an ``--out`` that would replace something without ``--overwrite``,
    that overlaps the file read, or that is not a folder."""
    from ..pipeline import overlaps
    from ..runs import RunLockedError, lock_holder, locked_message, refuse_foreign

    target, source = Path(out), Path(path)
    if overlaps(target, source):
        raise NiffError(
            f"--out {out} holds the file being imported ({path}); a command never writes into its "
            "input: choose another --out"
        )
    if out.endswith(".safetensors"):
        if target.exists() and not overwrite:
            raise NiffError(f"--out {out} exists; use --overwrite to replace it")
        return
    _out_folder(out)
    holder = lock_holder(target)
    if holder is not None:  # say so now, not after building the model
        raise RunLockedError(locked_message(target, holder))
    if target.is_dir() and any(target.iterdir()):
        if not overwrite:
            raise NiffError(
                f"--out {out} is not empty; use --overwrite to replace the checkpoint or run it holds, or a new --out"
            )
        refuse_foreign(target)


def _write_imported(model, out: str, **metadata) -> None:
    """Save an imported model; into a folder under its lock, the previous run moved aside first
    (restored if the save fails), so an import never mixes with what the folder held."""
    from ..checkpoint import save_checkpoint
    from ..runs import discard, move_aside, restore, run_lock

    if out.endswith(".safetensors"):
        save_checkpoint(model, out, **metadata)
        return
    with run_lock(out, command="niff-analyze import"):
        aside = move_aside(Path(out))
        try:
            save_checkpoint(model, out, **metadata)
        except BaseException:
            restore(aside, out)
            raise
        discard(aside)


def _mlp_arg(mlp) -> dict:
    return {} if not mlp else dict(mlp=_model_kwargs(None, None, None, None, mlp)["mlp"])


@main.command("import-reference", hidden=True)
@click.argument("path", type=click.Path(dir_okay=False))
@click.option(
    "--model",
    "model_name",
    required=True,
    type=click.Choice(sorted(MODELS)),
    help="Our registered model matching the checkpoint's architecture.",
)
@click.option("--out", required=True, type=click.Path(), help="Checkpoint directory (or .safetensors) to write.")
@click.option("--key", default="model", show_default=True, help="Dict entry holding the state dict.")
@click.option("--num-classes", type=int, callback=positive_int, help="Default: 1000.")
@click.option("--in-chans", type=int, callback=positive_int, help="Default: 3.")
@click.option(
    "--input-size",
    type=int,
    callback=positive_int,
    help=f"Default: {DEFAULT_INPUT_SIZE} ({CIFAR_INPUT_SIZE} for --stem cifar).",
)
@click.option("--stem", type=click.Choice(STEMS), help="Default: imagenet.")
@click.option("--mlp", help="MLP preset or hidden sizes (default: the architecture's).")
def import_reference_cmd(path, model_name, out, key, num_classes, in_chans, input_size, stem, mlp) -> None:
    """Convert a checkpoint of the authors' public NIFF code (PATH: .pt/.pth) to our format
    (kept for old scripts; `import` does this and more)."""
    from ..imports import import_reference_checkpoint

    _import_target(path, out, overwrite=False)
    kwargs = _model_kwargs(num_classes, in_chans, input_size, stem, mlp)
    model = import_reference_checkpoint(path, model_name, key=key, **kwargs)
    # nn.Module.__getattr__ is typed for tensors and modules only; the import attaches a CheckpointConfig
    meta = cast("CheckpointConfig", model.niff_checkpoint)
    _write_imported(
        model,
        out,
        imported_from=meta.provenance["imported_from"],
        source_file=Path(path).name,
        source_sha256=meta.sha256,
    )
    click.echo(f"imported {path} as {model_name}; checkpoint in {out}")
