"""Turn any CNN into its NIFF (or separated-conv) version, by the rules of SPEC §2.

One dry forward at ``input_size`` records the feature-map size every convolution runs at; the
rules then decide per module:

* stride-1, size-preserving dense (or grouped) k×k conv, k > 1 → :class:`SplitNIFF`
  (``variant="full"``: :class:`FullNIFF`);
* stride-1, size-preserving depthwise k×k conv → :class:`DepthwiseNIFF`;
* stride-1 1×1 conv → :class:`FreqPointwise` (same weights, bias dropped);
* ``nn.Linear`` applied to 4-D channels-last maps (ConvNeXt's pointwise layers) → bias-free
  channels-last :class:`FreqPointwise`;
* everything else (strided convs, stems, convs on 1×1 maps, size-changing convs) is kept.

Every decision lands in a :class:`ConversionReport`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .._types import DEFAULT_INPUT_SIZE, SizeLike, as_hw
from ..errors import NiffError
from ..layers import DepthwiseNIFF, FreqPointwise, FullNIFF, NIFFLayer, SplitNIFF
from ..layers.mlp import MLPSpec


class ConversionError(NiffError, ValueError):
    """A model cannot be converted (e.g. the input size is too small for its downsampling)."""


@dataclass
class ConversionReport:
    """What a conversion replaced and what it kept, with reasons."""

    replaced: list[dict] = field(default_factory=list)
    kept: list[dict] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"replaced {len(self.replaced)} modules, kept {len(self.kept)}"]
        lines += [f"  ~ {r['name']}: {r['old']} -> {r['new']} @ {r['fmap']}" for r in self.replaced]
        lines += [f"  = {k['name']}: {k['old']} ({k['reason']})" for k in self.kept]
        return "\n".join(lines)


def _first_conv_channels(model: nn.Module) -> int:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    raise ConversionError("model has no nn.Conv2d; nothing to convert")


def record_shapes(model: nn.Module, input_size: SizeLike, in_chans: int | None = None) -> dict:
    """One dry forward; returns {module name: (input shape, output shape)} for Conv2d/Linear."""
    try:
        h, w = as_hw(input_size, "input size")
    except ValueError as exc:
        raise ConversionError(str(exc)) from None
    in_chans = in_chans or _first_conv_channels(model)
    shapes: dict[str, tuple] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):

            def hook(mod, inp, out, name=name):
                shapes.setdefault(name, (tuple(inp[0].shape), tuple(out.shape)))

            hooks.append(m.register_forward_hook(hook))
    was_training = model.training
    device = next(model.parameters()).device
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_chans, h, w, device=device))
    except Exception as exc:  # a user's input size or architecture problem, re-raised readably
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConversionError(
            f"dry forward at input size {h}x{w} failed ({msg}); "
            "is the input size large enough for the model's downsampling?"
        ) from None
    finally:
        for hk in hooks:
            hk.remove()
        model.train(was_training)
    for name, m in model.named_modules():
        # Downsampling a map that is already smaller than the stride means the input is too
        # small for the architecture (torch pads its way through, but the maps collapse).
        if isinstance(m, nn.Conv2d) and name in shapes:
            ih, iw = shapes[name][0][-2:]
            if ih < m.stride[0] or iw < m.stride[1]:
                raise ConversionError(
                    f"input size {h}x{w} is too small for the model's downsampling: "
                    f"{name} (stride {tuple(m.stride)}) receives a {ih}x{iw} map"
                )
    return shapes


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _describe(m: nn.Module) -> str:
    if isinstance(m, nn.Conv2d):
        g = f", groups={m.groups}" if m.groups > 1 else ""
        return f"Conv2d({m.in_channels}->{m.out_channels}, k={tuple(m.kernel_size)}, s={tuple(m.stride)}{g})"
    if isinstance(m, nn.Linear):
        return f"Linear({m.in_features}->{m.out_features})"
    return type(m).__name__


def _plan(
    model: nn.Module, shapes: dict, niff_on_1x1: bool = False
) -> list[tuple[str, nn.Conv2d | nn.Linear, str, str | None]]:
    """(name, module, action, reason-if-kept) for every Conv2d/Linear the dry forward reached
    (an nn.Linear only with the action ``"pointwise_cl"``)."""
    plan: list[tuple[str, nn.Conv2d | nn.Linear, str, str | None]] = []
    for name, m in model.named_modules():
        if name not in shapes:
            continue
        (ishape, oshape) = shapes[name]
        if isinstance(m, nn.Linear):
            if len(ishape) == 4:
                plan.append((name, m, "pointwise_cl", None))
            continue
        if not isinstance(m, nn.Conv2d):
            continue
        if tuple(m.stride) != (1, 1):
            plan.append((name, m, "keep", "strided"))
        elif ishape[-2:] != oshape[-2:]:
            plan.append((name, m, "keep", "changes the feature-map size"))
        elif ishape[-2:] == (1, 1) and not niff_on_1x1:
            plan.append((name, m, "keep", "runs on a 1x1 map"))
        elif tuple(m.kernel_size) == (1, 1):
            plan.append((name, m, "pointwise", None))
        elif m.groups == m.in_channels == m.out_channels:
            plan.append((name, m, "depthwise", None))
        elif m.groups == m.in_channels:
            plan.append((name, m, "keep", "depthwise with a channel multiplier"))
        else:
            plan.append((name, m, "dense", None))
    return plan


def _pointwise_from(m: nn.Conv2d | nn.Linear) -> FreqPointwise:
    """A FreqPointwise with ``m``'s weights: channels-last for an nn.Linear (ConvNeXt's
    pointwise linears), channels-first for a 1×1 nn.Conv2d."""
    if isinstance(m, nn.Linear):
        new = FreqPointwise(m.in_features, m.out_features, channels_last=True)
        w = m.weight.detach().reshape(m.out_features, m.in_features, 1, 1)
    else:
        new = FreqPointwise(m.in_channels, m.out_channels, groups=m.groups)
        w = m.weight.detach()
    with torch.no_grad():
        new.weight.copy_(w)
    return new.to(m.weight.device)


def to_niff(
    model: nn.Module,
    input_size: SizeLike = DEFAULT_INPUT_SIZE,
    variant: str = "split",
    mlp: MLPSpec = "big",
    mode: str = "circular",
    in_chans: int | None = None,
    convert_pointwise: bool = True,
    niff_on_1x1: bool = False,
) -> nn.Module:
    """Replace a CNN's convolutions by NIFF layers in place and return the model.

    Args:
        model: any CNN (torchvision or a user's own ``nn.Module``).
        input_size: input H×W (int or pair) of the dry forward that records feature-map sizes.
        variant: ``"split"`` (depthwise NIFF + 1×1, the paper's default) or ``"full"``.
        mlp: MLP preset or config for every NIFF layer.
        mode: convolution mode (``"circular"``, ``"linear"``, ``"pad-zero"``, …).
        in_chans: input channels for the dry forward (default: the first conv's).
        convert_pointwise: also turn stride-1 1×1 convs and channels-last linears into
            bias-free :class:`FreqPointwise` layers.
        niff_on_1x1: also convert k×k convs that run on 1×1 maps (where a NIFF filter is a
            single complex number per channel); the authors' ResNet-18 at 32×32 does this.

    Returns:
        The same model object; ``model.niff_conversion`` holds the :class:`ConversionReport`.

    Raises:
        ConversionError: the dry forward fails or nothing can be converted.
    """
    if variant not in ("split", "full"):
        raise ConversionError(f"unknown NIFF variant {variant!r}; choose 'split' or 'full'")
    shapes = record_shapes(model, input_size, in_chans)
    report = ConversionReport()
    for name, m, action, reason in _plan(model, shapes, niff_on_1x1):
        fmap = tuple(shapes[name][0][-2:]) if action != "pointwise_cl" else tuple(shapes[name][0][1:3])
        if action == "keep" or (action.startswith("pointwise") and not convert_pointwise):
            report.kept.append(dict(name=name, old=_describe(m), reason=reason or "pointwise kept"))
            continue
        new: NIFFLayer | FreqPointwise
        if action in ("pointwise", "pointwise_cl"):
            new = _pointwise_from(m)
        else:
            assert isinstance(m, nn.Conv2d)  # _plan gives an nn.Linear only as "pointwise_cl"
            if action == "depthwise":
                new = DepthwiseNIFF(m.in_channels, mlp=mlp, mode=mode)
            elif variant == "full" and m.groups == 1:
                new = FullNIFF(m.in_channels, m.out_channels, mlp=mlp, mode=mode)
            elif variant == "full":
                report.kept.append(dict(name=name, old=_describe(m), reason="grouped conv has no full NIFF"))
                continue
            else:
                new = SplitNIFF(m.in_channels, m.out_channels, mlp=mlp, mode=mode, groups=m.groups)
        new = new.to(next(m.parameters()).device)
        new.fmap, new.layer_name = fmap, name
        if isinstance(new, SplitNIFF):
            new.pointwise.fmap, new.pointwise.layer_name = fmap, f"{name}.pointwise"
        _set_module(model, name, new)
        report.replaced.append(
            dict(name=name, old=_describe(m), new=type(new).__name__, kind=new.kind, fmap=list(fmap))
        )
    if not report.replaced:
        raise ConversionError(
            "no convolution could be converted (every conv is strided, size-changing or on a 1x1 map)"
        )
    model.niff_conversion = report  # type: ignore[assignment]  # nn.Module.__setattr__ is typed for tensors and modules only
    return model


def to_separated(model: nn.Module, input_size: SizeLike = DEFAULT_INPUT_SIZE, in_chans: int | None = None) -> nn.Module:
    """The paper's "separated conv" baseline: every stride-1 dense k×k conv → spatial depthwise
    k×k + 1×1, both bias-free (same padding and dilation as the original)."""
    shapes = record_shapes(model, input_size, in_chans)
    report = ConversionReport()
    for name, m, action, reason in _plan(model, shapes):
        # (an action "dense" is always an nn.Conv2d: the isinstance only tells the type checker)
        if action != "dense" or not isinstance(m, nn.Conv2d) or m.groups != 1:
            if isinstance(m, nn.Conv2d):
                report.kept.append(dict(name=name, old=_describe(m), reason=reason or action))
            continue
        new = nn.Sequential(
            # torch types a Conv2d's kernel_size/padding/dilation as tuple[int, ...] but its constructor
            # as tuple[int, int]: the same conv's own values, passed back.
            nn.Conv2d(
                m.in_channels,
                m.in_channels,
                m.kernel_size,  # type: ignore[arg-type]
                padding=m.padding,  # type: ignore[arg-type]
                dilation=m.dilation,  # type: ignore[arg-type]
                groups=m.in_channels,
                bias=False,
                padding_mode=m.padding_mode,
            ),
            nn.Conv2d(m.in_channels, m.out_channels, 1, bias=False),
        ).to(m.weight.device)
        _set_module(model, name, new)
        report.replaced.append(
            dict(name=name, old=_describe(m), new="depthwise+1x1", kind="separated", fmap=list(shapes[name][0][-2:]))
        )
    if not report.replaced:
        raise ConversionError("no stride-1 dense convolution to separate")
    model.niff_conversion = report  # type: ignore[assignment]  # nn.Module.__setattr__ is typed for tensors and modules only
    return model


def niff_layers(model: nn.Module, include_pointwise: bool = False) -> list[tuple[str, NIFFLayer | FreqPointwise]]:
    """(name, layer) of every NIFF layer in ``model`` (filters only unless ``include_pointwise``)."""
    types = (NIFFLayer, FreqPointwise) if include_pointwise else (NIFFLayer,)
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, types)]
    # A split layer's own 1×1 is part of that layer, not a layer of its own.
    inner = {f"{n}.pointwise" for n, m in found if isinstance(m, SplitNIFF)}
    return [(n, m) for n, m in found if n not in inner]
