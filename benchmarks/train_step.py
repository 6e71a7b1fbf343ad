"""Benchmark 2: one whole training step, ``resnet18_niff`` against the ``resnet18`` baseline.

CIFAR stem, 10 classes, batch 128 at 32×32 (``--quick``: batch 16), SGD with momentum,
cross-entropy; forward, backward and optimizer step are timed together, the two models
round-robin. Target: NIFF step ≤ 0.75× the baseline's on CPU (≤ 1.3× on a GPU).

A ``torch.profiler`` pass over one step of each model then says where the time goes, by
operator category (FFT, convolution, MLP matmuls, normalisation, elementwise, ...).
"""

from __future__ import annotations

import pandas as pd
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from niff_analysis.analysis.cost import median_ms, time_interleaved
from niff_analysis.models import create_model

from . import show, verdict

# Operator name fragments → category, first match wins.
CATEGORIES = (
    ("fft", ("fft",)),
    ("conv", ("conv", "mkldnn")),
    ("matmul (MLP, fc)", ("addmm", "aten::mm", "aten::bmm", "matmul", "linear")),
    ("batch norm", ("batch_norm",)),
    ("activation", ("relu", "silu", "threshold")),
    (
        "copy / layout",
        ("copy_", "clone", "contiguous", "cat", "roll", "flip", "index", "scatter", "fill_", "zero_", "empty"),
    ),
    ("elementwise / reduce", ("mul", "add", "sum", "div", "sub", "complex", "real", "conj")),
    ("optimizer", ("_foreach", "sgd")),
)


def _step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    return step


def categorise(prof, device_time: bool = False) -> pd.Series:
    """Self time (ms) per operator category of a finished profiler run: CPU time, or the
    accelerator's kernel time with ``device_time`` (on CUDA the CPU side only launches)."""
    totals: dict[str, float] = {}
    for evt in prof.key_averages():
        name = evt.key.lower()
        if not name.startswith("aten::") and "optimizer" not in name:
            continue  # autograd wrappers etc.: their self time is bookkeeping
        cat = next((c for c, keys in CATEGORIES if any(k in name for k in keys)), "other")
        us = getattr(evt, "self_device_time_total", 0.0) if device_time else evt.self_cpu_time_total
        totals[cat] = totals.get(cat, 0.0) + us / 1e3
    return pd.Series(totals).sort_values(ascending=False)


def profile_step(step, device: torch.device) -> tuple[pd.Series, str]:
    """Profile one step: (ms per category, top-operator table)."""
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        step()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=40)
    return categorise(prof, device_time=device.type == "cuda"), table


def run(
    quick: bool = False,
    device: torch.device = torch.device("cpu"),
    repeats: int | None = None,
    batch: int | None = None,
    profile_steps: bool = True,
) -> pd.DataFrame:
    """Time a training step of both models; print ratio, verdict and the profile breakdown."""
    batch = batch or (16 if quick else 128)
    repeats = repeats or (2 if quick else 3)
    torch.manual_seed(0)
    models = {
        name: create_model(name, num_classes=10, in_chans=3, stem="cifar").to(device).train()
        for name in ("resnet18", "resnet18_niff")
    }
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    steps = {name: _step_fn(m, x, y) for name, m in models.items()}
    times = time_interleaved(steps, repeats=repeats, warmup=1, device=device)
    ms = {name: median_ms(t) for name, t in times.items()}
    ratio = ms["resnet18_niff"] / ms["resnet18"]
    target = 1.3 if device.type == "cuda" else 0.75
    frame = pd.DataFrame(
        [
            dict(
                device=str(device),
                batch=batch,
                resnet18_ms=ms["resnet18"],
                resnet18_niff_ms=ms["resnet18_niff"],
                niff_over_baseline=ratio,
                target=target,
                verdict=verdict(ratio, target),
            )
        ]
    )
    show("train_step: resnet18_niff vs resnet18, CIFAR stem, 32x32, one SGD step", frame)
    if profile_steps:
        cats = {}
        for name, step in steps.items():
            cats[name], table = profile_step(step, device)
            print(f"\n-- profile of one {name} step (top operators by self CPU time)\n{table}")
        breakdown = pd.DataFrame(cats).fillna(0.0)
        breakdown["niff_minus_baseline"] = breakdown["resnet18_niff"] - breakdown["resnet18"]
        show(
            f"train_step: self {'CUDA' if device.type == 'cuda' else 'CPU'} ms per operator "
            "category (one profiled step)",
            breakdown.reset_index(names="category"),
            "{:.1f}",
        )
    return frame
