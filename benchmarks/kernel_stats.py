"""Benchmark 5: what recording kernel statistics costs a training run.

For ``resnet18_niff`` and the ``resnet18`` baseline (CIFAR stem, 1 input channel, 10 classes,
the Fashion-MNIST setting), times one training step at batch 128 and one record of
:func:`~niff_analysis.analysis.stats.kernel_stats` (``extract_kernels`` → mass ratios,
effective sizes, Gaussian fits; what the trainer does after every epoch), round-robin in one
run, and reports the record's cost as a share of a Fashion-MNIST epoch (468 steps).
Target: under 2 % of an epoch on CPU.
"""

from __future__ import annotations

import pandas as pd
import torch
from torch import nn

from niff_analysis.analysis import extract_kernels, kernel_stats
from niff_analysis.analysis.cost import median_ms, time_interleaved
from niff_analysis.models import create_model

from . import show, verdict

STEPS_PER_EPOCH = 60_000 // 128


def run(quick: bool = False, device: torch.device = torch.device("cpu")) -> pd.DataFrame:
    batch = 16 if quick else 128
    repeats = 1 if quick else 3
    torch.manual_seed(0)
    rows = []
    for name in ("resnet18_niff", "resnet18"):
        model = create_model(name, num_classes=10, in_chans=1, stem="cifar").to(device).train()
        x = torch.randn(batch, 1, 32, 32, device=device)
        y = torch.randint(0, 10, (batch,), device=device)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)

        # Both closures run within this iteration only (timed here, record() once more below).
        def step():
            opt.zero_grad(set_to_none=True)  # noqa: B023
            loss_fn(model(x), y).backward()  # noqa: B023
            opt.step()  # noqa: B023

        def record():
            return kernel_stats(extract_kernels(model), device=device)  # noqa: B023

        t = time_interleaved({"step": step, "stats": record}, repeats=repeats, warmup=1, device=device)
        step_ms, stats_ms = median_ms(t["step"]), median_ms(t["stats"])
        epoch_ms = step_ms * STEPS_PER_EPOCH * (128 / batch)
        share = stats_ms / epoch_ms
        rows.append(
            dict(
                model=name,
                kernels=int(record().query("stat == 'n_kernels'")["value"].sum()),
                step_ms=step_ms,
                stats_ms=stats_ms,
                epoch_s_est=epoch_ms / 1e3,
                stats_share_of_epoch=share,
                target="< 0.02",
                verdict=verdict(share, 0.02),
            )
        )
    df = pd.DataFrame(rows)
    show(
        f"Kernel statistics per record vs one Fashion-MNIST epoch ({STEPS_PER_EPOCH} steps at batch 128"
        + (f", estimated from batch {batch}" if batch != 128 else "")
        + ")",
        df,
    )
    return df
