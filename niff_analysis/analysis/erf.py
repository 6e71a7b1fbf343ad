"""Effective receptive fields, under two protocols.

For each chosen module (by default every stage: ``layer1`` … ``layer4`` of a ResNet, the modules
whose name is a stage, see :func:`~niff_analysis.analysis.kernels.stage_of`), the gradient of that
module's output at its central pixel (H//2, W//2) with respect to the input image. The model runs
in eval mode (BatchNorm uses its running statistics, so images do not interact and one backward
pass per module covers a whole batch); nothing is random. Two protocols (:data:`PROTOCOLS`) turn
the gradients into a map:

* ``"luo"`` (the default; Luo et al. 2016, "Understanding the effective receptive field in deep
  CNNs"): the gradient of the sum over channels of the raw central output; its absolute value
  summed over input channels and over the images.
* ``"replknet"`` (the script of RepLKNet, Ding et al. 2022, ``erf/visualize_erf.py`` and
  ``erf/analyze_erf.py``, which later large-kernel papers copy): the gradient of the sum over
  channels of relu(central output), per image; relu of that gradient (negative contributions
  dropped, per input channel and pixel), summed over input channels; the mean over the images; then
  log10(1 + x) of the mean. The logarithm compresses the map, so its squares tend to be larger
  than ``luo``'s, and they depend on the gradient's absolute scale (the input normalisation, the model's
  output scale), which ``luo``'s shares do not. That script also skips images whose map holds NaN;
  here a NaN map is an error.

:func:`erf_area_ratios` measures each map like a kernel (Eq. 6 on the ERF): the side of the
smallest centred square window (odd sides 1, 3, 5, …, the full size last) holding t % of the
total, and that square's share of the input's area (RepLKNet's "high-contribution area ratio"),
for t = 20, 30, 50, 99 by default. RepLKNet's ``get_rectangle`` searches the odd sides 3 … 2·(H//2)−1
for a share strictly above t and finds nothing beyond them; here side 1 and the full size are
candidates too and the share must reach t. For both protocols the tables carry a ``protocol``
column.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..errors import NiffError, SelectionError
from .kernels import stage_of
from .mass import mass_ratios
from .schema import STAGE, THRESHOLD

THRESHOLDS = (20, 30, 50, 99)
PROTOCOLS = ("luo", "replknet")
PROTOCOL = "protocol"


def stage_modules(model: nn.Module, layers: str | Sequence[str] | None = None) -> list[str]:
    """Names of the modules whose outputs :func:`effective_receptive_fields` differentiates.

    Args:
        layers: fnmatch glob(s) on module names; ``None``: every module whose name is a stage.

    Raises:
        SelectionError: nothing matches.
    """
    names = [n for n, _ in model.named_modules() if n]
    if layers is None:
        chosen = [n for n in names if stage_of(n) == n]
    else:
        patterns = [layers] if isinstance(layers, str) else list(layers)
        chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    if not chosen:
        what = (
            "no module is named like a stage; choose modules with layers="
            if layers is None
            else f"no module matches {layers!r}"
        )
        raise SelectionError(f"{what} (modules: {', '.join(names[:12])}, …)")
    return chosen


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise SelectionError(f"unknown ERF protocol {protocol!r}; choose from {', '.join(PROTOCOLS)}")


def effective_receptive_fields(
    model: nn.Module,
    images: torch.Tensor,
    layers: str | Sequence[str] | None = None,
    batch_size: int = 50,
    protocol: str = "luo",
) -> dict[str, np.ndarray]:
    """The effective receptive field of each chosen module under ``protocol`` (module docstring).

    Args:
        model: the network (put in eval mode here and restored afterwards).
        images: (N, C, H, W) normalised input images.
        layers: module selection (see :func:`stage_modules`).
        batch_size: images per backward pass.
        protocol: ``"luo"``: Σ over images and input channels of |∂ Σ_c out_c(centre) / ∂x|;
            ``"replknet"``: log10(1 + mean over images of Σ over input channels of
            relu(∂ Σ_c relu(out_c(centre)) / ∂x)).

    Returns:
        Module name → float64 (H, W) map, in model order.

    Raises:
        SelectionError: unknown protocol, no module matches, or a module's output is not 4-D.
        NiffError: a map holds NaN or Inf.
    """
    _check_protocol(protocol)
    names = stage_modules(model, layers)
    modules = dict(model.named_modules())
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    outputs: dict[str, torch.Tensor] = {}
    hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: outputs.__setitem__(n, o)) for n in names]
    maps = {n: np.zeros(images.shape[-2:], dtype=np.float64) for n in names}
    try:
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(param.device, param.dtype).clone().requires_grad_(True)
            outputs.clear()
            model(x)
            for i, n in enumerate(names):
                out = outputs[n]
                if out.ndim != 4:
                    raise SelectionError(f"module {n} gives a {out.ndim}-D output; an ERF needs (N, C, H, W)")
                h, w = out.shape[-2:]
                centre = out[:, :, h // 2, w // 2]
                if protocol == "replknet":
                    centre = torch.relu(centre)
                # Images do not interact in eval mode: the gradient of the batch sum is each
                # image's own gradient in its own slice of x.
                (grad,) = torch.autograd.grad(centre.sum(), x, retain_graph=i < len(names) - 1)
                grad = grad.abs() if protocol == "luo" else torch.relu(grad)
                maps[n] += grad.sum(dim=(0, 1)).double().cpu().numpy()
    finally:
        for hk in hooks:
            hk.remove()
        model.train(was_training)
    for n, m in maps.items():
        if not np.isfinite(m).all():
            raise NiffError(f"module {n}: the receptive field holds NaN or Inf (non-finite gradients)")
        if protocol == "replknet":
            maps[n] = np.log10(1.0 + m / len(images))
    return maps


def erf_area_ratios(
    maps: dict[str, np.ndarray], thresholds: Sequence[float] = THRESHOLDS, protocol: str = "luo"
) -> pd.DataFrame:
    """Per module and threshold t: the side of the smallest centred square holding t % of the
    map's total, and its area as a fraction of the input's.

    Args:
        maps: module → map, as :func:`effective_receptive_fields` returns them.
        thresholds: shares t in %.
        protocol: the protocol the maps were made with, recorded in the ``protocol`` column.

    Returns:
        Columns stage, protocol, threshold, side, area_ratio (NaN for a map without
        contribution).
    """
    _check_protocol(protocol)
    rows = []
    for name, m in maps.items():
        h, w = m.shape
        windows, ratios = mass_ratios(torch.as_tensor(m)[None])
        for t in thresholds:
            hit = np.flatnonzero(ratios[0] >= t / 100 - 1e-12)
            side = float(windows[hit[0]]) if len(hit) else float("nan")
            rows.append(
                {
                    STAGE: name,
                    PROTOCOL: protocol,
                    THRESHOLD: t,
                    "side": side,
                    "area_ratio": min(side, h) * min(side, w) / (h * w) if len(hit) else float("nan"),
                }
            )
    return pd.DataFrame(rows, columns=[STAGE, PROTOCOL, THRESHOLD, "side", "area_ratio"])
