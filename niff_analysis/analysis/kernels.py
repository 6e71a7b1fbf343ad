"""Spatial kernels and frequency responses of a model's layers, on the sizes they run at (SPEC §4).

For a NIFF layer the MLPs are evaluated once, on the centred frequency grid of the feature-map
size recorded when the model was converted (``layer.fmap``; the padding modes use their 2H×2W
filter grid), and the centred real kernel is k = fftshift(real(ifft2(ifftshift(W)))).

Plain convolutions (``include_conv=True``, or any model without NIFF layers) are analysed the
same way: every stride-1, size-preserving k×k ``nn.Conv2d`` with k > 1 that runs on a map larger
than 1×1 has its weights zero-embedded in a grid of its feature-map size (recorded by one dry
forward with :func:`niff_analysis.models.record_shapes` at the model's input size). The weights
are flipped before embedding, because ``nn.Conv2d`` computes a cross-correlation while a NIFF
kernel is a convolution kernel: after the flip, both kinds of kernel act on a feature map the
same way (x ⊛ k), with the kernel origin at the centre pixel (H//2, W//2). A centred H×W grid
holds the offsets −(H//2) … H−1−H//2; taps of a kernel that reaches further (only possible when the
kernel, dilation included, is wider than about half the map) cannot be represented and are
dropped; their count is kept in ``LayerKernels.extra["dropped_taps"]``.

Which kernels a dense convolution gives: one per (output, input) pair, as a (Cout, Cin/groups,
H, W) array (like a full NIFF layer); a depthwise convolution (groups = Cin = Cout) gives one per
channel, (C, H, W).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import pandas as pd
import torch
from torch import nn

from .._types import PathLike, Size, SizeLike, as_hw
from ..errors import NiffError, SelectionError
from ..layers.niff import NIFFLayer, centred_to_kernel
from ..models.config import ModelConfig
from .schema import FMAP_H, FMAP_W, LAYER, STAGE, layer_columns

#: Module-name components that name a stage of a known architecture (ResNet ``layer2``,
#: DenseNet ``denseblock3``, timm-style ``stages``/``stage2``/``block1``).
_STAGE_RE = re.compile(r"^(layer\d+|stage\d+|denseblock\d+|block\d+|stages)$")


@dataclass
class LayerKernels:
    """The kernels of one layer, as every analysis consumes them.

    Attributes:
        name: module name (what ``model.get_submodule`` takes).
        kind: ``"depthwise"``, ``"split"``, ``"full"`` (NIFF) or ``"conv"`` (plain convolution).
        fmap: (H, W) of the feature map the layer runs at.
        stage: the first dotted component of ``name`` that names a stage (e.g. ``"layer1"``);
            where the architecture's naming gives none, :func:`extract_kernels` gives the first
            component of ``name`` (:func:`layer_stage`); ``None`` only where set so by hand.
        kernels: real, centred float32 CPU tensor, (C, H, W) or (Cout, Cin, H, W).
        response: the centred complex frequency response of the same shape (NIFF layers only),
            or ``None`` for plain convolutions.
        in_channels: input channels of the layer.
        out_channels: output channels of the layer.
        extra: details by kind: ``mode`` (NIFF convolution mode); ``kernel_size``, ``dilation``, ``groups``
            and ``dropped_taps`` (plain convolutions).
    """

    name: str
    kind: str
    fmap: Size
    stage: str | None
    kernels: torch.Tensor
    response: torch.Tensor | None = None
    in_channels: int = 0
    out_channels: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def flat(self) -> torch.Tensor:
        """Kernels as (N, H, W); full/dense (o, i) pairs flattened to index o·Cin + i."""
        return self.kernels.reshape(-1, *self.kernels.shape[-2:])

    @property
    def size(self) -> Size:
        """(H, W) of the kernel grid (the feature-map size; 2H×2W for the padding modes)."""
        return int(self.kernels.shape[-2]), int(self.kernels.shape[-1])


def count_nonfinite(lk: LayerKernels) -> int:
    """How many of the layer's kernels (or, for NIFF layers, responses) hold NaN or Inf."""
    flat = lk.flat.reshape(lk.flat.shape[0], -1)
    bad = ~torch.isfinite(flat).all(1)
    if lk.response is not None:
        resp = torch.view_as_real(lk.response.reshape(flat.shape[0], -1))
        bad |= ~torch.isfinite(resp).reshape(flat.shape[0], -1).all(1)
    return int(bad.sum())


def require_finite(kernels: Sequence[LayerKernels], what: str) -> None:
    """Refuse layers whose kernels hold NaN or Inf: no analysis result of them means anything.

    Raises:
        NiffError: naming the first such layer and how many of its kernels are affected.
    """
    for lk in kernels:
        bad = count_nonfinite(lk)
        if bad:
            raise NiffError(
                f"layer {lk.name}: {bad} of {lk.flat.shape[0]} kernels contain NaN or Inf; {what} needs finite kernels"
            )


def stage_of(name: str) -> str | None:
    """First dotted component of a module name that names a stage, else ``None``."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if _STAGE_RE.match(part):
            # ``stages.2`` (timm) names the stage by its index.
            return f"{part}.{parts[i + 1]}" if part == "stages" and i + 1 < len(parts) else part
    return None


def layer_stage(name: str) -> str:
    """The stage of a layer as every output names it: the one its name gives (:func:`stage_of`),
    else the first component of its dotted name (a stem ``conv1`` is a stage of its own; an
    ``nn.Sequential``'s ``0``, ``2``, … are its blocks), the rule the figures colour by
    (:func:`niff_analysis.plotting.style.palette_stage`), so no table has an empty stage."""
    return stage_of(name) or name.split(".")[0]


def _load(model_or_path, device: str) -> nn.Module:
    if isinstance(model_or_path, nn.Module):
        return model_or_path
    from ..checkpoint import load_checkpoint

    if model_or_path is not None and not isinstance(model_or_path, (str, os.PathLike)):
        raise NiffError(f"expected a model, a checkpoint path or None, got {type(model_or_path).__name__}")
    return load_checkpoint(model_or_path, device=device)


def _input_size(model: nn.Module, input_size: SizeLike | None) -> Size:
    if input_size is None:
        cfg = ModelConfig.of(model)
        if cfg is not None:
            return cfg.input_size
        raise NiffError(
            "cannot record the feature-map sizes of this model's convolutions: "
            "pass input_size=(H, W), the size it was trained at"
        )
    try:
        return as_hw(input_size, "input_size")
    except ValueError as exc:
        raise NiffError(str(exc)) from None


def _conv_taps(conv: nn.Conv2d, fmap: Size) -> tuple[torch.Tensor, int]:
    """Zero-embed a conv's flipped weights, centred, in an fmap-sized grid.

    Returns:
        ((Cout, Cin/g, H, W) kernels, number of spatial taps that did not fit the grid).
    """
    h, w = fmap
    weight = conv.weight.detach().float().cpu()
    cout, cin_g, kh, kw = weight.shape
    out = torch.zeros(cout, cin_g, h, w)
    dil = conv.dilation
    if isinstance(conv.padding, str):  # "same": PyTorch pads total//2 before, the rest after
        pad = tuple(d * (k - 1) // 2 for d, k in zip(dil, (kh, kw)))
    else:
        pad = tuple(conv.padding)
    # y[i] = Σ_m w[m] x[i + d·m − p]  ⇒  convolution tap at offset j = p − d·m.
    cy, cx = h // 2, w // 2
    dropped = 0
    for m in range(kh):
        row = cy + pad[0] - dil[0] * m
        for n in range(kw):
            col = cx + pad[1] - dil[1] * n
            if 0 <= row < h and 0 <= col < w:
                out[:, :, row, col] = weight[:, :, m, n]
            else:
                dropped += 1
    return out, dropped


def conv_inventory(model: nn.Module, input_size=None) -> list[dict]:
    """Every plain ``nn.Conv2d`` of ``model``, and whether the analyses can take it.

    One row per conv, in model order: ``name``, ``kernel`` (e.g. ``"3x3"``), ``stride``,
    ``groups``, ``kind`` (``dense``, ``depthwise`` or ``grouped``), ``fmap`` (the input map it
    runs on at ``input_size``, or ``None`` when the dry forward never reaches it), ``analysed``,
    and ``reason`` (why not, ``None`` when analysed). Analysed are the stride-1, size-preserving
    k×k convs with k > 1 on maps larger than 1×1 (the module docstring says why).
    """
    from ..models.convert import record_shapes

    convs = [(n, m) for n, m in model.named_modules() if type(m) is nn.Conv2d]
    analysable = any(tuple(m.stride) == (1, 1) and max(m.kernel_size) > 1 for _, m in convs)
    shapes = {}
    if any(max(m.kernel_size) > 1 for _, m in convs):  # one dry forward gives every map size
        cfg = ModelConfig.of(model)
        in_chans = cfg.in_chans if cfg is not None else None
        try:
            shapes = record_shapes(model, _input_size(model, input_size), in_chans)
        except NiffError:
            if analysable:  # the sizes are needed; without them, only the fmap column is empty
                raise
    rows = []
    for name, conv in convs:
        ishape, oshape = shapes.get(name, (None, None))
        fmap = tuple(int(s) for s in ishape[-2:]) if ishape else None
        if max(conv.kernel_size) == 1:
            reason = "1x1 (no spatial extent)"
        elif tuple(conv.stride) != (1, 1):
            reason = f"stride {_hw(conv.stride)} (input and output maps differ)"
        elif fmap is None:
            reason = "not reached by the forward pass"
        elif fmap != tuple(oshape[-2:]):
            reason = f"output map {_hw(oshape[-2:])} differs from its input's"
        elif fmap == (1, 1):
            reason = "runs on a 1x1 map"
        else:
            reason = None
        depthwise = conv.groups == conv.in_channels == conv.out_channels
        rows.append(
            dict(
                name=name,
                kernel="x".join(map(str, conv.kernel_size)),
                stride=_hw(conv.stride),
                groups=int(conv.groups),
                kind="depthwise" if depthwise else "dense" if conv.groups == 1 else "grouped",
                fmap=list(fmap) if fmap else None,
                analysed=reason is None,
                reason=reason,
            )
        )
    return rows


def _hw(pair) -> str:
    """``"2"`` for (2, 2), ``"2x1"`` for (2, 1)."""
    a, b = (int(v) for v in pair)
    return str(a) if a == b else f"{a}x{b}"


def _plain_convs(model: nn.Module, input_size) -> list[tuple[str, nn.Conv2d, Size]]:
    """(name, conv, fmap) of every plain conv the analyses can take (:func:`conv_inventory`)."""
    # conv_inventory lists nn.Conv2d modules only, and an analysed one with its (H, W)
    return [
        (r["name"], cast(nn.Conv2d, model.get_submodule(r["name"])), cast(Size, tuple(r["fmap"])))
        for r in conv_inventory(model, input_size)
        if r["analysed"]
    ]


def extract_kernels(
    model_or_path: nn.Module | PathLike | None = None,
    layers: str | Sequence[str] = "*",
    include_conv: bool = False,
    device: str = "cpu",
    input_size: SizeLike | None = None,
) -> list[LayerKernels]:
    """Spatial kernels (and frequency responses) of every selected layer, in model order.

    Args:
        model_or_path: a model, a checkpoint path, or ``None`` for the bundled default.
        layers: fnmatch glob (or several) on module names.
        include_conv: also take plain stride-1 k×k convolutions. A model without NIFF layers
            always gives its plain convolutions.
        device: where a checkpoint is loaded and its MLPs run (``auto``, ``cpu``, ``cuda``,
            ``mps``); a model passed in is evaluated where it lives.
        input_size: input H×W for recording plain convs' feature maps (default: the size the
            model was built for, ``model.niff_config.input_size``).

    Returns:
        One :class:`LayerKernels` per layer, tensors on the CPU.

    Raises:
        SelectionError: ``layers`` matches no layer (the message names the available ones).
        NiffError: a NIFF layer has no recorded feature-map size, or a layer's kernels hold
            NaN/Inf (non-finite weights, or finite MLP weights whose output overflows float32).
    """
    model = _load(model_or_path, device)
    patterns = [layers] if isinstance(layers, str) else list(layers)
    niff = [(n, m) for n, m in model.named_modules() if isinstance(m, NIFFLayer)]
    entries: list[tuple[str, NIFFLayer | nn.Conv2d, Size | None]] = [(n, m, None) for n, m in niff]
    if include_conv or not niff:
        entries += [(n, m, f) for n, m, f in _plain_convs(model, input_size)]
        order = {n: i for i, (n, _) in enumerate(model.named_modules())}
        entries.sort(key=lambda e: order[e[0]])
    available = [e[0] for e in entries]
    chosen = [e for e in entries if any(fnmatch.fnmatchcase(e[0], p) for p in patterns)]
    if not chosen:
        what = ", ".join(available) if available else "none (the model has no NIFF layers or stride-1 k×k convs)"
        raise SelectionError(f"no layer matches {' '.join(map(repr, patterns))}; available layers: {what}")

    out = []
    for name, mod, fmap in chosen:
        if isinstance(mod, NIFFLayer):  # the entries without a map size (a plain conv has one)
            if mod.fmap is None:
                raise NiffError(
                    f"layer {name} has no recorded feature-map size (convert the model with to_niff or set layer.fmap)"
                )
            with torch.no_grad():
                resp = mod.frequency_response()  # one batched MLP evaluation on the recorded grid
                kern = centred_to_kernel(resp)
            out.append(
                LayerKernels(
                    name=name,
                    kind=mod.kind,
                    fmap=cast(Size, tuple(int(s) for s in mod.fmap)),
                    stage=layer_stage(name),
                    kernels=kern.float().cpu().contiguous(),
                    response=resp.to(torch.complex64).cpu().contiguous(),
                    in_channels=mod.in_channels,
                    out_channels=mod.out_channels,
                    extra=dict(mode=mod.mode),
                )
            )
        else:
            assert fmap is not None  # _plain_convs gives every conv its map size
            kern, dropped = _conv_taps(mod, fmap)
            depthwise = mod.groups == mod.in_channels == mod.out_channels
            if depthwise:
                kern = kern[:, 0]
            out.append(
                LayerKernels(
                    name=name,
                    kind="conv",
                    fmap=fmap,
                    stage=layer_stage(name),
                    kernels=kern.contiguous(),
                    response=None,
                    in_channels=mod.in_channels,
                    out_channels=mod.out_channels,
                    extra=dict(
                        kernel_size=tuple(mod.kernel_size),
                        dilation=tuple(mod.dilation),
                        groups=mod.groups,
                        dropped_taps=dropped,
                    ),
                )
            )
        bad = count_nonfinite(out[-1])
        if bad:
            raise NiffError(
                f"layer {name}: {bad} of {out[-1].flat.shape[0]} kernels contain NaN or Inf "
                "(non-finite weights, or an MLP output that overflows float32); "
                "refusing to analyse them"
            )
    return out


def sample_channels(n_total: int, n: int) -> np.ndarray:
    """``n`` channel indices spread evenly over ``range(n_total)`` (deterministic)."""
    return np.unique(np.linspace(0, n_total - 1, num=min(n, n_total)).round().astype(int))


def subsample(kernels: Sequence[LayerKernels], max_kernels: int | None) -> list[LayerKernels]:
    """Layers with more than ``max_kernels`` kernels cut to an evenly spaced sample of them
    (as an (N, H, W) stack; ``extra["sampled_from"]`` keeps the original count)."""
    if max_kernels is None:
        return list(kernels)
    if max_kernels < 1:
        raise SelectionError(f"max_kernels must be a positive integer, got {max_kernels}")
    out = []
    for lk in kernels:
        n = lk.flat.shape[0]
        if n <= max_kernels:
            out.append(lk)
            continue
        idx = sample_channels(n, max_kernels)
        resp = None if lk.response is None else lk.response.reshape(n, *lk.size)[idx]
        out.append(
            dataclasses.replace(
                lk, kernels=lk.flat[idx].contiguous(), response=resp, extra=dict(lk.extra, sampled_from=n)
            )
        )
    return out


def kernel_table(kernels: Sequence[LayerKernels]) -> pd.DataFrame:
    """One row per layer: layer, stage, kind, fmap_h, fmap_w, kernel_h, kernel_w, shape of the
    kernel tensor, n_kernels and the mean L1 norm of a kernel (``l1_mean``)."""
    rows = [
        dict(
            layer_columns(lk),
            kind=lk.kind,
            kernel_h=lk.size[0],
            kernel_w=lk.size[1],
            shape="x".join(map(str, lk.kernels.shape)),
            n_kernels=lk.flat.shape[0],
            l1_mean=float(lk.flat.abs().sum((1, 2)).mean()),
        )
        for lk in kernels
    ]
    return pd.DataFrame(
        rows, columns=[LAYER, STAGE, "kind", FMAP_H, FMAP_W, "kernel_h", "kernel_w", "shape", "n_kernels", "l1_mean"]
    )
