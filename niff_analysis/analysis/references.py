"""A scale to read every kernel statistic on: the same statistic for reference kernels on the same map.

"0.606 of the mass inside 9×9" means little alone. Beside each layer's statistic the analyses put
the same statistic computed on kernels whose answer is known, on the layer's own feature-map size
and under the same measure:

* **delta**: a kernel that is a single pixel at the origin: mass ratio 1 at every window, every
  effective size 1 px (the most localised kernel there is);
* **white noise**: :data:`NOISE_KERNELS` kernels of i.i.d. standard normal pixels drawn with the
  fixed seed :data:`NOISE_SEED` (the same draw on every run and machine): a kernel that uses the
  whole map without preferring its centre. For i.i.d. pixels every pixel holds the same share of
  the mass in expectation, so the expected ratio of a window is its clipped area over H·W, under
  either measure (|k| or k²): :func:`expected_noise_ratio`;
* **initialisation**: the layer's kernels before training (the run's ``init/`` checkpoint, or the
  model rebuilt from the recorded seed: :func:`niff_analysis.checkpoint.load_initial`); computed by
  the callers, who have the model.

Noise is drawn on the whole map also for plain convolutions (a baseline's 3×3 kernels): it says what
a kernel that used the map would give, not what a random 3×3 kernel gives.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from .kernels import LayerKernels
from .mass import kernel_mass, mass_summary, window_sizes
from .schema import LAYER, WINDOW

NOISE_KERNELS = 512  #: white-noise kernels per map size
NOISE_SEED = 0  #: their seed
REFERENCES = ("delta", "noise")


def delta_kernels(h: int, w: int, n: int = 1) -> torch.Tensor:
    """``n`` h×w kernels with 1 at the origin (h//2, w//2) and 0 elsewhere (float32)."""
    k = torch.zeros(n, h, w)
    k[:, h // 2, w // 2] = 1.0
    return k


def white_noise_kernels(h: int, w: int, n: int = NOISE_KERNELS, seed: int = NOISE_SEED) -> torch.Tensor:
    """``n`` h×w kernels of i.i.d. standard normal pixels from a generator seeded with ``seed``
    (float32; the same seed gives the same kernels)."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn(n, h, w, generator=g, dtype=torch.float64).float()


def expected_noise_ratio(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """The expected mass ratio of i.i.d. white-noise h×w kernels at every window of Eq. 6, under
    either measure: (windows, area of the window clipped to the kernel / (h·w)), i.e. s²/(H·W) for
    a window inside the kernel.

    Every pixel's share of an exchangeable kernel's mass has the same expectation, 1/(H·W), so a
    window holding A pixels holds A/(H·W) in expectation (exactly, not only for large kernels).
    """
    windows = window_sizes(h, w)
    area = np.minimum(windows, h) * np.minimum(windows, w)
    area[-1] = h * w  # the last window is the whole kernel
    return windows, area / (h * w)


def reference_layers(kernels: Sequence[LayerKernels], kind: str) -> list[LayerKernels]:
    """Each layer again, its kernels replaced by ``kind`` reference kernels on its map: ``"delta"``
    (one kernel) or ``"noise"`` (:data:`NOISE_KERNELS` seeded white-noise kernels). Names,
    stages, feature maps and kinds stay, so the references group and join like the layers."""
    if kind not in REFERENCES:
        raise ValueError(f"unknown reference {kind!r}; choose from {', '.join(REFERENCES)}")
    out = []
    for lk in kernels:
        h, w = lk.size
        k = delta_kernels(h, w) if kind == "delta" else white_noise_kernels(h, w)
        out.append(dataclasses.replace(lk, kernels=k, response=None, in_channels=len(k), out_channels=len(k)))
    return out


def mass_scale(
    kernels: Sequence[LayerKernels], measure: str = "l1", init: Sequence[LayerKernels] | None = None
) -> pd.DataFrame:
    """Per layer and window, the mean mass ratio of the references under ``measure``.

    Returns:
        Columns layer, window, delta, noise and, when ``init`` is given, init (NaN for a layer the
        initialisation lacks).
    """
    frames = []
    for kind in REFERENCES:
        s = mass_summary(kernel_mass(reference_layers(kernels, kind), measure))
        frames.append(s[[LAYER, WINDOW, "mean"]].rename(columns={"mean": kind}))
    if init is not None:
        names = {lk.name for lk in kernels}
        s = mass_summary(kernel_mass([lk for lk in init if lk.name in names], measure))
        frames.append(s[[LAYER, WINDOW, "mean"]].rename(columns={"mean": "init"}))
    out = frames[0]
    for f in frames[1:]:
        out = out.merge(f, on=[LAYER, WINDOW], how="left")
    return out
