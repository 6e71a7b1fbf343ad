"""Effective receptive fields (Luo et al. 2016; the protocol of RepLKNet's ERF analysis).

For each chosen module (by default every stage: ``layer1`` … ``layer4`` of a ResNet, the modules
whose name is a stage, see :func:`~niff_analysis.analysis.kernels.stage_of`), the gradient of the
sum over channels of that module's output at its central pixel (H//2, W//2) with respect to the
input image; absolute values summed over input channels and accumulated over the images. The
model runs in eval mode (BatchNorm uses its running statistics, so images do not interact and
one backward pass per module covers a whole batch); nothing is random.

:func:`erf_area_ratios` measures each map like a kernel (Eq. 6 on the ERF): the side of the
smallest centred square window (odd sides 1, 3, 5, …, the full size last) holding t % of the
total contribution, and that square's share of the input's area (RepLKNet's "high-contribution
area ratio"), for t = 20, 30, 50, 99 by default.
"""

from __future__ import annotations

import fnmatch
from typing import Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..errors import SelectionError
from .kernels import stage_of
from .mass import mass_ratios
from .schema import STAGE, THRESHOLD

THRESHOLDS = (20, 30, 50, 99)


def stage_modules(model: nn.Module, layers: Optional[Union[str, Sequence[str]]] = None) -> list[str]:
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
        what = "no module is named like a stage; choose modules with layers=" if layers is None else \
            f"no module matches {layers!r}"
        raise SelectionError(f"{what} (modules: {', '.join(names[:12])}, …)")
    return chosen


def effective_receptive_fields(model: nn.Module, images: torch.Tensor,
                               layers: Optional[Union[str, Sequence[str]]] = None,
                               batch_size: int = 50) -> dict[str, np.ndarray]:
    """Accumulated |∂ output centre / ∂ input| per chosen module (module docstring).

    Args:
        model: the network (put in eval mode here and restored afterwards).
        images: (N, C, H, W) normalised input images.
        layers: module selection (see :func:`stage_modules`).
        batch_size: images per backward pass.

    Returns:
        Module name → float64 (H, W) map, in model order.
    """
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
            x = images[start:start + batch_size].to(param.device, param.dtype).clone().requires_grad_(True)
            outputs.clear()
            model(x)
            for i, n in enumerate(names):
                out = outputs[n]
                if out.ndim != 4:
                    raise SelectionError(f"module {n} gives a {out.ndim}-D output; an ERF needs (N, C, H, W)")
                h, w = out.shape[-2:]
                (grad,) = torch.autograd.grad(out[:, :, h // 2, w // 2].sum(), x, retain_graph=i < len(names) - 1)
                maps[n] += grad.abs().sum(dim=(0, 1)).double().cpu().numpy()
    finally:
        for hk in hooks:
            hk.remove()
        model.train(was_training)
    return maps


def erf_area_ratios(maps: dict[str, np.ndarray], thresholds: Sequence[float] = THRESHOLDS) -> pd.DataFrame:
    """Per module and threshold t: the side of the smallest centred square holding t % of the
    contribution, and its area as a fraction of the input's.

    Returns:
        Columns stage, threshold, side, area_ratio (NaN for a map without contribution).
    """
    rows = []
    for name, m in maps.items():
        h, w = m.shape
        windows, ratios = mass_ratios(torch.as_tensor(m)[None])
        for t in thresholds:
            hit = np.flatnonzero(ratios[0] >= t / 100 - 1e-12)
            side = float(windows[hit[0]]) if len(hit) else float("nan")
            rows.append({STAGE: name, THRESHOLD: t, "side": side,
                         "area_ratio": min(side, h) * min(side, w) / (h * w) if len(hit) else float("nan")})
    return pd.DataFrame(rows, columns=[STAGE, THRESHOLD, "side", "area_ratio"])


def dataset_images(dataset: str, n: int, data_dir=None, image_size: int = 32) -> torch.Tensor:
    """The first ``n`` normalised test images of a dataset (as the trainer feeds them).

    Raises:
        DataError: the dataset is not available.
        SelectionError: it has fewer than ``n`` test images (never silently fewer).
    """
    from ..errors import SelectionError
    from ..train.data import TensorDataset, load_dataset, normalise

    data = load_dataset(dataset, data_dir, "test", image_size=image_size)
    if n > len(data):
        raise SelectionError(f"asked for {n} images, but the {dataset} test set has {len(data)}")
    if isinstance(data, TensorDataset):
        return normalise(data.images[:n], data.mean, data.std)
    return torch.stack([data[i][0] for i in range(min(n, len(data)))])
