"""Model registry: torchvision definitions, converted by rule (no copied model files).

Names are ``<arch>`` (baseline) plus ``_sep`` / ``_niff`` / ``_niff_full`` where the paper has
that variant. ``list_models("resnet*_niff")`` takes fnmatch wildcards.
"""

from __future__ import annotations

import fnmatch
import importlib
from typing import Any

from torch import nn

from .._types import SizeLike, input_hw
from ..errors import NiffError
from ..layers.mlp import MLPSpec, resolve_mlp
from .config import ModelConfig
from .convert import record_shapes, to_niff, to_separated

# arch -> (default ImageNet MLP preset, variant suffixes the paper has). The torchvision builder
# of the same name is imported only when a model is built, so listing names needs no torchvision.
_ARCHS: dict[str, tuple[str, tuple[str, ...]]] = {
    "resnet18": ("big", ("", "_sep", "_niff", "_niff_full")),
    "resnet50": ("big", ("", "_sep", "_niff", "_niff_full")),
    "resnet101": ("big", ("", "_sep", "_niff", "_niff_full")),
    "densenet121": ("small", ("", "_sep", "_niff", "_niff_full")),
    "convnext_tiny": ("big", ("", "_niff")),
    "mobilenet_v2": ("small", ("", "_niff")),
    "mobilenet_v3_small": ("small", ("", "_niff")),
}
_SUFFIXES = ("_niff_full", "_niff", "_sep")  # longest first for parsing
STEMS = ("imagenet", "cifar")


class UnknownModelError(NiffError, ValueError):
    """The registry has no model of that name."""


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching an fnmatch ``pattern``, sorted."""
    names = [a + s for a, (_, sfx) in _ARCHS.items() for s in sfx]
    return sorted(n for n in names if fnmatch.fnmatchcase(n, pattern))


def parse_name(name: str) -> tuple[str, str]:
    """Split a registered name into (architecture, variant) with variant in
    ``baseline``, ``sep``, ``niff``, ``niff_full``."""
    if name not in list_models():
        raise UnknownModelError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    for s in _SUFFIXES:
        if name.endswith(s):
            return name[: -len(s)], s[1:]
    return name, "baseline"


def _swap_conv(old: nn.Conv2d, **changes) -> nn.Conv2d:
    kw: dict[str, Any] = dict(
        in_channels=old.in_channels,
        out_channels=old.out_channels,
        kernel_size=old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        bias=old.bias is not None,
    )
    kw.update(changes)
    return nn.Conv2d(**kw)


def _adapt_stem(arch: str, model: Any, in_chans: int, stem: str) -> None:
    """Set input channels and, for ``stem="cifar"``, a stride-1 stem without max-pool (SPEC §3).

    ``model`` is a torchvision model (typed ``Any``: its stem's attributes differ per architecture).
    """
    cifar = stem == "cifar"
    if arch.startswith("resnet"):
        model.conv1 = (
            _swap_conv(model.conv1, in_channels=in_chans, kernel_size=3, stride=1, padding=1)
            if cifar
            else _swap_conv(model.conv1, in_channels=in_chans)
        )
        if cifar:
            model.maxpool = nn.Identity()
    elif arch.startswith("densenet"):
        f = model.features
        f.conv0 = (
            _swap_conv(f.conv0, in_channels=in_chans, kernel_size=3, stride=1, padding=1)
            if cifar
            else _swap_conv(f.conv0, in_channels=in_chans)
        )
        if cifar:
            f.pool0 = nn.Identity()
    elif arch.startswith("mobilenet"):
        model.features[0][0] = _swap_conv(
            model.features[0][0], in_channels=in_chans, **({"stride": 1} if cifar else {})
        )
    elif arch.startswith("convnext"):
        # ConvNeXt keeps its patchify stem (4×4, stride 4) on either stem setting.
        model.features[0][0] = _swap_conv(model.features[0][0], in_channels=in_chans)


def _resnet_of_width(arch: str, width: int, num_classes: int) -> nn.Module:
    """torchvision's ResNet ``arch`` with ``width`` base channels instead of 64 (stages
    width, 2·width, 4·width, 8·width; bottlenecks scale the same way). Its own definition and
    initialisation, only the channel counts change."""
    import torch
    from torchvision.models import resnet as tv

    block, layers = {
        "resnet18": (tv.BasicBlock, [2, 2, 2, 2]),
        "resnet50": (tv.Bottleneck, [3, 4, 6, 3]),
        "resnet101": (tv.Bottleneck, [3, 4, 23, 3]),
    }[arch]

    class _Narrow(tv.ResNet):
        def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
            if planes == 64:  # the first stage starts from the stem's width, not ResNet's 64
                self.inplanes = width
            return super()._make_layer(block, planes * width // 64, blocks, stride, dilate)

    model = _Narrow(block, layers, num_classes=num_classes)
    # ResNet.__init__ builds its stem and classifier for 64 channels: rebuild them for `width`,
    # initialised as ResNet.__init__ initialises them.
    model.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.bn1 = nn.BatchNorm2d(width)
    model.fc = nn.Linear(8 * width * block.expansion, num_classes)
    with torch.no_grad():
        model.bn1.weight.fill_(1.0)
        model.bn1.bias.zero_()
    return model


def create_model(
    name: str,
    num_classes: int = 1000,
    in_chans: int = 3,
    input_size: SizeLike | None = None,
    stem: str = "imagenet",
    mlp: MLPSpec | None = None,
    mode: str = "circular",
    niff_on_1x1: bool = False,
    width: int = 64,
) -> nn.Module:
    """Build a registered model.

    Args:
        name: a name from :func:`list_models`.
        num_classes: classifier outputs.
        in_chans: input image channels.
        input_size: input H×W the NIFF layers are sized for (default 224, or 32 for ``cifar``).
        stem: ``"imagenet"`` or ``"cifar"`` (3×3 stride-1 stem, no max-pool, ``cifar`` MLP).
        mlp: MLP preset/config overriding the architecture's default.
        mode: NIFF convolution mode (see :data:`niff_analysis.layers.CONV_MODES`).
        niff_on_1x1: NIFF also on k×k convs that run on 1×1 maps (the authors' ResNet-18 at
            32×32 does this; :func:`~niff_analysis.models.to_niff`).
        width: base channels of a ResNet (64, torchvision's, is the paper's model; 16 is a
            16× cheaper model for controlled studies). Only ResNets take another value.

    Returns:
        The model, with ``model.niff_config`` (a :class:`~niff_analysis.models.ModelConfig`)
        holding the keyword arguments that rebuild it.
    """
    arch, variant = parse_name(name)
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; choose from {list(STEMS)}")
    for label, value in (("num_classes", num_classes), ("in_chans", in_chans)):
        if int(value) < 1:
            raise ValueError(f"{label} must be a positive integer, got {value}")
    size = input_hw(input_size, stem)
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive integer, got {width!r}")
    if width != 64 and not arch.startswith("resnet"):
        raise ValueError(f"width applies to ResNets only; {arch} has its own channel counts")
    default_mlp, _ = _ARCHS[arch]
    if width == 64:  # torchvision's builder itself: the paper's model, bit for bit
        builder = getattr(importlib.import_module("torchvision.models"), arch)
        model = builder(weights=None, num_classes=num_classes)
    else:
        model = _resnet_of_width(arch, width, num_classes)
    _adapt_stem(arch, model, in_chans, stem)
    if mlp is None:
        mlp = "tiny" if variant == "niff_full" else ("cifar" if stem == "cifar" else default_mlp)
    mlp_cfg = resolve_mlp(mlp)
    if variant == "sep":
        to_separated(model, size, in_chans=in_chans)
    elif variant.startswith("niff"):
        to_niff(
            model,
            size,
            variant="full" if variant == "niff_full" else "split",
            mlp=mlp_cfg,
            mode=mode,
            in_chans=in_chans,
            niff_on_1x1=niff_on_1x1,
        )
    else:
        record_shapes(model, size, in_chans)  # validates the input size
    kwargs = dict(
        num_classes=num_classes, in_chans=in_chans, input_size=list(size), stem=stem, mlp=mlp_cfg.to_dict(), mode=mode
    )
    if niff_on_1x1:
        kwargs["niff_on_1x1"] = True
    if width != 64:  # recorded only when set, so checkpoints of the paper's width stay as they were
        kwargs["width"] = width
    model.niff_config = ModelConfig(name, kwargs)
    return model
