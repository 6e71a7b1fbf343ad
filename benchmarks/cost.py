"""Benchmark 4: cost curves (the paper's Fig. 8 and its runtime tables).

FLOPs from the documented formulas in :mod:`niff_analysis.analysis.cost` and measured forward
times (``torch.no_grad``, median of interleaved calls) of a depthwise NIFF layer (eval mode,
filters cached), a depthwise conv with a feature-map-sized kernel (circular padding) and a 3×3
depthwise conv, at feature-map sizes 7…112, 64 channels. ``--quick`` measures up to 56 only.
"""

from __future__ import annotations

import pandas as pd
import torch

from niff_analysis.analysis.cost import cost_table

from . import show

SIZES = (7, 14, 28, 56, 112)


def run(
    quick: bool = False, device: torch.device = torch.device("cpu"), batch: int = 8, channels: int = 64
) -> pd.DataFrame:
    """The cost table with time ratios added."""
    sizes = SIZES[:-1] if quick else SIZES
    frame = cost_table(
        sizes,
        channels=channels,
        batch=batch,
        measure=True,
        repeats=3 if quick else 5,
        device=device,
        max_seconds=1.0 if quick else 5.0,
    )
    frame["spatial_over_niff_ms"] = frame.spatial_ms / frame.niff_ms
    frame["niff_over_conv3x3_ms"] = frame.niff_ms / frame.conv3x3_ms
    show(
        f"cost: depthwise, batch {batch}, {channels} channels, forward on {device} (FLOPs per call; times in ms)", frame
    )
    return frame
