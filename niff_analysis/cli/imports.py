"""``niff-analyze import`` (and the hidden ``import-reference``, kept for old scripts)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

import click

from .._types import CIFAR_INPUT_SIZE, DEFAULT_INPUT_SIZE  # no torch
from ..errors import NiffError
from . import main
from .common import MODELS, STEMS, model_kwargs, out_folder, positive_int

if TYPE_CHECKING:
    from ..checkpoint import CheckpointConfig

# torch, the models and the importers are imported where a command runs: --help starts without them.


def shape_options(classes: str, stem: str, mlp: str):
    """The options that shape the model a state dict is loaded into (both import commands),
    with each command's help for the defaults that differ."""

    def deco(f):
        for d in reversed(
            [
                click.option("--num-classes", type=int, callback=positive_int, help=classes),
                click.option("--in-chans", type=int, callback=positive_int, help="Default: 3."),
                click.option(
                    "--input-size",
                    type=int,
                    callback=positive_int,
                    help=f"Default: {DEFAULT_INPUT_SIZE} ({CIFAR_INPUT_SIZE} for --stem cifar).",
                ),
                click.option("--stem", type=click.Choice(STEMS), help=stem),
                click.option("--mlp", help=mlp),
            ]
        ):
            f = d(f)
        return f

    return deco


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
@shape_options(
    classes="Default: the model's (1000).",
    stem="Registered models: default imagenet.",
    mlp="MLP preset or hidden sizes (default: the architecture's, or read from the authors' tensors).",
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
        kwargs = model_kwargs(num_classes, in_chans, input_size, stem, mlp)
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
    out_folder(out)
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
    return {} if not mlp else dict(mlp=model_kwargs(None, None, None, None, mlp)["mlp"])


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
@shape_options(
    classes="Default: 1000.", stem="Default: imagenet.", mlp="MLP preset or hidden sizes (default: the architecture's)."
)
def import_reference_cmd(path, model_name, out, key, num_classes, in_chans, input_size, stem, mlp) -> None:
    """Convert a checkpoint of the authors' public NIFF code (PATH: .pt/.pth) to our format
    (kept for old scripts; `import` does this and more)."""
    from ..imports import import_reference_checkpoint

    _import_target(path, out, overwrite=False)
    kwargs = model_kwargs(num_classes, in_chans, input_size, stem, mlp)
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
