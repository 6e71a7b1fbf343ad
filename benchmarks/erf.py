"""Benchmark 7: effective receptive fields of the bundled checkpoints from 50 test images.

Times :func:`~niff_analysis.analysis.effective_receptive_fields` (one forward and one backward
per stage over the batch) on the bundled NIFF and baseline checkpoints, round-robin.
Target: under a minute each on 2 CPU cores.
"""

from __future__ import annotations

import pandas as pd
import torch

from niff_analysis.analysis import effective_receptive_fields
from niff_analysis.analysis.cost import median_ms, time_interleaved
from niff_analysis.checkpoint import BUNDLED_DIR, load_checkpoint
from niff_analysis.data import dataset_images

from . import show, verdict


def run(quick: bool = False, device: torch.device = torch.device("cpu")) -> pd.DataFrame:
    n = 8 if quick else 50
    images = dataset_images("fashion-mnist", n)
    models = {
        name: load_checkpoint(BUNDLED_DIR / name, device=str(device))
        for name in ("resnet18_niff_fmnist", "resnet18_fmnist")
    }
    times = time_interleaved(
        {k: (lambda m=m: effective_receptive_fields(m, images)) for k, m in models.items()},
        repeats=1 if quick else 3,
        warmup=1,
        device=device,
    )
    rows = [
        dict(
            checkpoint=k,
            images=n,
            median_s=median_ms(v) / 1e3,
            target="< 60 s",
            verdict=verdict(median_ms(v) / 1e3, 60.0),
        )
        for k, v in times.items()
    ]
    df = pd.DataFrame(rows)
    show(f"Effective receptive fields, {n} Fashion-MNIST test images, 4 stages", df)
    return df
