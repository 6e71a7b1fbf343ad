"""Any CNN as a first-class model: built by name, optionally converted, and saved so that a
checkpoint can rebuild it.

A *builder* is ``"torchvision:NAME"`` (any classification model of ``torchvision.models``) or a
user factory ``"package.module:function"`` returning an ``nn.Module``. :func:`build_model`
calls it with ``builder_kwargs``, converts the result with :func:`~niff_analysis.models.to_niff`
when ``niff`` settings are given, and records everything in ``model.niff_config``, which
:func:`~niff_analysis.checkpoint.save_checkpoint` stores and
:func:`~niff_analysis.checkpoint.load_checkpoint` replays.

Loading never runs code a checkpoint names by itself: torchvision builders are checked against
``torchvision.models.list_models()``, and a user factory runs only when the caller names the
same factory (``factory=`` / ``--factory``).
"""

from __future__ import annotations

import importlib
import re
import sys
from typing import Any

from torch import nn

from .._types import DEFAULT_INPUT_SIZE, SizeLike, input_hw
from ..errors import NiffError
from ..layers.mlp import resolve_mlp
from .config import ModelConfig, is_builder

TORCHVISION = "torchvision:"
_FACTORY_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
#: The settings of :func:`~niff_analysis.models.to_niff` a builder's ``niff`` dict takes, with defaults.
NIFF_SETTINGS: dict[str, Any] = dict(
    variant="split", mlp="big", mode="circular", convert_pointwise=True, niff_on_1x1=False
)
#: Packages whose callables are never a model factory: they run commands, load code or files, or
#: are this toolkit and its infrastructure (the Python standard library is refused as a whole).
NOT_FACTORIES = frozenset(
    {
        "torch",
        "torchvision",
        "numpy",
        "scipy",
        "pandas",
        "matplotlib",
        "sklearn",
        "PIL",
        "safetensors",
        "submitit",
        "click",
        "tqdm",
        "pip",
        "setuptools",
        "pkg_resources",
        "_distutils_hack",
        "IPython",
        "ipykernel",
        "jupyter_client",
        "nbformat",
        "nbclient",
        "pytest",
        "_pytest",
        "niff_analysis",
    }
)


class BuilderError(NiffError, ValueError):
    """A builder name that cannot (or may not) be called."""


def _torchvision_builder(name: str):
    import torchvision.models as tvm

    known = tvm.list_models(module=tvm)
    if name not in known:
        raise BuilderError(
            f"torchvision has no classification model {name!r}; "
            f"available: {', '.join(known[:8])}, … ({len(known)} in all)"
        )
    return tvm.get_model_builder(name)


def resolve_builder(builder: str, allow_factory: str | None = None):
    """The callable a builder name stands for.

    Args:
        builder: ``"torchvision:NAME"`` or ``"package.module:function"``.
        allow_factory: the user factory the caller agrees to run; a ``module:function``
            builder is refused unless it equals this.

    Raises:
        BuilderError: unknown torchvision model, malformed name, factory not allowed, or a
            factory that cannot be imported.
    """
    if builder.startswith(TORCHVISION):
        return _torchvision_builder(builder[len(TORCHVISION) :])
    if not _FACTORY_RE.match(builder):
        raise BuilderError(f"builder {builder!r} is neither torchvision:NAME nor package.module:function")
    module, _, fn = builder.partition(":")
    if not _user_package(module) or fn.startswith("_"):
        # Refused whoever asks: a checkpoint naming os:system must never be one flag away from running.
        raise BuilderError(
            f"refusing the factory {builder!r}: a model factory is a public function of your own "
            "importable package, not of the Python standard library or the toolkit's "
            "infrastructure"
        )
    if allow_factory != builder:
        # The factory's name comes from the file being loaded: say what it is, never suggest running it.
        raise BuilderError(
            f"the model is built by the user factory {builder!r}, which runs code; nothing a "
            "checkpoint names runs unless you allow that factory yourself with --factory "
            "(factory= in Python) after checking that you trust its package"
        )
    try:
        obj = getattr(importlib.import_module(module), fn)
    except (ImportError, AttributeError) as exc:
        raise BuilderError(f"cannot import factory {builder!r}: {exc}") from None
    if not callable(obj):
        raise BuilderError(f"factory {builder!r} is not callable")
    home = getattr(obj, "__module__", None) or ""
    if not _user_package(home):  # e.g. `from os import system` re-exported by a package
        raise BuilderError(
            f"refusing the factory {builder!r}: it is {home}.{getattr(obj, '__name__', fn)}, "
            "not a function of your own package"
        )
    return obj


def _user_package(module: str) -> bool:
    """Whether a module belongs to a user package: not the standard library (builtins, os,
    subprocess, sys, shutil, …) nor :data:`NOT_FACTORIES`."""
    top = module.split(".")[0]
    stdlib = getattr(sys, "stdlib_module_names", frozenset()) | set(sys.builtin_module_names)
    return bool(top) and top not in stdlib and top not in NOT_FACTORIES and top not in ("posix", "nt", "__main__")


def build_model(
    builder: str,
    builder_kwargs: dict | None = None,
    input_size: SizeLike = DEFAULT_INPUT_SIZE,
    in_chans: int | None = None,
    niff: dict | None = None,
    factory: str | None = None,
) -> nn.Module:
    """Build (and optionally convert) a CNN, recording how, so that it can be saved and reloaded.

    Args:
        builder: ``"torchvision:NAME"`` or ``"package.module:function"``.
        builder_kwargs: keyword arguments of the builder (e.g. ``num_classes``); JSON values.
        input_size: input H×W the model runs at (the dry forward that records feature-map sizes).
        in_chans: input channels of the dry forward (default: the first conv's).
        niff: ``None`` keeps the CNN as it is (its plain convolutions are analysed); otherwise
            :func:`~niff_analysis.models.to_niff` settings: ``variant``, ``mlp``, ``mode``,
            ``convert_pointwise``, ``niff_on_1x1``.
        factory: the user factory the caller agrees to run (must equal ``builder`` for one).

    Returns:
        The model; ``model.niff_config`` (a :class:`~niff_analysis.models.ModelConfig`) holds the
        arguments that rebuild it.
    """
    from .convert import record_shapes, to_niff

    fn = resolve_builder(builder, allow_factory=factory)
    kwargs = dict(builder_kwargs or {})
    try:
        model = fn(**kwargs)
    except TypeError as exc:
        raise BuilderError(f"{builder}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())}): {exc}") from None
    if not isinstance(model, nn.Module):
        raise BuilderError(f"{builder} returned {type(model).__name__}, not an nn.Module")
    try:
        size = list(input_hw(input_size))
    except ValueError as exc:
        raise BuilderError(str(exc)) from None
    settings: dict[str, Any] | None = None
    if niff is not None:
        settings = dict(NIFF_SETTINGS)
        unknown = set(niff) - set(settings)
        if unknown:
            raise BuilderError(f"unknown NIFF setting(s) {sorted(unknown)}; choose from {sorted(settings)}")
        settings.update(niff)
        settings["mlp"] = resolve_mlp(settings["mlp"]).to_dict()
        to_niff(model, size, in_chans=in_chans, **settings)
    else:
        record_shapes(model, size, in_chans)  # validates the input size
    built = ModelConfig(builder, dict(builder_kwargs=kwargs, input_size=size, in_chans=in_chans, niff=settings))
    model.niff_config = built  # type: ignore[assignment]  # nn.Module.__setattr__ is typed for tensors and modules only
    return model


def rebuild(architecture: str, model_kwargs: dict, factory: str | None = None) -> nn.Module:
    """The model a checkpoint config describes (registry name or builder)."""
    if is_builder(architecture):
        kw = dict(model_kwargs)
        return build_model(
            architecture,
            kw.get("builder_kwargs"),
            kw.get("input_size", DEFAULT_INPUT_SIZE),
            kw.get("in_chans"),
            kw.get("niff"),
            factory=factory,
        )
    from .registry import create_model

    return create_model(architecture, **model_kwargs)
