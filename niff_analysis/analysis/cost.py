"""Cost of NIFF against spatial convolutions: FLOP formulas and timing helpers (SPEC §4, Fig. 8).

torch's FLOP counter counts FFTs as zero, so the FLOPs here come from closed-form counts, all
per channel and per image, for an H×W feature map with N = H·W points:

* **FFT.** A complex FFT of N points costs the standard 5·N·log2(N) real flops (radix-2
  Cooley–Tukey count, used for non-powers of two too); a real-input ``rfft2`` (or the inverse
  ``irfft2``) costs half of that, 2.5·N·log2(N).
* **Product.** One complex multiply (6 real flops: 4 multiplies, 2 adds) per bin of the
  half-spectrum, H·(W//2 + 1) bins.
* **NIFF** = rfft2 + product + irfft2 = 5·N·log2(N) + 6·H·(W//2 + 1).
* **MLP** (reported separately, and added to NIFF in ``niff_train_flops``; it runs once per layer
  and call, not per image: a training step evaluates it every step, eval mode caches its
  filters): 2 flops per multiply-add of every linear layer, at all N grid points, for the
  ``real`` and the ``imag`` MLP; biases and activations are not counted. At 7×7 with 64
  channels it costs 2× the FFT-and-product FLOPs of a batch of 8 and 16× those of one image.
* **Spatial conv with a feature-map-sized kernel**, "same" output: each of the N outputs sums
  N products, 2·N·N = 2·H·W·H·W flops.
* **3×3 depthwise conv** ("same" output): 2·9·N flops.

Totals in :func:`cost_table` are multiplied by ``batch·channels`` (depthwise: one filter per
channel). The timing helpers run contenders round-robin (in :func:`cost_table`: every contender
at every size in each round) so that a background load slows all of them alike, which keeps
side-by-side ratios meaningful on a busy machine; the table records the spread, the threads and
the load.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import TypeVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .._types import Size, SizeLike, as_hw
from ..layers import DepthwiseNIFF
from ..layers.mlp import MLPSpec, resolve_mlp

_Key = TypeVar("_Key", bound=Hashable)  # time_interleaved's result is keyed as its input


def _hw(size: SizeLike) -> Size:
    return as_hw(size, "feature-map size")


# --------------------------------------------------------------------------- FLOP formulas
def fft_flops(size: SizeLike, real: bool = True) -> float:
    """Real flops of one 2-D FFT of an H×W map: 5·N·log2(N), halved for ``real`` (rfft2/irfft2)."""
    h, w = _hw(size)
    n = h * w
    full = 5.0 * n * math.log2(n) if n > 1 else 0.0
    return full / 2 if real else full


def product_flops(size: SizeLike) -> float:
    """Complex elementwise product on the rfft half-spectrum: 6·H·(W//2 + 1)."""
    h, w = _hw(size)
    return 6.0 * h * (w // 2 + 1)


def niff_flops(size: SizeLike) -> float:
    """One depthwise NIFF filter on one channel: rfft2 + product + irfft2."""
    return 2 * fft_flops(size, real=True) + product_flops(size)


def mlp_flops(size: SizeLike, channels: int, mlp: MLPSpec = "big") -> float:
    """Both frequency MLPs (``real`` and ``imag``) on the H×W grid: 2·Σ in·out flops per point."""
    h, w = _hw(size)
    sizes = [2, *resolve_mlp(mlp).hidden, int(channels)]
    per_point = sum(2 * a * b for a, b in zip(sizes[:-1], sizes[1:]))
    return 2.0 * per_point * h * w


def spatial_flops(size: SizeLike, kernel: SizeLike | None = None) -> float:
    """Depthwise spatial conv, "same" output: 2·H·W·kh·kw (kernel default: the map size)."""
    h, w = _hw(size)
    kh, kw = _hw(kernel) if kernel is not None else (h, w)
    return 2.0 * h * w * kh * kw


# --------------------------------------------------------------------------- timing helpers
def synchronize(device: str | torch.device | None = None) -> None:
    """Wait for queued work on a CUDA device (no-op elsewhere) so wall-clock times are real."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    fns: Mapping[_Key, Callable[[], object]],
    repeats: int = 5,
    warmup: int = 1,
    device: str | torch.device | None = None,
    max_seconds: float | None = None,
) -> dict[_Key, list[float]]:
    """Time several callables round-robin (one call of each per round).

    Args:
        fns: name → zero-argument callable.
        repeats: timed rounds.
        warmup: untimed rounds first (allocator, MKL/cuFFT plans, caches).
        device: synchronised around every call when it is a CUDA device.
        max_seconds: a contender whose timed calls so far add up to more than this is not
            called again (it keeps at least one timing); keeps very slow contenders affordable.

    Returns:
        name → list of wall-clock seconds, one per timed call.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[_Key, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if max_seconds is not None and sum(times[name]) > max_seconds:
                continue
            synchronize(device)
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - t0)
    return times


def median_ms(times: Sequence[float]) -> float:
    """Median of a list of seconds, in milliseconds (NaN for an empty list)."""
    return float(np.median(times) * 1e3) if len(times) else float("nan")


def circular_same_conv(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Depthwise circular convolution, "same" output, centred (C, 1, kh, kw) kernels.

    The kernel origin is its centre pixel (kh//2, kw//2), as for NIFF's spatial kernels; with a
    kernel as large as the map this is the spatial equivalent of a depthwise NIFF layer.
    """
    kh, kw = kernel.shape[-2:]
    flipped = torch.flip(kernel, (-2, -1))  # conv2d correlates; convolution = flipped kernel
    cy, cx = kh - 1 - kh // 2, kw - 1 - kw // 2  # where the origin lands after the flip
    xp = F.pad(x, (cx, kw - 1 - cx, cy, kh - 1 - cy), mode="circular")
    return F.conv2d(xp, flipped, groups=x.shape[1])


# --------------------------------------------------------------------------- table
CONTENDERS = ("niff", "spatial", "conv3x3")


def cost_table(
    sizes: Sequence[int] = (7, 14, 28, 56, 112),
    channels: int = 64,
    batch: int = 1,
    measure: bool = True,
    repeats: int = 5,
    mlp: MLPSpec = "big",
    device: str | torch.device = "cpu",
    max_seconds: float | None = 2.0,
) -> pd.DataFrame:
    """FLOPs (and measured forward times) of NIFF vs spatial depthwise convolutions per map size.

    Args:
        sizes: square feature-map sizes.
        channels: channels filtered (one filter each).
        batch: images per call.
        measure: also time the forward passes; ``False`` fills the ``*_ms`` columns with NaN
            and returns at once.
        repeats: timed rounds; every round calls every contender at every size once, so a
            change of the machine's load slows all of them alike.
        mlp: MLP preset of the NIFF layer (for ``mlp_flops`` and the timed layer).
        device: where the timed layers run.
        max_seconds: time budget per contender and size; slow contenders get fewer calls.

    Returns:
        One row per size: ``size``, ``batch``, ``niff_flops`` (rfft2 + product + irfft2),
        ``mlp_flops`` (both MLPs, once per call whatever the batch), ``niff_train_flops``
        (niff + mlp: a training step evaluates the MLPs every step, where eval mode caches the
        filters), ``spatial_flops`` (feature-map-sized kernel), ``conv3x3_flops``,
        ``flop_ratio`` (spatial / niff); ``niff_ms``, ``spatial_ms``, ``conv3x3_ms`` (median
        forward time under ``torch.no_grad``; NIFF in eval mode, so the time covers what
        ``niff_flops`` counts) with their quartiles ``*_ms_q25``, ``*_ms_q75`` and the number
        of timed calls ``*_calls``; ``threads`` (torch intra-op threads) and ``load_1min``
        (the machine's 1-minute load average before timing; NaN where unknown or not timed).
    """
    if channels < 1 or batch < 1:
        raise ValueError("channels and batch must be positive")
    scale = float(batch * channels)
    rows = []
    for s in sizes:
        s = int(s)
        row = dict(
            size=s,
            batch=batch,
            niff_flops=scale * niff_flops(s),
            mlp_flops=mlp_flops(s, channels, mlp),
            spatial_flops=scale * spatial_flops(s),
            conv3x3_flops=scale * spatial_flops(s, 3),
        )
        row["niff_train_flops"] = row["niff_flops"] + row["mlp_flops"]
        row["flop_ratio"] = row["spatial_flops"] / row["niff_flops"]
        for name in CONTENDERS:
            row.update(
                {
                    f"{name}_ms": float("nan"),
                    f"{name}_ms_q25": float("nan"),
                    f"{name}_ms_q75": float("nan"),
                    f"{name}_calls": 0,
                }
            )
        rows.append(row)
    table = pd.DataFrame(rows)
    table["threads"] = torch.get_num_threads()
    table["load_1min"] = _load_average() if measure else float("nan")  # describes the timing only
    if measure and len(table):
        times = _measure(table["size"].tolist(), channels, batch, repeats, mlp, device, max_seconds)
        for (name, s), t in times.items():
            i = table.index[table["size"] == s]
            q25, q75 = (np.percentile(t, [25, 75]) * 1e3) if len(t) else (float("nan"),) * 2
            table.loc[i, [f"{name}_ms", f"{name}_ms_q25", f"{name}_ms_q75", f"{name}_calls"]] = (
                median_ms(t),
                q25,
                q75,
                len(t),
            )
    return table


def _load_average() -> float:
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):  # not every platform has it
        return float("nan")


def _measure(
    sizes: Sequence[int], channels: int, batch: int, repeats: int, mlp: MLPSpec, device, max_seconds: float | None
) -> dict[tuple[str, int], list[float]]:
    """Seconds per call of every contender at every size, all interleaved round-robin."""
    gen = torch.Generator().manual_seed(0)
    fns: dict[tuple[str, int], Callable[..., object]] = {}  # zero-argument: defaults bind the tensors
    for s in sizes:
        x = torch.randn(batch, channels, s, s, generator=gen).to(device)
        layer = DepthwiseNIFF(channels, mlp=mlp).to(device).eval()
        k_full = torch.randn(channels, 1, s, s, generator=gen).to(device)
        k3 = torch.randn(channels, 1, 3, 3, generator=gen).to(device)
        # Default arguments bind this size's tensors to its closures.
        fns[("niff", s)] = lambda layer=layer, x=x: layer(x)
        fns[("spatial", s)] = lambda x=x, k=k_full: circular_same_conv(x, k)
        fns[("conv3x3", s)] = lambda x=x, k=k3: F.conv2d(x, k, padding=1, groups=channels)
    with torch.no_grad():
        return time_interleaved(fns, repeats=repeats, warmup=1, device=device, max_seconds=max_seconds)
